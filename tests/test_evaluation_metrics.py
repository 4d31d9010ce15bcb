"""FID, KID, precision/recall and class coverage against plain float64 NumPy/SciPy references on fixed random features."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance
import scipy.stats

from pipeline.errors import EvaluationError
from pipeline.evaluation import precision_recall as precision_recall_module
from pipeline.evaluation.class_coverage import class_coverage, classifier_score
from pipeline.evaluation.fid import fid_from_features, fid_from_statistics, frechet_distance
from pipeline.evaluation.kid import kernel_inception_distance, unbiased_mmd2
from pipeline.evaluation.precision_recall import precision_recall

RELATIVE_TOLERANCE = 1e-6


def _features(seed: int, count: int, dim: int, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dim, dim)) / math.sqrt(dim)
    return shift + scale * rng.normal(size=(count, dim)) @ mixing


def _reference_fid(real: np.ndarray, generated: np.ndarray) -> float:
    """FID through scipy's general matrix square root, the textbook way."""
    mu1, mu2 = real.mean(axis=0), generated.mean(axis=0)
    sigma1, sigma2 = np.cov(real, rowvar=False), np.cov(generated, rowvar=False)
    covariance_mean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2.0 * covariance_mean))


def _reference_kernel(x: np.ndarray, y: np.ndarray) -> float:
    return (sum(float(a) * float(b) for a, b in zip(x, y)) / len(x) + 1.0) ** 3


