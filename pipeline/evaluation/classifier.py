"""The feature extractor for FID and KID: a small CNN classifier trained on the real training split.

Inception-v3 features are the usual choice for FID, but this pipeline downloads no weights, and
an ImageNet network fits 28×28 grey images poorly. So each prepared dataset gets its own small
classifier, trained once and cached in the store under `evaluator_prefix(fingerprint)`. Every run
on that dataset is scored with the same cached classifier, so its FID and KID values are
comparable with each other, but not with values from Inception features or from other datasets.

Import this module lazily (inside step functions): it imports Keras and TensorFlow at the top.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from pipeline.errors import EvaluationError
from pipeline.layout import evaluator_prefix
from pipeline.storage.base import ArtifactStore, sha256_file

logger = logging.getLogger(__name__)

EXTRACTOR_NAME = "small-cnn-classifier-v1"
CLASSIFIER_FILE = "classifier.keras"
CLASSIFIER_INFO_FILE = "classifier.json"
FEATURE_LAYER = "features"
FEATURE_DIM = 128
TRAIN_BATCH_SIZE = 128
LEARNING_RATE = 2e-3


def build_classifier(height: int, width: int, channels: int, num_classes: int) -> keras.Model:
    """Build the classifier: images (B, H, W, C) float32 in [-1, 1] -> logits (B, num_classes).

    Two stride-2 convolutions (48 and 96 filters), then the Dense layer named FEATURE_LAYER with
    FEATURE_DIM units, then ReLU, dropout and the logits layer. The features are that Dense
    layer's output before the ReLU, so no feature is constantly zero and the covariance that FID
    estimates is not made singular by dead units.
    """
    images = keras.Input(shape=(height, width, channels), name="images")
    x = keras.layers.Conv2D(48, 3, strides=2, padding="same", activation="relu")(images)
    x = keras.layers.Conv2D(96, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Flatten()(x)
    features = keras.layers.Dense(FEATURE_DIM, name=FEATURE_LAYER)(x)
    x = keras.layers.ReLU()(features)
    x = keras.layers.Dropout(0.3)(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(images, logits, name="feature_classifier")


def load_or_train_classifier(
    store: ArtifactStore,
    fingerprint: str,
    directory: str | Path,
    manifest,
    epochs: int,
    seed: int,
) -> tuple[keras.Model, dict[str, Any]]:
    """Return the dataset's feature classifier and its info, training and caching it when absent.

    The cache is `classifier.keras` plus `classifier.json` (written last, with the model's sha256,
    test accuracy, epochs and feature dimension) under `evaluator_prefix(fingerprint)`. A cached
    classifier is reused even when `epochs` differs from the one it was trained with, so that all
    runs on one dataset keep the same extractor. `info["reused"]` is True when the cached classifier was loaded.
    `directory` and `manifest` are the local dataset from `pipeline.data.fetch.fetch_dataset`.
    """
    cached = _load_cached(store, fingerprint, epochs)
    if cached is not None:
        return cached

    model, info = train_classifier(directory, manifest, epochs, seed)
    info = _save_to_store(store, fingerprint, model, info)
    return model, {**info, "reused": False}


def train_classifier(directory: str | Path, manifest, epochs: int, seed: int) -> tuple[keras.Model, dict[str, Any]]:
    """Train a new classifier on the train split and measure its accuracy on the test split."""
    import tensorflow as tf

    from pipeline.data.reader import make_dataset, steps_per_epoch

    num_classes = len(manifest.label_names)
    if num_classes < 2:
        raise EvaluationError(
            f"dataset {manifest.fingerprint} has {num_classes} label names, but the feature classifier "
            "needs a labelled dataset with at least 2 classes"
        )
    num_train = manifest.split("train").num_records
    num_test = manifest.split("test").num_records
    train_steps = steps_per_epoch(manifest, "train", TRAIN_BATCH_SIZE, drop_remainder=False)
    test_steps = steps_per_epoch(manifest, "test", TRAIN_BATCH_SIZE, drop_remainder=False)

    # A known cardinality lets Keras end each pass without a "ran out of data" warning.
    train_dataset = make_dataset(
        directory, manifest, "train", batch_size=TRAIN_BATCH_SIZE,
        shuffle=True, seed=seed, drop_remainder=False, with_labels=True,
    ).apply(tf.data.experimental.assert_cardinality(train_steps))
    test_dataset = make_dataset(
        directory, manifest, "test", batch_size=TRAIN_BATCH_SIZE,
        shuffle=False, drop_remainder=False, with_labels=True,
    ).apply(tf.data.experimental.assert_cardinality(test_steps))

    keras.utils.set_random_seed(seed)
    model = build_classifier(manifest.height, manifest.width, manifest.channels, num_classes)
    test_accuracy, seconds = _fit(model, train_dataset, test_dataset, epochs, train_steps)

    info = {
        "extractor": EXTRACTOR_NAME,
        "fingerprint": manifest.fingerprint,
        "feature_layer": FEATURE_LAYER,
        "feature_dim": FEATURE_DIM,
        "epochs": epochs,
        "seed": seed,
        "num_train": num_train,
        "num_test": num_test,
        "test_accuracy": test_accuracy,
        "train_seconds": round(seconds, 2),
    }
    return model, info


def _fit(model: keras.Model, train_dataset, test_dataset, epochs: int, train_steps: int) -> tuple[float, float]:
    """Fit `model` on (images, labels) batches; return (test accuracy, training seconds).

    The learning rate follows a cosine decay from LEARNING_RATE to 0 over `epochs` * `train_steps` steps.
    """
    schedule = keras.optimizers.schedules.CosineDecay(LEARNING_RATE, decay_steps=epochs * train_steps)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )

    logger.info("training feature classifier: %d epoch(s) of %d steps", epochs, train_steps)
    start = time.perf_counter()
    model.fit(train_dataset, epochs=epochs, shuffle=False, verbose=0)
    seconds = time.perf_counter() - start

    _, test_accuracy = model.evaluate(test_dataset, verbose=0)
    logger.info(
        "feature classifier trained in %.1f s (%.1f steps/s, batch %d), test accuracy %.4f",
        seconds, epochs * train_steps / max(seconds, 1e-9), TRAIN_BATCH_SIZE, test_accuracy,
    )
    return float(test_accuracy), seconds


def feature_extractor(model: keras.Model) -> keras.Model:
    """Return a model that shares `model`'s weights and outputs its FEATURE_LAYER activations."""
    return keras.Model(model.inputs, model.get_layer(FEATURE_LAYER).output, name="feature_extractor")


