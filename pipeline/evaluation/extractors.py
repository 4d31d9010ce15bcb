"""The feature extractors by setting name: `classifier` (the dataset's own CNN) and `inception_v3`.

Every extractor takes uint8 images (N, H, W, C), so real and generated images reach it through
the same conversion, and returns float64 features (N, D). Its `identity` (a sha256 of its weights)
distinguishes cached reference features. Import this module lazily: it imports Keras.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

import keras
import numpy as np

from pipeline.errors import EvaluationError

logger = logging.getLogger(__name__)

EXTRACTOR_SETTINGS = ("classifier", "inception_v3")
BATCH_SIZE = 256


class FeatureExtractor(Protocol):
    name: str
    feature_dim: int
    info: dict[str, Any]

    @property
    def identity(self) -> str: ...

    def features(self, images: np.ndarray) -> np.ndarray: ...


class ClassifierExtractor:
    """Penultimate-layer features and class probabilities of the dataset's feature classifier."""

    def __init__(self, classifier: keras.Model, info: dict[str, Any]):
        from pipeline.evaluation.classifier import FEATURE_LAYER

        self.name = info["extractor"]
        self.info = info
        self.feature_dim = int(classifier.get_layer(FEATURE_LAYER).output.shape[-1])
        self.num_classes = int(classifier.output_shape[-1])
        self._model = keras.Model(
            classifier.inputs, [classifier.get_layer(FEATURE_LAYER).output, classifier.output], name="classifier_outputs"
        )
        self._input_shape = tuple(classifier.input_shape[1:])

    @property
    def identity(self) -> str:
        return str(self.info.get("sha256"))

    def features(self, images: np.ndarray) -> np.ndarray:
        """Return the FEATURE_LAYER activations (N, D) float64 of uint8 images (N, H, W, C)."""
        return self.features_and_probabilities(images)[0]

    def features_and_probabilities(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return features (N, D) and softmax class probabilities (N, classes), both float64, in one pass."""
        import tensorflow as tf

        from pipeline.data.pixels import to_model_range

        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != self._input_shape:
            raise EvaluationError(
                f"images of {images.dtype} {images.shape} do not fit the feature classifier, which expects "
                f"uint8 (N, {', '.join(str(size) for size in self._input_shape)})"
            )

        started = time.perf_counter()
        features, probabilities = [], []
        for start in range(0, len(images), BATCH_SIZE):
            batch_features, logits = self._model(to_model_range(images[start:start + BATCH_SIZE]), training=False)
            features.append(np.asarray(batch_features, dtype=np.float64))
            probabilities.append(np.asarray(tf.nn.softmax(tf.cast(logits, tf.float64)), dtype=np.float64))
        seconds = time.perf_counter() - started
        logger.info(
            "classifier features of %d images in %.1f s (%.0f images/s)",
            len(images), seconds, len(images) / max(seconds, 1e-9),
        )
        return np.concatenate(features), np.concatenate(probabilities)


def open_extractor(setting: str, classifier: ClassifierExtractor, inception_weights: str | None) -> FeatureExtractor:
    """Return the extractor named by the `extractor` setting; `classifier` is reused for "classifier"."""
    if setting == "classifier":
        return classifier
    if setting == "inception_v3":
        from pipeline.evaluation.inception import InceptionExtractor, resolve_weights

        return InceptionExtractor(resolve_weights(inception_weights))
    raise EvaluationError(f"unknown extractor {setting!r}: use one of {', '.join(EXTRACTOR_SETTINGS)}")
