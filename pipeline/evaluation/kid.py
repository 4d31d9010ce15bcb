"""Kernel Inception Distance (KID) between two sets of feature vectors.

KID (Bińkowski et al. 2018, "Demystifying MMD GANs") is the squared maximum mean discrepancy
(MMD²) between the two feature distributions under the cubic polynomial kernel

    k(x, y) = (xᵀy / d + 1)³,    d = feature dimension,

estimated without bias on random subsets and averaged over them. Unlike FID, its estimator is
unbiased, so values at different sample counts are comparable, but they still depend on the
feature extractor. Lower is better, and the estimate can be slightly negative when the two sets
come from the same distribution.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from pipeline.errors import EvaluationError
from pipeline.evaluation.fid import as_feature_matrix

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KidResult:
    """Mean and standard deviation of the MMD² estimates over `num_subsets` random subsets."""

    mean: float
    std: float
    subset_size: int
    num_subsets: int


def kernel_inception_distance(
    real_features: np.ndarray,
    generated_features: np.ndarray,
    subset_size: int,
    num_subsets: int,
    seed: int,
) -> KidResult:
    """Compute KID as the mean unbiased MMD² over `num_subsets` subsets of `subset_size` rows each.

    Subset i draws `subset_size` real rows and then `subset_size` generated rows, each without
    replacement, from `numpy.random.default_rng(seed)`. A `subset_size` above the smaller sample
    count is clamped to that count with a warning. `std` is the population standard deviation
    (ddof=0) of the subset estimates, so it is 0 for a single subset.
    """
    real = as_feature_matrix(real_features, "real_features")
    generated = as_feature_matrix(generated_features, "generated_features")
    if real.shape[1] != generated.shape[1]:
        raise EvaluationError(
            f"feature dimensions differ ({real.shape[1]} and {generated.shape[1]}): "
            "extract both feature sets with the same model"
        )
    if num_subsets < 1:
        raise EvaluationError(f"invalid KID num_subsets {num_subsets}: must be at least 1")
    subset_size = _clamp_subset_size(subset_size, real.shape[0], generated.shape[0])

    rng = np.random.default_rng(seed)
    estimates = np.empty(num_subsets, dtype=np.float64)
    for index in range(num_subsets):
        real_rows = rng.choice(real.shape[0], subset_size, replace=False)
        generated_rows = rng.choice(generated.shape[0], subset_size, replace=False)
        estimates[index] = unbiased_mmd2(real[real_rows], generated[generated_rows])

    return KidResult(
        mean=float(estimates.mean()),
        std=float(estimates.std()),
        subset_size=subset_size,
        num_subsets=num_subsets,
    )


def unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Compute the unbiased MMD² of two (m, d) arrays under k(x, y) = (xᵀy / d + 1)³.

    MMD²_u = Σ_{i≠j} k(x_i, x_j) / (m(m-1)) + Σ_{i≠j} k(y_i, y_j) / (m(m-1)) - 2 Σ_{i,j} k(x_i, y_j) / m²
    """
    size, dim = x.shape
    kernel_xx = (x @ x.T / dim + 1.0) ** 3
    kernel_yy = (y @ y.T / dim + 1.0) ** 3
    kernel_xy = (x @ y.T / dim + 1.0) ** 3

    within_x = (kernel_xx.sum() - np.trace(kernel_xx)) / (size * (size - 1))
    within_y = (kernel_yy.sum() - np.trace(kernel_yy)) / (size * (size - 1))
    across = kernel_xy.sum() / (size * size)
    return float(within_x + within_y - 2.0 * across)


def _clamp_subset_size(subset_size: int, num_real: int, num_generated: int) -> int:
    if subset_size < 2:
        raise EvaluationError(f"invalid KID subset_size {subset_size}: must be at least 2")

    available = min(num_real, num_generated)
    if subset_size > available:
        logger.warning(
            "KID subset size %d is larger than the sample count %d (real %d, generated %d), so %d is used",
            subset_size, available, num_real, num_generated, available,
        )
        return available
    return subset_size

