"""The evaluate step: FID and KID of a trained generator, written as report.json and report.html.

Both metrics compare features of the dataset's own classifier (see
`pipeline.evaluation.classifier`) for `eval.num_samples` generated images and for the first
min(num_samples, test records) real images of the test split. TensorFlow and Keras are imported
inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import io
import json
import logging
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np

import pipeline
from pipeline.config import PipelineConfig
from pipeline.errors import EvaluationError
from pipeline.layout import (
    FIXED_LATENTS_FILE,
    GENERATOR_FILE,
    METRICS_FILE,
    REPORT_HTML,
    REPORT_JSON,
    TRAIN_JSON,
    run_key,
    safe_run_id,
)
from pipeline.storage.base import ArtifactStore

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
REAL_SPLIT = "test"
BATCH_SIZE = 256
GRID_SIZE = 64
# Second entropy word of the seed of evaluation latents, so they differ from the fixed latents
# that the train step draws from the same seed.
_LATENT_STREAM = 1
# Fields of train.json that report.json repeats.
_TRAINING_FIELDS = ("steps", "epochs", "batch_size", "latent_dim", "d_loss", "g_loss", "images_per_second")


def evaluate_run(config: PipelineConfig, store: ArtifactStore, fingerprint: str, run_id: str) -> dict[str, Any]:
    """Compute FID and KID of the generator of `run_id` and write its report.json and report.html.

    Generates `config.eval.num_samples` images from latents seeded by `config.train.seed` and
    compares their classifier features with those of min(num_samples, test records) real test
    images. KID uses `config.eval.kid_subset_size` and `config.eval.kid_subsets`. report.html is
    written before report.json, so report.json marks a complete evaluation: when it exists, its
    metrics are returned without recomputing. Raises EvaluationError when training has not
    finished, the generator does not fit the dataset, or it produces non-finite images.

    Returns {"run_id", "fid", "kid_mean", "kid_std", "num_generated", "num_real",
    "classifier_test_accuracy", "report_key", "report_html_key"}.
    """
    run_id = safe_run_id(run_id)
    report_key = run_key(run_id, REPORT_JSON)
    if store.exists(report_key):
        return _existing_result(store, report_key, run_id, fingerprint)

    from pipeline.data.fetch import fetch_dataset
    from pipeline.evaluation.classifier import load_or_train_classifier

    started = time.monotonic()
    training = _training_summary(store, run_id, fingerprint)
    generator = _load_generator(store, run_id)
    directory, manifest = fetch_dataset(store, fingerprint, config.cache_dir)
    _check_generator_fits(generator, manifest, training, run_id)
    classifier, classifier_info = load_or_train_classifier(
        store, fingerprint, directory, manifest, config.eval.classifier_epochs, config.train.seed
    )

    real_features, generated_features = _extract_real_and_generated_features(
        config, run_id, generator, classifier, directory, manifest
    )
    metrics = _compute_metrics(config, real_features, generated_features)
    report = _build_report(config, run_id, fingerprint, metrics, manifest, classifier_info, training)
    _write_report(store, run_id, generator, report)

    logger.info(
        "run %s: evaluated in %.1f s, FID %.4f, KID %.6f ± %.6f, report %s",
        run_id, time.monotonic() - started, report["metrics"]["fid"]["value"],
        report["metrics"]["kid"]["mean"], report["metrics"]["kid"]["std"], store.location(run_key(run_id, REPORT_HTML)),
    )
    return summarize_report(report)


def summarize_report(report: dict[str, Any]) -> dict[str, Any]:
    """Return the small JSON result of the step (an Airflow XCom) from report.json content."""
    run_id = report["run_id"]
    return {
        "run_id": run_id,
        "fid": report["metrics"]["fid"]["value"],
        "kid_mean": report["metrics"]["kid"]["mean"],
        "kid_std": report["metrics"]["kid"]["std"],
        "num_generated": report["metrics"]["fid"]["num_generated"],
        "num_real": report["metrics"]["fid"]["num_real"],
        "classifier_test_accuracy": report["extractor"]["test_accuracy"],
        "report_key": run_key(run_id, REPORT_JSON),
        "report_html_key": run_key(run_id, REPORT_HTML),
    }


def _extract_real_and_generated_features(
    config: PipelineConfig, run_id: str, generator, classifier, directory, manifest
) -> tuple[np.ndarray, np.ndarray]:
    """Return the features of min(num_samples, test records) real images and of num_samples generated images."""
    from pipeline.evaluation.classifier import feature_extractor

    extractor = feature_extractor(classifier)
    num_available = manifest.split(REAL_SPLIT).num_records
    num_real = min(config.eval.num_samples, num_available)
    logger.info(
        "run %s: comparing %d generated images with %d of %d real %s images",
        run_id, config.eval.num_samples, num_real, num_available, REAL_SPLIT,
    )

    generated_features = _generated_features(generator, extractor, config.eval.num_samples, config.train.seed, run_id)
    real_features = _real_features(extractor, directory, manifest, num_real)
    return real_features, generated_features


def _compute_metrics(
    config: PipelineConfig, real_features: np.ndarray, generated_features: np.ndarray
) -> dict[str, Any]:
    """Return the "metrics" entry of report.json: FID and KID with their sample counts."""
    from pipeline.evaluation.fid import fid_from_features
    from pipeline.evaluation.kid import kernel_inception_distance

    fid = fid_from_features(real_features, generated_features)
    kid = kernel_inception_distance(
        real_features, generated_features, config.eval.kid_subset_size, config.eval.kid_subsets, config.train.seed
    )
    counts = {"num_real": fid.num_real, "num_generated": fid.num_generated}
    return {
        "fid": {"value": fid.value, "feature_dim": fid.feature_dim, **counts},
        "kid": {
            "mean": kid.mean,
            "std": kid.std,
            "subset_size": kid.subset_size,
            "num_subsets": kid.num_subsets,
            **counts,
        },
    }


def _build_report(
    config: PipelineConfig,
    run_id: str,
    fingerprint: str,
    metrics: dict[str, Any],
    manifest,
    classifier_info: dict[str, Any],
    training: dict[str, Any],
) -> dict[str, Any]:
    """Return the content of report.json."""
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "fingerprint": fingerprint,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code_version": pipeline.__version__,
        "metrics": metrics,
        "real": {
            "split": REAL_SPLIT,
            "num_real": metrics["fid"]["num_real"],
            "num_available": manifest.split(REAL_SPLIT).num_records,
        },
        "generation": {"num_generated": metrics["fid"]["num_generated"], "seed": config.train.seed},
        "extractor": _extractor_record(classifier_info),
        "final_losses": {name: training.get(name) for name in ("steps", "d_loss", "g_loss")},
        "training": {name: training[name] for name in _TRAINING_FIELDS if name in training},
    }


def _generated_features(generator, extractor, count: int, seed: int, run_id: str) -> np.ndarray:
    """Generate `count` images in batches and return their features (count, D) float64."""
    latent_dim = int(generator.input_shape[-1])
    rng = np.random.default_rng((seed, _LATENT_STREAM))
    started = time.monotonic()
    batches = []
    for start in range(0, count, BATCH_SIZE):
        latent = rng.standard_normal((min(BATCH_SIZE, count - start), latent_dim)).astype(np.float32)
        generated_images = generator(latent, training=False)
        if not np.all(np.isfinite(generated_images)):
            raise EvaluationError(
                f"the generator of run {run_id} produced NaN or infinite pixels, so its training diverged: "
                "train the run again with a lower learning rate or another seed"
            )
        batches.append(np.asarray(extractor(generated_images, training=False), dtype=np.float64))

    seconds = time.monotonic() - started
    logger.info(
        "run %s: generated and embedded %d images in %.1f s (%.0f images/s)",
        run_id, count, seconds, count / max(seconds, 1e-9),
    )
    return np.concatenate(batches)


def _real_features(extractor, directory, manifest, count: int) -> np.ndarray:
    """Return the features (count, D) float64 of the first `count` real images of REAL_SPLIT, in stored order."""
    # NOTE: the first records stand for the whole split only when the stored order is not grouped by
    # class. That holds for Fashion-MNIST's test split, but is not checked for other sources.
    from pipeline.data.reader import make_dataset

    dataset = make_dataset(directory, manifest, REAL_SPLIT, BATCH_SIZE, shuffle=False, drop_remainder=False)
    started = time.monotonic()
    batches = []
    remaining = count
    for real_images in dataset:
        if remaining <= 0:
            break
        real_images = real_images[:remaining]
        batches.append(np.asarray(extractor(real_images, training=False), dtype=np.float64))
        remaining -= len(batches[-1])

    seconds = time.monotonic() - started
    logger.info("embedded %d real images in %.1f s (%.0f images/s)", count, seconds, count / max(seconds, 1e-9))
    return np.concatenate(batches)


def _extractor_record(info: dict[str, Any]) -> dict[str, Any]:
    names = ("feature_layer", "feature_dim", "epochs", "num_train", "num_test", "sha256")
    record = {"name": info["extractor"], "test_accuracy": info["test_accuracy"]}
    record.update({name: info.get(name) for name in names})
    return record


def _training_summary(store: ArtifactStore, run_id: str, fingerprint: str) -> dict[str, Any]:
    """Return train.json of the run; raise EvaluationError when training has not finished or used another dataset."""
    key = run_key(run_id, TRAIN_JSON)
    if not store.exists(key):
        raise EvaluationError(
            f"training of run {run_id} has not finished ({store.location(key)} not found): run the train step first"
        )
    summary = store.get_json(key)
    if summary.get("fingerprint") not in (None, fingerprint):
        raise EvaluationError(
            f"run {run_id} was trained on dataset {summary['fingerprint']}, not {fingerprint}: "
            "evaluate it with the fingerprint it was trained on"
        )
    return summary


def _load_generator(store: ArtifactStore, run_id: str):
    import tempfile
    from pathlib import Path

    import keras

    key = run_key(run_id, GENERATOR_FILE)
    if not store.exists(key):
        raise EvaluationError(
            f"run {run_id} has no generator ({store.location(key)} not found): run the train step first"
        )

    with tempfile.TemporaryDirectory(prefix="generator-") as temporary:
        path = store.get_file(key, Path(temporary) / GENERATOR_FILE)
        try:
            return keras.models.load_model(path, compile=False)
        except (ValueError, TypeError, OSError) as error:
            raise EvaluationError(
                f"cannot load the generator {store.location(key)} as a Keras 3 model: {error}"
            ) from error


def _check_generator_fits(generator, manifest, training: dict[str, Any], run_id: str) -> None:
    """Raise EvaluationError unless the generator maps (B, latent_dim) to the dataset's (B, H, W, C)."""
    image_shape = tuple(generator.output_shape[1:])
    expected = (manifest.height, manifest.width, manifest.channels)
    if image_shape != expected:
        raise EvaluationError(
            f"the generator of run {run_id} outputs images of shape {image_shape}, but dataset "
            f"{manifest.fingerprint} has images of shape {expected}: evaluate it on the dataset it was trained on"
        )

    latent_dim = int(generator.input_shape[-1])
    if training.get("latent_dim") not in (None, latent_dim):
        raise EvaluationError(
            f"the generator of run {run_id} takes latents of size {latent_dim}, but train.json records "
            f"latent_dim {training['latent_dim']}: the run's objects come from different attempts; train it again"
        )


