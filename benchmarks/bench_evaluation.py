"""Measure FID and feature extraction speed of the evaluation stage on this machine.

1. FID from two sets of 10,000 × 2048 float64 features: this project's `frechet_distance`
   (symmetric eigendecompositions) against the general matrix square root path of pytorch-fid.
   That path takes scipy.linalg.sqrtm of S1 S2, adds a diagonal offset when the result is not
   finite, and keeps its real part. Both start from the same means and covariances, and the
   relative difference of the two values is printed.
2. Feature extraction images/s of the `classifier` extractor (28×28×1 input) and the
   `inception_v3` extractor (resized to 299×299×3). Both use randomly initialised weights, which
   cost the same time as trained ones, so no download is needed.

Usage: python benchmarks/bench_evaluation.py [--blas-threads N] [--inception-images N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blas-threads", type=int, default=None, help="OPENBLAS_NUM_THREADS for NumPy and SciPy")
    parser.add_argument("--num-features", type=int, default=10_000, help="feature vectors per set")
    parser.add_argument("--feature-dim", type=int, default=2048, help="feature dimension")
    parser.add_argument("--classifier-images", type=int, default=4096, help="images for the classifier speed test")
    parser.add_argument("--inception-images", type=int, default=64, help="images for the InceptionV3 speed test")
    args = parser.parse_args()
    if args.blas_threads is not None:
        # BLAS reads this when NumPy is first imported, so it is set before the imports below.
        os.environ["OPENBLAS_NUM_THREADS"] = str(args.blas_threads)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

    results = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default")},
        "fid": bench_fid(args.num_features, args.feature_dim),
        "extraction": bench_extraction(args.classifier_images, args.inception_images),
    }
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")


def bench_fid(count: int, dim: int) -> dict:
    import numpy as np

    from pipeline.evaluation.fid import frechet_distance

    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    real = rng.normal(size=(count, dim)) @ mixing
    generated = 0.1 + 1.2 * rng.normal(size=(count, dim)) @ mixing

    started = time.perf_counter()
    mu1, sigma1 = real.mean(axis=0), np.cov(real, rowvar=False)
    mu2, sigma2 = generated.mean(axis=0), np.cov(generated, rowvar=False)
    moments_seconds = time.perf_counter() - started

    started = time.perf_counter()
    ours = frechet_distance(mu1, sigma1, mu2, sigma2)
    ours_seconds = time.perf_counter() - started

    started = time.perf_counter()
    reference = sqrtm_frechet_distance(mu1, sigma1, mu2, sigma2)
    reference_seconds = time.perf_counter() - started

    return {
        "num_features": count,
        "feature_dim": dim,
        "moments_seconds": round(moments_seconds, 2),
        "eigh_seconds": round(ours_seconds, 2),
        "sqrtm_seconds": round(reference_seconds, 2),
        "speedup": round(reference_seconds / ours_seconds, 1),
        "fid_eigh": ours,
        "fid_sqrtm": reference,
        "relative_difference": abs(ours - reference) / abs(reference),
    }


def sqrtm_frechet_distance(mu1, sigma1, mu2, sigma2, offset: float = 1e-6) -> float:
    """FID through scipy.linalg.sqrtm of S1 S2, as pytorch-fid computes it."""
    import numpy as np
    import scipy.linalg

    covariance_mean, _ = scipy.linalg.sqrtm(sigma1.dot(sigma2), disp=False)
    if not np.isfinite(covariance_mean).all():
        shift = np.eye(sigma1.shape[0]) * offset
        covariance_mean = scipy.linalg.sqrtm((sigma1 + shift).dot(sigma2 + shift))
    covariance_mean = np.real(covariance_mean)
    difference = mu1 - mu2
    return float(difference.dot(difference) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covariance_mean))


def bench_extraction(classifier_images: int, inception_images: int) -> dict:
    import keras
    import numpy as np

    from pipeline.evaluation.classifier import build_classifier
    from pipeline.evaluation.extractors import ClassifierExtractor
    from pipeline.evaluation.inception import BATCH_SIZE, build_inception_model, preprocess

    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    classifier = ClassifierExtractor(build_classifier(28, 28, 1, 10), {"extractor": "classifier", "sha256": "random"})
    gray = rng.integers(0, 256, size=(classifier_images, 28, 28, 1), dtype=np.uint8)
    classifier.features(gray[:256])  # builds the graph, so the timed pass excludes tracing
    started = time.perf_counter()
    classifier.features(gray)
    classifier_seconds = time.perf_counter() - started

    inception = build_inception_model()
    images = gray[:inception_images]
    inception(preprocess(images[:BATCH_SIZE]), training=False)
    started = time.perf_counter()
    for start in range(0, len(images), BATCH_SIZE):
        inception(preprocess(images[start:start + BATCH_SIZE]), training=False)
    inception_seconds = time.perf_counter() - started

    return {
        "classifier": {"images": classifier_images, "seconds": round(classifier_seconds, 2),
                       "images_per_second": round(classifier_images / classifier_seconds, 1)},
        "inception_v3": {"images": inception_images, "batch_size": BATCH_SIZE, "seconds": round(inception_seconds, 2),
                         "images_per_second": round(inception_images / inception_seconds, 1)},
    }


if __name__ == "__main__":
    main()
