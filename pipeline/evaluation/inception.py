"""The `inception_v3` feature extractor: Keras InceptionV3 pool features, 2048 values per image.

This is the network of published FID values: keras.applications.InceptionV3 with
include_top=False and pooling="avg" on 299×299 RGB input. Images of both sets go through the same
steps: uint8 (N, H, W, C) -> bilinear resize to 299×299 -> grayscale repeated to 3 channels ->
[-1, 1] through `to_model_range`, the scaling InceptionV3 expects.

NOTE: these are Keras's ImageNet weights, not the TF1 graph of the original FID code
(pt_inception-2015-12-05), so values are close to but not equal to published FID values.

Weights are looked up in this order: an explicit local file (setting `inception_weights`), the
Keras cache ($KERAS_HOME/models/ or ~/.keras/models/ under the name WEIGHTS_FILE), then a
download into that cache where a network exists. Import this module lazily: it imports Keras.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path

import keras
import numpy as np

from pipeline.errors import EvaluationError
from pipeline.storage.base import sha256_file

logger = logging.getLogger(__name__)

EXTRACTOR_NAME = "inception_v3"
INPUT_SIZE = 299
FEATURE_DIM = 2048
BATCH_SIZE = 32
WEIGHTS_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/" + WEIGHTS_FILE
# MD5 that keras.applications.InceptionV3 checks for this file (Keras 3.15).
WEIGHTS_MD5 = "bcbd6486424b2319ff4ef7d526e38f63"


class InceptionExtractor:
    """InceptionV3 pool features (N, 2048) float64 of uint8 images (N, H, W, C), C in 1 or 3."""

    name = EXTRACTOR_NAME
    feature_dim = FEATURE_DIM

    def __init__(self, weights_path: str | Path):
        self.weights_path = Path(weights_path)
        self.model = build_inception(self.weights_path)
        self.info = {
            "name": EXTRACTOR_NAME,
            "feature_dim": FEATURE_DIM,
            "input_size": INPUT_SIZE,
            "weights": str(self.weights_path),
            "sha256": sha256_file(self.weights_path),
        }

    @property
    def identity(self) -> str:
        """The weights' sha256: cached reference features are valid only for the same weights."""
        return self.info["sha256"]

    def features(self, images: np.ndarray) -> np.ndarray:
        """Return the pool features (N, 2048) float64 of uint8 images (N, H, W, C)."""
        images = _check_uint8_images(images)
        started = time.perf_counter()
        batches = [
            np.asarray(self.model(preprocess(images[start:start + BATCH_SIZE]), training=False), dtype=np.float64)
            for start in range(0, len(images), BATCH_SIZE)
        ]
        seconds = time.perf_counter() - started
        logger.info(
            "InceptionV3 features of %d images in %.1f s (%.1f images/s)",
            len(images), seconds, len(images) / max(seconds, 1e-9),
        )
        return np.concatenate(batches)


def preprocess(images: np.ndarray):
    """Map uint8 images (N, H, W, C) to float32 (N, 299, 299, 3) in [-1, 1]: resize, then repeat gray to RGB."""
    import tensorflow as tf

    from pipeline.data.pixels import to_model_range

    resized = tf.image.resize(tf.convert_to_tensor(images), (INPUT_SIZE, INPUT_SIZE), method="bilinear")
    if resized.shape[-1] == 1:
        resized = tf.repeat(resized, 3, axis=-1)
    return to_model_range(resized)


def build_inception_model() -> keras.Model:
    """Build InceptionV3 (include_top=False, pooling="avg", 299×299×3) with random weights."""
    return keras.applications.InceptionV3(
        include_top=False, weights=None, input_shape=(INPUT_SIZE, INPUT_SIZE, 3), pooling="avg"
    )


def build_inception(weights_path: str | Path) -> keras.Model:
    """Build InceptionV3 (include_top=False, pooling="avg", 299×299×3) and load `weights_path`."""
    model = build_inception_model()
    # Keras 3.15 only warns when a .weights.h5 file lacks some layers and leaves those layers
    # freshly initialised, so a warning about skipped layers is treated as a failed load.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(str(weights_path))
            problem = next((str(item.message) for item in caught if "Skipping" in str(item.message)), None)
        except (ValueError, OSError, KeyError) as error:
            problem = str(error)
    if problem is not None:
        raise EvaluationError(
            f"cannot load InceptionV3 weights from {weights_path}: {problem[:300]}. The file must hold the "
            f"weights of InceptionV3(include_top=False), such as Keras's {WEIGHTS_FILE}"
        )
    return model


def resolve_weights(explicit_path: str | None) -> Path:
    """Return the path of the InceptionV3 weights: the explicit file, the Keras cache, or a download.

    Raises EvaluationError, naming the places to put the file, when none of the three works.
    """
    if explicit_path:
        path = Path(explicit_path).expanduser()
        if not path.is_file():
            raise EvaluationError(
                f"InceptionV3 weights file {path} (setting inception_weights) not found: "
                f"copy {WEIGHTS_FILE} there, or unset inception_weights to use {keras_cache_path()}"
            )
        return path

    cached = keras_cache_path()
    if cached.is_file():
        return cached
    return _download(cached)


def keras_cache_path() -> Path:
    """Return where Keras caches the weights: $KERAS_HOME/models/WEIGHTS_FILE, else ~/.keras/models/WEIGHTS_FILE."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models" / WEIGHTS_FILE


def _download(cached: Path) -> Path:
    logger.info("InceptionV3 weights not found at %s, so they are downloaded from %s", cached, WEIGHTS_URL)
    try:
        path = keras.utils.get_file(
            WEIGHTS_FILE, WEIGHTS_URL, cache_dir=str(cached.parent.parent), cache_subdir="models", file_hash=WEIGHTS_MD5
        )
    except Exception as error:  # get_file wraps network failures in several exception types
        raise EvaluationError(
            f"InceptionV3 weights not found and the download failed ({error}). Without a network, copy "
            f"{WEIGHTS_FILE} (from {WEIGHTS_URL}) to {cached}, or set inception_weights to a local "
            "file with the weights of InceptionV3(include_top=False)"
        ) from error
    return Path(path)


def _check_uint8_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise EvaluationError(
            f"InceptionV3 takes uint8 images (N, H, W, 1 or 3), got {images.dtype} {images.shape}: "
            "convert model output with pipeline.data.pixels.to_uint8 first"
        )
    return images
