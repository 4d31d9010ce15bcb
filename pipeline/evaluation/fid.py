"""Fréchet Inception Distance (FID) between two sets of feature vectors.

FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium") fits one Gaussian to each feature set and returns the Fréchet distance between them:

    FID = ||mu1 - mu2||² + Tr(S1 + S2 - 2 (S1 S2)^½)

Lower is better and 0 means the two Gaussians are equal. The estimate is biased upwards at small
sample counts, and the bias depends on N: compare FID values only at equal N and with the same
feature extractor.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from pipeline.errors import EvaluationError

logger = logging.getLogger(__name__)

SINGULAR_OFFSET = 1e-6
"""Added to the diagonal of both covariances when either one is singular."""


@dataclass(frozen=True)
class FidResult:
    """An FID value with the sample counts and feature dimension it was computed from."""

    value: float
    num_real: int
    num_generated: int
    feature_dim: int


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Compute the Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) in float64.

    Tr((S1 S2)^½) is computed without a general matrix square root. With the Cholesky factor
    S2 = L Lᵀ, the matrix Lᵀ S1 L is symmetric positive semi-definite and similar to S1 S2
    (S1 S2 = L⁻ᵀ (Lᵀ S1 L) Lᵀ), so Tr((S1 S2)^½) = Σ sqrt(eig(Lᵀ S1 L)), and one symmetric
    eigenvalue decomposition (numpy.linalg.eigvalsh) gives it. Eigenvalues below zero from
    round-off are clipped to 0. A covariance whose Cholesky factorisation fails is singular (not
    numerically positive definite): then SINGULAR_OFFSET is added to both diagonals. The result is
    clipped at 0, because round-off can make a distance between equal Gaussians come out as a tiny
    negative number.
    """
    mu1, sigma1 = _as_moments(mu1, sigma1, "first")
    mu2, sigma2 = _as_moments(mu2, sigma2, "second")
    if mu1.shape != mu2.shape:
        raise EvaluationError(
            f"feature dimensions differ ({mu1.shape[0]} and {mu2.shape[0]}): "
            "extract both feature sets with the same model"
        )

    factor2 = _cholesky_or_none(sigma2)
    if factor2 is None or _cholesky_or_none(sigma1) is None:
        logger.info("a covariance is singular, so %g is added to both diagonals", SINGULAR_OFFSET)
        sigma1 = sigma1 + SINGULAR_OFFSET * np.eye(mu1.shape[0])
        sigma2 = sigma2 + SINGULAR_OFFSET * np.eye(mu1.shape[0])
        factor2 = np.linalg.cholesky(sigma2)

    mean_term = float(np.sum((mu1 - mu2) ** 2))
    trace_sqrt = _trace_sqrt_product(sigma1, factor2)
    distance = mean_term + float(np.trace(sigma1)) + float(np.trace(sigma2)) - 2.0 * trace_sqrt
    return max(distance, 0.0)


def fid_from_features(real_features: np.ndarray, generated_features: np.ndarray) -> FidResult:
    """Compute FID between two (N, D) feature arrays. Each set needs at least 2 rows.

    Logs a warning when a sample count is at most the feature dimension D, because then the
    covariance is singular and the estimate is dominated by its small-N bias.
    """
    real = as_feature_matrix(real_features, "real_features")
    return fid_from_statistics(real.mean(axis=0), np.cov(real, rowvar=False), real.shape[0], generated_features)


def fid_from_statistics(
    real_mean: np.ndarray, real_covariance: np.ndarray, num_real: int, generated_features: np.ndarray
) -> FidResult:
    """Compute FID of (N, D) generated features against cached real statistics of `num_real` images.

    Warns like `fid_from_features` when either sample count is at most D.
    """
    generated = as_feature_matrix(generated_features, "generated_features")
    feature_dim = generated.shape[1]

    for name, count in (("real", num_real), ("generated", generated.shape[0])):
        if count <= feature_dim:
            logger.warning(
                "FID from %d %s samples of %d-dimensional features is strongly biased: "
                "use more than %d samples and compare FID only at equal sample counts",
                count, name, feature_dim, feature_dim,
            )

    value = frechet_distance(real_mean, real_covariance, generated.mean(axis=0), np.cov(generated, rowvar=False))
    return FidResult(value=value, num_real=num_real, num_generated=generated.shape[0], feature_dim=feature_dim)


def as_feature_matrix(features: np.ndarray, name: str) -> np.ndarray:
    """Return `features` as a finite float64 (N, D) array with N >= 2, or raise EvaluationError."""
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 2:
        raise EvaluationError(f"{name} must have shape (N, D) with N >= 2, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise EvaluationError(
            f"{name} contains NaN or infinite values: check the images fed to the feature extractor"
        )
    return array


def _as_moments(mu: np.ndarray, sigma: np.ndarray, label: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    dim = mu.shape[0]
    if mu.ndim != 1 or sigma.shape != (dim, dim):
        raise EvaluationError(
            f"{label} Gaussian: mean of shape {mu.shape} needs a ({dim}, {dim}) covariance, got {sigma.shape}"
        )
    return mu, sigma


def _cholesky_or_none(sigma: np.ndarray) -> np.ndarray | None:
    """Return the lower Cholesky factor of `sigma`, or None when `sigma` is not numerically positive definite."""
    try:
        return np.linalg.cholesky(sigma)
    except np.linalg.LinAlgError:
        return None


def _trace_sqrt_product(sigma1: np.ndarray, factor2: np.ndarray) -> float:
    """Return Tr((S1 S2)^½) = Σ sqrt(eig(Lᵀ S1 L)) for symmetric PSD S1 and S2 = L Lᵀ."""
    product = factor2.T @ sigma1 @ factor2
    product = (product + product.T) / 2.0
    product_eigenvalues = np.linalg.eigvalsh(product)
    return float(np.sum(np.sqrt(np.clip(product_eigenvalues, 0.0, None))))