def _reference_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with the cubic polynomial kernel, one kernel value at a time."""
    size = len(x)
    within_x = within_y = across = 0.0
    for i in range(size):
        for j in range(size):
            across += _reference_kernel(x[i], y[j])
            if i != j:
                within_x += _reference_kernel(x[i], x[j])
                within_y += _reference_kernel(y[i], y[j])
    return within_x / (size * (size - 1)) + within_y / (size * (size - 1)) - 2.0 * across / (size * size)


def test_fid_matches_scipy_sqrtm_reference():
    real = _features(0, 300, 16)
    generated = _features(1, 250, 16, shift=0.3, scale=1.5)

    result = fid_from_features(real, generated)

    assert result.value == pytest.approx(_reference_fid(real, generated), rel=RELATIVE_TOLERANCE)


def test_fid_result_counts_samples():
    result = fid_from_features(_features(0, 300, 16), _features(1, 250, 16))

    assert (result.num_real, result.num_generated, result.feature_dim) == (300, 250, 16)


def test_fid_of_set_with_itself_is_zero():
    features = _features(2, 200, 32)

    assert fid_from_features(features, features).value == pytest.approx(0.0, abs=1e-6)


def test_fid_of_singular_set_with_itself_is_zero():
    features = _features(3, 10, 32)

    assert fid_from_features(features, features).value == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_diagonal_closed_form():
    rng = np.random.default_rng(4)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    variances1, variances2 = rng.uniform(0.1, 3.0, size=8), rng.uniform(0.1, 3.0, size=8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(variances1) - np.sqrt(variances2)) ** 2)

    distance = frechet_distance(mu1, np.diag(variances1), mu2, np.diag(variances2))

    assert distance == pytest.approx(expected, rel=RELATIVE_TOLERANCE)


def test_frechet_distance_matches_sqrtm():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    sigma1, sigma2 = a @ a.T + np.eye(6), b @ b.T + np.eye(6)
    expected = np.trace(sigma1 + sigma2 - 2.0 * scipy.linalg.sqrtm(sigma1 @ sigma2).real)

    distance = frechet_distance(np.zeros(6), sigma1, np.zeros(6), sigma2)

    assert distance == pytest.approx(expected, rel=RELATIVE_TOLERANCE)


def test_fid_small_sample_is_finite_and_non_negative():
    result = fid_from_features(_features(6, 8, 64), _features(7, 8, 64, shift=0.5))

    assert math.isfinite(result.value)
    assert result.value >= 0.0


def test_fid_small_sample_warns_about_bias(caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.evaluation.fid"):
        fid_from_features(_features(6, 8, 64), _features(7, 8, 64))

    assert "8 real samples of 64-dimensional features" in caplog.text


def test_fid_rejects_mismatched_feature_dims():
    with pytest.raises(EvaluationError, match="feature dimensions differ"):
        fid_from_features(_features(0, 20, 8), _features(1, 20, 9))


def test_fid_rejects_non_finite_features():
    generated = _features(1, 20, 8)
    generated[3, 2] = np.nan

    with pytest.raises(EvaluationError, match="NaN"):
        fid_from_features(_features(0, 20, 8), generated)


def test_fid_rejects_single_sample():
    with pytest.raises(EvaluationError, match="N >= 2"):
        fid_from_features(_features(0, 20, 8), _features(1, 1, 8))


def test_unbiased_mmd2_matches_loop_reference():
    x = _features(8, 24, 10)
    y = _features(9, 24, 10, shift=0.2)

    assert unbiased_mmd2(x, y) == pytest.approx(_reference_mmd2(x, y), rel=RELATIVE_TOLERANCE)


def test_kid_full_subset_matches_loop_reference():
    real = _features(10, 30, 12)
    generated = _features(11, 30, 12, shift=0.4)

    result = kernel_inception_distance(real, generated, subset_size=30, num_subsets=3, seed=0)

    assert result.mean == pytest.approx(_reference_mmd2(real, generated), rel=RELATIVE_TOLERANCE)


def test_kid_full_subset_has_zero_std():
    real = _features(10, 30, 12)
    generated = _features(11, 30, 12, shift=0.4)

    result = kernel_inception_distance(real, generated, subset_size=30, num_subsets=3, seed=0)

    assert result.std == pytest.approx(0.0, abs=1e-9)


def test_kid_random_subsets_match_loop_reference():
    real = _features(12, 40, 6)
    generated = _features(13, 50, 6, scale=1.3)
    rng = np.random.default_rng(7)
    estimates = []
    for _ in range(4):
        real_rows = rng.choice(40, 15, replace=False)
        generated_rows = rng.choice(50, 15, replace=False)
        estimates.append(_reference_mmd2(real[real_rows], generated[generated_rows]))

    result = kernel_inception_distance(real, generated, subset_size=15, num_subsets=4, seed=7)

    assert result.mean == pytest.approx(np.mean(estimates), rel=RELATIVE_TOLERANCE)
    assert result.std == pytest.approx(np.std(estimates), rel=RELATIVE_TOLERANCE)


def test_kid_same_distribution_near_zero():
    features = _features(14, 800, 8)
    real, generated = features[:400], features[400:]

    result = kernel_inception_distance(real, generated, subset_size=200, num_subsets=5, seed=0)

    assert abs(result.mean) < 0.1


def test_kid_shifted_distribution_is_larger():
    features = _features(14, 800, 8)
    real, generated = features[:400], features[400:]
    same = kernel_inception_distance(real, generated, subset_size=200, num_subsets=5, seed=0)
    shifted = kernel_inception_distance(real, generated + 1.0, subset_size=200, num_subsets=5, seed=0)

    assert shifted.mean > same.mean + 1.0


def test_kid_clamps_subset_size_with_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.evaluation.kid"):
        result = kernel_inception_distance(
            _features(0, 50, 4), _features(1, 30, 4), subset_size=100, num_subsets=2, seed=0
        )

    assert result.subset_size == 30
    assert "subset size 100 is larger than the sample count 30 (real 50, generated 30)" in caplog.text


def test_kid_rejects_subset_size_one():
    with pytest.raises(EvaluationError, match="subset_size 1"):
        kernel_inception_distance(_features(0, 20, 4), _features(1, 20, 4), subset_size=1, num_subsets=2, seed=0)


def test_fid_from_statistics_matches_fid_from_features():
    real = _features(20, 120, 8)
    generated = _features(21, 90, 8, shift=0.2)

    from_statistics = fid_from_statistics(real.mean(axis=0), np.cov(real, rowvar=False), 120, generated)

    assert from_statistics.value == pytest.approx(fid_from_features(real, generated).value, rel=RELATIVE_TOLERANCE)
    assert from_statistics.num_real == 120


def test_frechet_distance_commuting_gaussians_closed_form():
    # Covariances with the same eigenvectors commute, so (S1 S2)^½ = Q diag(√(a b)) Qᵀ and
    # FID = ||mu1 - mu2||² + Σ (√a - √b)².
    rng = np.random.default_rng(22)
    rotation, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    variances1, variances2 = rng.uniform(0.2, 4.0, size=12), rng.uniform(0.2, 4.0, size=12)
    sigma1 = rotation @ np.diag(variances1) @ rotation.T
    sigma2 = rotation @ np.diag(variances2) @ rotation.T
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(variances1) - np.sqrt(variances2)) ** 2)

    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=RELATIVE_TOLERANCE)


def test_fid_8_vs_8_of_2048_dims_is_finite():
    result = fid_from_features(_features(23, 8, 2048), _features(24, 8, 2048, shift=0.1))

    assert math.isfinite(result.value)
    assert result.value >= 0.0
    assert result.feature_dim == 2048


def test_fid_of_64_identical_generated_images_is_finite():
    real = _features(25, 200, 32)
    generated = np.repeat(_features(26, 1, 32), 64, axis=0)

    result = fid_from_features(real, generated)

    assert math.isfinite(result.value)
    assert result.value > 0.0
    assert result.num_generated == 64


def _reference_precision_recall(real: np.ndarray, generated: np.ndarray, k: int) -> tuple[float, float]:
    """k-NN precision and recall from scipy's cdist, one point at a time."""
    real_distances = scipy.spatial.distance.cdist(real, real)
    generated_distances = scipy.spatial.distance.cdist(generated, generated)
    real_radii = np.sort(real_distances, axis=1)[:, k]
    generated_radii = np.sort(generated_distances, axis=1)[:, k]
    across = scipy.spatial.distance.cdist(generated, real)
    precision = np.mean([any(across[i, j] <= real_radii[j] for j in range(len(real))) for i in range(len(generated))])
    recall = np.mean([any(across[i, j] <= generated_radii[i] for i in range(len(generated))) for j in range(len(real))])
    return float(precision), float(recall)


