"""Precision and recall of generated samples with k-nearest-neighbour manifolds.

Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for Assessing Generative Models":
each feature vector x of a set spans a ball whose radius is the distance from x to its k-th
nearest neighbour in the same set (itself excluded); the union of these balls estimates the
set's manifold.

    precision = share of generated features inside the real manifold      (fidelity)
    recall    = share of real features inside the generated manifold      (diversity)

Both lie in [0, 1] and higher is better. A generator that collapses onto a few modes keeps a high
precision but loses recall. Distances are Euclidean, computed in float64 in row blocks so that
memory stays at BLOCK_ROWS × N values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import EvaluationError
from pipeline.evaluation.fid import as_feature_matrix

DEFAULT_K = 3
BLOCK_ROWS = 1024


@dataclass(frozen=True)
class PrecisionRecallResult:
    """Precision and recall with the neighbourhood size and sample counts they come from."""

    precision: float
    recall: float
    k: int
    num_real: int
    num_generated: int


def precision_recall(real_features: np.ndarray, generated_features: np.ndarray, k: int = DEFAULT_K) -> PrecisionRecallResult:
    """Compute k-NN precision and recall of (N, D) generated features against (M, D) real features.

    Each set needs more than `k` rows, so that every point has a k-th neighbour other than itself.
    """
    real = as_feature_matrix(real_features, "real_features")
    generated = as_feature_matrix(generated_features, "generated_features")
    if real.shape[1] != generated.shape[1]:
        raise EvaluationError(
            f"feature dimensions differ ({real.shape[1]} and {generated.shape[1]}): "
            "extract both feature sets with the same model"
        )
    if k < 1 or min(len(real), len(generated)) <= k:
        raise EvaluationError(
            f"invalid precision/recall k {k}: it must be at least 1 and below both sample counts "
            f"(real {len(real)}, generated {len(generated)}); lower precision_recall_k or raise num_samples"
        )

    real_radii = knn_radii(real, k)
    generated_radii = knn_radii(generated, k)
    return PrecisionRecallResult(
        precision=_share_inside(generated, real, real_radii),
        recall=_share_inside(real, generated, generated_radii),
        k=k,
        num_real=len(real),
        num_generated=len(generated),
    )


def knn_radii(features: np.ndarray, k: int) -> np.ndarray:
    """Return the distance from each row to its k-th nearest other row, shape (N,)."""
    radii = np.empty(len(features), dtype=np.float64)
    for start in range(0, len(features), BLOCK_ROWS):
        distances = pairwise_distances(features[start:start + BLOCK_ROWS], features)
        # Position 0 of each sorted row is the point itself at distance 0, so the k-th neighbour is at k.
        radii[start:start + BLOCK_ROWS] = np.partition(distances, k, axis=1)[:, k]
    return radii


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return Euclidean distances (len(a), len(b)) from ||a||² + ||b||² - 2 a·b, clipped at 0."""
    squared = np.sum(a * a, axis=1)[:, None] + np.sum(b * b, axis=1)[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.clip(squared, 0.0, None))


def _share_inside(queries: np.ndarray, support: np.ndarray, radii: np.ndarray) -> float:
    """Return the share of `queries` within radii[j] of at least one support row j."""
    inside = 0
    for start in range(0, len(queries), BLOCK_ROWS):
        distances = pairwise_distances(queries[start:start + BLOCK_ROWS], support)
        inside += int(np.count_nonzero(np.any(distances <= radii[None, :], axis=1)))
    return inside / len(queries)
