"""The memorisation check: the real training images nearest to a few generated samples.

A generator that copies its training set shows samples that look the same as their nearest real
neighbours. Distances are Euclidean in the extractor's feature space, where near means alike to
the extractor rather than alike pixel by pixel.
"""

from __future__ import annotations

import numpy as np

from pipeline.evaluation.precision_recall import pairwise_distances

NUM_SAMPLES = 8
NUM_NEIGHBOURS = 3


def nearest_real(
    generated_features: np.ndarray, real_features: np.ndarray, num_neighbours: int = NUM_NEIGHBOURS
) -> tuple[np.ndarray, np.ndarray]:
    """Return (indices, distances), each (N, num_neighbours), of the nearest real rows to each generated row."""
    distances = pairwise_distances(
        np.asarray(generated_features, dtype=np.float64), np.asarray(real_features, dtype=np.float64)
    )
    num_neighbours = min(num_neighbours, distances.shape[1])
    indices = np.argsort(distances, axis=1, kind="stable")[:, :num_neighbours]
    return indices, np.take_along_axis(distances, indices, axis=1)