def extract_features(model: keras.Model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Return the FEATURE_LAYER activations (N, FEATURE_DIM) float64 of images (N, H, W, C) in [-1, 1]."""
    images = np.asarray(images, dtype=np.float32)
    expected_shape = tuple(model.input_shape[1:])
    if images.ndim != 4 or images.shape[1:] != expected_shape:
        raise EvaluationError(
            f"images of shape {images.shape} do not fit the feature classifier, which expects "
            f"(N, {', '.join(str(size) for size in expected_shape)})"
        )

    start = time.perf_counter()
    features = feature_extractor(model).predict(images, batch_size=batch_size, verbose=0)
    seconds = time.perf_counter() - start
    logger.info(
        "extracted features of %d images in %.1f s (%.0f images/s)",
        len(images), seconds, len(images) / max(seconds, 1e-9),
    )
    return np.asarray(features, dtype=np.float64)


def _load_cached(store: ArtifactStore, fingerprint: str, epochs: int) -> tuple[keras.Model, dict[str, Any]] | None:
    """Return the cached classifier and info, or None when the cache is absent or inconsistent."""
    prefix = evaluator_prefix(fingerprint)
    if not store.exists(prefix + CLASSIFIER_INFO_FILE) or not store.exists(prefix + CLASSIFIER_FILE):
        return None

    info = store.get_json(prefix + CLASSIFIER_INFO_FILE)
    with tempfile.TemporaryDirectory(prefix="classifier-") as temporary:
        path = store.get_file(prefix + CLASSIFIER_FILE, Path(temporary) / CLASSIFIER_FILE)
        if sha256_file(path) != info.get("sha256"):
            logger.warning(
                "cached classifier %s does not match the sha256 in %s, so a new one is trained",
                store.location(prefix + CLASSIFIER_FILE), CLASSIFIER_INFO_FILE,
            )
            return None
        model = keras.models.load_model(path, compile=False)

    if info.get("epochs") != epochs:
        logger.warning(
            "reusing the cached classifier trained for %s epochs although %d were requested, so that "
            "FID stays comparable across runs; delete %s to train a new one",
            info.get("epochs"), epochs, store.location(prefix),
        )
    logger.info(
        "reusing cached feature classifier for dataset %s (test accuracy %.4f)",
        fingerprint, info["test_accuracy"],
    )
    return model, {**info, "reused": True}


def _save_to_store(store: ArtifactStore, fingerprint: str, model: keras.Model, info: dict[str, Any]) -> dict[str, Any]:
    """Upload the model, then its info with the model's sha256; the info file marks a complete cache."""
    prefix = evaluator_prefix(fingerprint)
    with tempfile.TemporaryDirectory(prefix="classifier-") as temporary:
        path = Path(temporary) / CLASSIFIER_FILE
        model.save(path)
        info = {**info, "sha256": sha256_file(path)}
        store.put_file(prefix + CLASSIFIER_FILE, path)

    store.put_json(prefix + CLASSIFIER_INFO_FILE, info)
    logger.info("cached feature classifier at %s", store.location(prefix + CLASSIFIER_FILE))
    return info
