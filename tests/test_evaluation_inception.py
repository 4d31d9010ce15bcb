"""The inception_v3 extractor with a weights file made here (InceptionV3 with weights=None): no download."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import EvaluationError
from pipeline.evaluation import inception
from pipeline.evaluation.extractors import open_extractor


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """An InceptionV3 with random weights and the file its weights were saved to."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.InceptionV3(include_top=False, weights=None, input_shape=(299, 299, 3), pooling="avg")
    path = tmp_path_factory.mktemp("inception") / "inception_v3_notop.weights.h5"
    model.save_weights(path)
    return model, path


@pytest.fixture(scope="module")
def weights_path(original):
    return original[1]


@pytest.fixture(scope="module")
def extractor(weights_path):
    return open_extractor("inception_v3", classifier=None, inception_weights=str(weights_path))


def _gray_images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, 28, 28, 1), dtype=np.uint8)


def test_inception_features_are_2048_float64(extractor):
    features = extractor.features(_gray_images(3))

    assert features.shape == (3, 2048)
    assert features.dtype == np.float64
    assert np.all(np.isfinite(features))


def test_inception_gray_equals_repeated_rgb(extractor):
    gray = _gray_images(2, seed=1)

    from_gray = extractor.features(gray)
    from_rgb = extractor.features(np.repeat(gray, 3, axis=-1))

    np.testing.assert_allclose(from_gray, from_rgb, rtol=1e-5, atol=1e-6)


def test_inception_loads_the_given_weights(extractor, original):
    images = _gray_images(2, seed=2)

    expected = np.asarray(original[0](inception.preprocess(images), training=False), dtype=np.float64)

    np.testing.assert_allclose(extractor.features(images), expected, rtol=1e-5, atol=1e-6)


def test_inception_records_weights_sha256(extractor, weights_path):
    from pipeline.storage.base import sha256_file

    assert extractor.identity == sha256_file(weights_path)
    assert extractor.info["feature_dim"] == 2048


def test_preprocess_resizes_to_299_rgb_in_model_range():
    pixels = inception.preprocess(np.full((1, 28, 28, 1), 255, dtype=np.uint8))

    assert tuple(pixels.shape) == (1, 299, 299, 3)
    assert float(np.min(pixels)) == pytest.approx(1.0)


def test_inception_rejects_float_images(extractor):
    with pytest.raises(EvaluationError, match="uint8 images"):
        extractor.features(np.zeros((1, 28, 28, 1), dtype=np.float32))


def test_resolve_weights_missing_explicit_file(tmp_path):
    with pytest.raises(EvaluationError, match="not found: copy inception_v3_weights"):
        inception.resolve_weights(str(tmp_path / "missing.h5"))


def test_resolve_weights_uses_keras_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    cached = tmp_path / "models" / inception.WEIGHTS_FILE
    cached.parent.mkdir()
    cached.write_bytes(b"placeholder")

    assert inception.resolve_weights(None) == cached


def test_resolve_weights_offline_names_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    with pytest.raises(EvaluationError) as raised:
        inception.resolve_weights(None)

    assert str(tmp_path / "models" / inception.WEIGHTS_FILE) in str(raised.value)
    assert "inception_weights" in str(raised.value)


def test_inception_rejects_weights_of_another_model(tmp_path):
    import keras

    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    path = tmp_path / "other.weights.h5"
    other.save_weights(path)

    with pytest.raises(EvaluationError, match="cannot load InceptionV3 weights"):
        inception.build_inception(path)