def test_precision_recall_matches_cdist_reference():
    real = _features(30, 150, 6)
    generated = _features(31, 120, 6, shift=0.8, scale=0.7)
    expected_precision, expected_recall = _reference_precision_recall(real, generated, k=3)

    result = precision_recall(real, generated, k=3)

    assert result.precision == pytest.approx(expected_precision, rel=RELATIVE_TOLERANCE)
    assert result.recall == pytest.approx(expected_recall, rel=RELATIVE_TOLERANCE)
    assert (result.k, result.num_real, result.num_generated) == (3, 150, 120)


def test_precision_recall_spans_row_blocks(monkeypatch):
    real = _features(32, 90, 5)
    generated = _features(33, 70, 5, shift=0.5)
    expected = precision_recall(real, generated, k=3)
    monkeypatch.setattr(precision_recall_module, "BLOCK_ROWS", 16)

    blocked = precision_recall(real, generated, k=3)

    assert (blocked.precision, blocked.recall) == (expected.precision, expected.recall)


def test_precision_recall_detects_mode_collapse():
    real = _features(34, 300, 4)
    collapsed = real[:5].repeat(60, axis=0) + 1e-3 * _features(35, 300, 4)

    result = precision_recall(real, collapsed, k=3)

    assert result.precision > 0.9
    assert result.recall < 0.2


def test_precision_recall_rejects_k_at_sample_count():
    with pytest.raises(EvaluationError, match="precision/recall k 3"):
        precision_recall(_features(0, 20, 4), _features(1, 3, 4), k=3)


def _softmax(logits: np.ndarray) -> np.ndarray:
    exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def test_classifier_score_matches_scipy_entropy_reference():
    probabilities = _softmax(np.random.default_rng(40).normal(scale=3.0, size=(200, 10)))
    marginal = probabilities.mean(axis=0)
    expected = math.exp(np.mean([scipy.stats.entropy(row, marginal) for row in probabilities]))

    assert classifier_score(probabilities) == pytest.approx(expected, rel=RELATIVE_TOLERANCE)


def test_class_coverage_matches_reference():
    rng = np.random.default_rng(41)
    real = _softmax(rng.normal(scale=3.0, size=(300, 10)))
    generated = _softmax(rng.normal(scale=3.0, size=(250, 10)))
    real_counts = np.bincount(real.argmax(axis=1), minlength=10)
    generated_counts = np.bincount(generated.argmax(axis=1), minlength=10)
    expected_kl = scipy.stats.entropy(real_counts / 300, generated_counts / 250)

    result = class_coverage(generated, real)

    assert result.histogram == generated_counts.tolist()
    assert result.coverage == pytest.approx(np.count_nonzero(generated_counts) / 10, rel=RELATIVE_TOLERANCE)
    assert result.kl_to_real == pytest.approx(expected_kl, rel=RELATIVE_TOLERANCE)


def test_class_coverage_exposes_collapse_to_two_classes():
    real = np.eye(10)[np.arange(500) % 10]
    collapsed = np.eye(10)[np.arange(500) % 2]

    result = class_coverage(collapsed, real)

    assert result.coverage == pytest.approx(0.2)
    assert result.classifier_score == pytest.approx(2.0, rel=RELATIVE_TOLERANCE)
    assert result.kl_to_real > 5.0


def test_class_coverage_rejects_logits():
    with pytest.raises(EvaluationError, match="softmax outputs"):
        class_coverage(np.array([[-1.0, 2.0]]), np.array([[0.5, 0.5]]))


def test_fid_singular_covariance_gets_offset(caplog):
    with caplog.at_level(logging.INFO, logger="pipeline.evaluation.fid"):
        fid_from_features(_features(3, 10, 32), _features(4, 200, 32))

    assert "1e-06 is added to both diagonals" in caplog.text


def test_fid_full_rank_covariance_gets_no_offset(caplog):
    with caplog.at_level(logging.INFO, logger="pipeline.evaluation.fid"):
        fid_from_features(_features(3, 200, 32), _features(4, 200, 32))

    assert "added to both diagonals" not in caplog.text
