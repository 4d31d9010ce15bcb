"""Cached reference statistics in a real local store, with a small linear extractor in place of a network."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation.reference_stats import load_or_compute_reference
from pipeline.layout import reference_stats_key
from pipeline.storage.local import LocalStore

FINGERPRINT = "0123456789abcdef0123"


class LinearExtractor:
    """Features = flattened uint8 pixels times a fixed matrix; probabilities = softmax of the first 3 features."""

    feature_dim = 6

    def __init__(self, name: str = "linear", identity: str = "weights-1"):
        self.name = name
        self._identity = identity
        self._matrix = np.random.default_rng(0).normal(size=(16, self.feature_dim)).astype(np.float32)

    @property
    def identity(self) -> str:
        return self._identity

    def features(self, images: np.ndarray) -> np.ndarray:
        flat = images.reshape(len(images), -1).astype(np.float32) / 255.0
        return (flat @ self._matrix).astype(np.float64)

    def features_and_probabilities(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features = self.features(images)
        logits = features[:, :3]
        exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
        return features, exponentials / exponentials.sum(axis=1, keepdims=True)


class ImageSource:
    """Counts how often the real images are loaded."""

    def __init__(self, count: int):
        self.images = np.random.default_rng(1).integers(0, 256, size=(count, 4, 4, 1), dtype=np.uint8)
        self.calls = 0

    def __call__(self) -> np.ndarray:
        self.calls += 1
        return self.images


@pytest.fixture()
def store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def test_reference_statistics_match_numpy(store):
    extractor, source = LinearExtractor(), ImageSource(50)

    reference = load_or_compute_reference(store, FINGERPRINT, "test", 50, extractor, extractor, source)

    features = extractor.features(source.images)
    np.testing.assert_allclose(reference.mean, features.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(reference.covariance, np.cov(features, rowvar=False), rtol=1e-6)
    assert reference.reused is False


def test_reference_cache_reused_without_images(store):
    extractor, source = LinearExtractor(), ImageSource(50)
    first = load_or_compute_reference(store, FINGERPRINT, "test", 50, extractor, extractor, source)

    second = load_or_compute_reference(store, FINGERPRINT, "test", 50, extractor, extractor, source)

    assert source.calls == 1
    assert second.reused is True
    np.testing.assert_array_equal(second.features, first.features)
    np.testing.assert_array_equal(second.covariance, first.covariance)
    np.testing.assert_array_equal(second.probabilities, first.probabilities)


def test_reference_cache_key_names_split_extractor_count(store):
    extractor, source = LinearExtractor(), ImageSource(50)

    load_or_compute_reference(store, FINGERPRINT, "train", 50, extractor, extractor, source)

    assert store.exists(reference_stats_key(FINGERPRINT, "train", "linear", 50))


def test_reference_cache_misses_for_new_weights(store):
    source = ImageSource(50)
    load_or_compute_reference(store, FINGERPRINT, "test", 50, LinearExtractor(), LinearExtractor(), source)
    retrained = LinearExtractor(identity="weights-2")

    reference = load_or_compute_reference(store, FINGERPRINT, "test", 50, retrained, retrained, source)

    assert source.calls == 2
    assert reference.reused is False


def test_reference_uses_classifier_for_probabilities(store):
    source = ImageSource(30)
    extractor, classifier = LinearExtractor(name="other"), LinearExtractor(name="classifier", identity="c")

    reference = load_or_compute_reference(store, FINGERPRINT, "test", 30, extractor, classifier, source)

    np.testing.assert_allclose(reference.probabilities, classifier.features_and_probabilities(source.images)[1])
