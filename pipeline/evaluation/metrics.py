"""The registry of evaluation metrics: each compares one image set with the real reference set.

Every metric is a function (reference, features, probabilities, settings) -> dict of plain JSON
values that includes the sample counts it was computed from. `compute_metrics` runs all of them,
for the generated images and, as a noise floor, for a second, disjoint set of real images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from pipeline.evaluation.class_coverage import class_coverage, class_histogram
from pipeline.evaluation.fid import fid_from_statistics
from pipeline.evaluation.kid import kernel_inception_distance
from pipeline.evaluation.precision_recall import precision_recall
from pipeline.evaluation.reference_stats import ReferenceSet


@dataclass(frozen=True)
class MetricSettings:
    kid_subset_size: int
    kid_subsets: int
    precision_recall_k: int
    seed: int


def _fid(reference: ReferenceSet, features: np.ndarray, probabilities: np.ndarray, settings: MetricSettings) -> dict[str, Any]:
    result = fid_from_statistics(reference.mean, reference.covariance, reference.count, features)
    return {"value": result.value, "feature_dim": result.feature_dim, "num_real": result.num_real, "num_generated": result.num_generated}


def _kid(reference: ReferenceSet, features: np.ndarray, probabilities: np.ndarray, settings: MetricSettings) -> dict[str, Any]:
    result = kernel_inception_distance(
        reference.features, features, settings.kid_subset_size, settings.kid_subsets, settings.seed
    )
    return {
        "mean": result.mean,
        "std": result.std,
        "subset_size": result.subset_size,
        "num_subsets": result.num_subsets,
        "num_real": reference.count,
        "num_generated": len(features),
    }


def _precision_recall(
    reference: ReferenceSet, features: np.ndarray, probabilities: np.ndarray, settings: MetricSettings
) -> dict[str, Any]:
    result = precision_recall(reference.features, features, settings.precision_recall_k)
    return {
        "precision": result.precision,
        "recall": result.recall,
        "k": result.k,
        "num_real": result.num_real,
        "num_generated": result.num_generated,
    }


def _class_coverage(
    reference: ReferenceSet, features: np.ndarray, probabilities: np.ndarray, settings: MetricSettings
) -> dict[str, Any]:
    result = class_coverage(probabilities, reference.probabilities)
    return {
        "classifier_score": result.classifier_score,
        "coverage": result.coverage,
        "kl_to_real": result.kl_to_real,
        "histogram": result.histogram,
        "real_histogram": class_histogram(reference.probabilities).tolist(),
        "num_classes": result.num_classes,
        "num_real": reference.count,
        "num_generated": result.num_images,
    }


MetricFunction = Callable[[ReferenceSet, np.ndarray, np.ndarray, MetricSettings], dict[str, Any]]

METRICS: dict[str, MetricFunction] = {
    "fid": _fid,
    "kid": _kid,
    "precision_recall": _precision_recall,
    "class_coverage": _class_coverage,
}


def compute_metrics(
    reference: ReferenceSet, features: np.ndarray, probabilities: np.ndarray, settings: MetricSettings
) -> dict[str, dict[str, Any]]:
    """Run every metric of METRICS on (N, D) features and (N, classes) probabilities against `reference`."""
    return {name: metric(reference, features, probabilities, settings) for name, metric in METRICS.items()}
