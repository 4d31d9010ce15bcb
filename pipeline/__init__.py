"""Retrain an image GAN: prepare data, train, evaluate, publish to an artifact store."""

__version__ = "0.1.0"
