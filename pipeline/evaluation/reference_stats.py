"""Real-image reference statistics, cached in the store so a nightly run embeds only generated images.

A reference is the features (N, D) of the first N real images of one split, their mean and
covariance (float64), and the feature classifier's class probabilities (N, classes). It is cached
per dataset fingerprint, split, extractor and sample count under
`reference_stats_key(...)`, together with the extractor's identity (a sha256 of its weights),
so a retrained classifier or other Inception weights make the cache miss instead of mixing features.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np

from pipeline.layout import reference_stats_key
from pipeline.storage.base import ArtifactStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReferenceSet:
    """Features and statistics of the first `count` real images of `split`."""

    split: str
    count: int
    features: np.ndarray
    mean: np.ndarray
    covariance: np.ndarray
    probabilities: np.ndarray
    reused: bool


def load_or_compute_reference(
    store: ArtifactStore,
    fingerprint: str,
    split: str,
    count: int,
    extractor,
    classifier,
    load_images: Callable[[], np.ndarray],
) -> ReferenceSet:
    """Return the cached reference, or compute it from `load_images()` (uint8 (count, H, W, C)) and cache it.

    `extractor` gives the features and `classifier` (a ClassifierExtractor) the class probabilities;
    both are the same object for the "classifier" setting.
    """
    key = reference_stats_key(fingerprint, split, extractor.name.replace("/", "-"), count)
    identity = extractor.identity + "/" + classifier.identity
    if store.exists(key):
        cached = _read(store, key, split, count, identity)
        if cached is not None:
            logger.info("reusing reference statistics %s (%d %s images)", store.location(key), count, split)
            return cached

    real_images = load_images()
    features, probabilities = classifier.features_and_probabilities(real_images)
    if extractor is not classifier:
        features = extractor.features(real_images)
    reference = from_features(split, features, probabilities)
    _write(store, key, reference, identity)
    logger.info("cached reference statistics of %d %s images at %s", count, split, store.location(key))
    return reference


def from_features(split: str, features: np.ndarray, probabilities: np.ndarray) -> ReferenceSet:
    """Build a reference from features (N, D) and class probabilities (N, classes)."""
    features = np.asarray(features, dtype=np.float64)
    return ReferenceSet(
        split=split,
        count=len(features),
        features=features,
        mean=features.mean(axis=0),
        covariance=np.cov(features, rowvar=False),
        probabilities=np.asarray(probabilities, dtype=np.float64),
        reused=False,
    )


def _write(store: ArtifactStore, key: str, reference: ReferenceSet, identity: str) -> None:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        # Extractors compute in float32, so storing features as float32 loses nothing.
        features=reference.features.astype(np.float32),
        mean=reference.mean,
        covariance=reference.covariance,
        probabilities=reference.probabilities,
        identity=np.array(identity),
    )
    store.put_bytes(key, buffer.getvalue())


def _read(store: ArtifactStore, key: str, split: str, count: int, identity: str) -> ReferenceSet | None:
    with np.load(io.BytesIO(store.get_bytes(key)), allow_pickle=False) as arrays:
        if str(arrays["identity"]) != identity or len(arrays["features"]) != count:
            logger.warning(
                "reference statistics %s come from another extractor or sample count, so they are computed again",
                store.location(key),
            )
            return None
        return ReferenceSet(
            split=split,
            count=count,
            features=arrays["features"].astype(np.float64),
            mean=arrays["mean"],
            covariance=arrays["covariance"],
            probabilities=arrays["probabilities"],
            reused=True,
        )