def _write_report(store: ArtifactStore, run_id: str, generator, report: dict[str, Any]) -> None:
    """Write report.html, then report.json, which marks the evaluation complete."""
    from pipeline.data.pixels import to_uint8
    from pipeline.evaluation.report import loss_curve_png, render_report_html, sample_grid_png

    latent = _grid_latents(store, run_id, int(generator.input_shape[-1]), report["generation"]["seed"])
    grid = sample_grid_png(to_uint8(generator(latent, training=False)))
    curves = loss_curve_png(_metrics_rows(store, run_id))

    html_key = run_key(run_id, REPORT_HTML)
    store.put_bytes(html_key, render_report_html(report, grid, curves).encode("utf-8"))
    store.put_json(run_key(run_id, REPORT_JSON), report)


def _grid_latents(store: ArtifactStore, run_id: str, latent_dim: int, seed: int) -> np.ndarray:
    """Return the run's fixed latents, or the first GRID_SIZE evaluation latents when the run has none."""
    key = run_key(run_id, FIXED_LATENTS_FILE)
    if store.exists(key):
        latent = np.load(io.BytesIO(store.get_bytes(key)), allow_pickle=False)
        if latent.ndim == 2 and latent.shape[1] == latent_dim:
            return latent.astype(np.float32)
        logger.warning("run %s: ignoring %s of shape %s, expected (N, %d)", run_id, key, latent.shape, latent_dim)
    return np.random.default_rng((seed, _LATENT_STREAM)).standard_normal((GRID_SIZE, latent_dim)).astype(np.float32)


def _metrics_rows(store: ArtifactStore, run_id: str) -> list[dict[str, Any]]:
    """Return the rows of the run's metrics.jsonl; skip, count and log lines that are not JSON objects."""
    key = run_key(run_id, METRICS_FILE)
    if not store.exists(key):
        logger.warning("run %s: %s not found, so the report has no loss curves", run_id, store.location(key))
        return []

    rows, skipped = [], 0
    for line in store.get_bytes(key).decode("utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            skipped += 1
    if skipped:
        logger.warning("run %s: skipped %d lines of %s that are not JSON objects", run_id, skipped, key)
    return rows


def _existing_result(store: ArtifactStore, report_key: str, run_id: str, fingerprint: str) -> dict[str, Any]:
    report = store.get_json(report_key)
    if report.get("fingerprint") != fingerprint:
        raise EvaluationError(
            f"run {run_id} was evaluated on dataset {report.get('fingerprint')}, not {fingerprint} "
            f"({store.location(report_key)}): delete that report to evaluate the run again"
        )
    logger.info("run %s: report %s exists, so its metrics are returned", run_id, store.location(report_key))
    return summarize_report(report)
