"""Classifier score and class coverage of generated images: how many classes a generator covers.

Both read the class probabilities p(y|x) of the dataset's own classifier (see
`pipeline.evaluation.classifier`), so they expose mode collapse in the terms of the dataset's labels.

- Classifier score, the Inception Score formula of Salimans et al. 2016 ("Improved Techniques for
  Training GANs") with the dataset classifier in place of Inception:
  exp(mean_x KL(p(y|x) || p(y))), with p(y) the mean of p(y|x) over the set. It lies in [1, C]
  for C classes; higher means confident and varied predictions.
- Class histogram: the count of each predicted class argmax p(y|x) over the generated set.
- Coverage: the share of the C classes that are predicted for at least one generated image.
- KL(p_real || p_generated) between the predicted-class distributions of real and generated
  images, in nats. 0 means equal class frequencies. A class that real images have but generated
  images lack is counted with probability PROBABILITY_FLOOR, so the value stays finite but large.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import EvaluationError

PROBABILITY_FLOOR = 1e-6


@dataclass(frozen=True)
class ClassCoverageResult:
    """Classifier score and class coverage of one image set, compared with a real image set."""

    classifier_score: float
    histogram: list[int]
    coverage: float
    kl_to_real: float
    num_classes: int
    num_images: int


def class_coverage(probabilities: np.ndarray, real_probabilities: np.ndarray) -> ClassCoverageResult:
    """Compute the classifier score and coverage of (N, C) probabilities against (M, C) real ones."""
    probabilities = _as_probabilities(probabilities, "probabilities")
    real_probabilities = _as_probabilities(real_probabilities, "real_probabilities")
    num_classes = probabilities.shape[1]
    if real_probabilities.shape[1] != num_classes:
        raise EvaluationError(
            f"class counts differ ({num_classes} and {real_probabilities.shape[1]}): "
            "predict both sets with the same classifier"
        )

    histogram = class_histogram(probabilities)
    real_histogram = class_histogram(real_probabilities)
    return ClassCoverageResult(
        classifier_score=classifier_score(probabilities),
        histogram=histogram.tolist(),
        coverage=float(np.count_nonzero(histogram)) / num_classes,
        kl_to_real=kl_divergence(real_histogram / real_histogram.sum(), histogram / histogram.sum()),
        num_classes=num_classes,
        num_images=len(probabilities),
    )


def classifier_score(probabilities: np.ndarray) -> float:
    """Return exp(mean_x KL(p(y|x) || p(y))) for (N, C) probabilities; terms with p(y|x) = 0 add 0."""
    marginal = probabilities.mean(axis=0)
    safe = np.where(probabilities > 0, probabilities, 1.0)
    safe_marginal = np.where(marginal > 0, marginal, 1.0)
    per_image = np.sum(probabilities * (np.log(safe) - np.log(safe_marginal)[None, :]), axis=1)
    return float(np.exp(per_image.mean()))


def class_histogram(probabilities: np.ndarray) -> np.ndarray:
    """Return the count of each class among the argmax predictions, int64 (C,)."""
    return np.bincount(np.argmax(probabilities, axis=1), minlength=probabilities.shape[1]).astype(np.int64)


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Return KL(p || q) = Σ p log(p / max(q, PROBABILITY_FLOOR)) in nats; terms with p = 0 add 0."""
    p = np.asarray(p, dtype=np.float64)
    q = np.maximum(np.asarray(q, dtype=np.float64), PROBABILITY_FLOOR)
    present = p > 0
    return float(np.sum(p[present] * np.log(p[present] / q[present])))


def _as_probabilities(values: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 2:
        raise EvaluationError(f"{name} must have shape (N, C) with N >= 1 and C >= 2, got {array.shape}")
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise EvaluationError(f"{name} must be finite and non-negative: pass softmax outputs, not logits")
    return array
