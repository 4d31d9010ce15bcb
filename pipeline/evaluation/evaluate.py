"""The evaluate step: FID, KID, precision/recall and class coverage of a trained generator.

The generated images (`eval.num_samples`, from latents seeded by `train.seed`) are compared with
the first min(num_samples, test records) real test images. As a noise floor, the same metrics
compare the first min(num_samples, train records) real training images with that test set: a
model cannot be expected to score better than two real sets do. Features come from the
extractor that the `extractor` setting names (see `pipeline.evaluation.extractors`); class
coverage always uses the dataset's own classifier. Real-side features are cached in the store
(see `pipeline.evaluation.reference_stats`). TensorFlow and Keras are imported inside the
functions, so importing this module is cheap.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np

import pipeline
from pipeline.config import PipelineConfig
from pipeline.errors import EvaluationError
from pipeline.layout import GENERATOR_FILE, GENERATOR_RAW_FILE, REPORT_HTML, REPORT_JSON, run_key, safe_run_id
from pipeline.storage.base import ArtifactStore

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2
REAL_SPLIT = "test"
NOISE_FLOOR_SPLIT = "train"
BATCH_SIZE = 256
# The accuracy on Fashion-MNIST's test split below which the report flags the classifier's features as weak.
CLASSIFIER_ACCURACY_TARGET = 0.90
_TRAINING_FIELDS = ("steps", "epochs", "batch_size", "latent_dim", "d_loss", "g_loss", "images_per_second")
# Settings from train.json that tell how the generator was trained, shown in the report next to the fields.
_TRAINING_SETTINGS = (
    "loss",
    "update_scheme",
    "d_steps_per_g_step",
    "generator_learning_rate",
    "discriminator_learning_rate",
    "ema_decay",
    "mixed_precision",
    "seed",
)


def evaluate_run(config: PipelineConfig, store: ArtifactStore, fingerprint: str, run_id: str) -> dict[str, Any]:
    """Compute the metrics of the generator of `run_id` and write its report.json and report.html.

    Metrics score generator.keras, the model that the publish step promotes: the moving average
    (EMA) of the generator's weights. The raw generator (generator_raw.keras), when present, is
    drawn as a second sample grid only. report.html is
    written before report.json, so report.json marks a complete evaluation: when it exists, its
    metrics are returned without recomputing. Raises EvaluationError when training
    has not finished, the generator does not fit the dataset, or it produces non-finite images.

    Returns {"run_id", "fid", "kid_mean", "kid_std", "num_generated", "num_real",
    "classifier_test_accuracy", "precision", "recall", "coverage", "classifier_score",
    "noise_floor_fid", "extractor", "report_key", "report_html_key"}.
    """
    run_id = safe_run_id(run_id)
    report_key = run_key(run_id, REPORT_JSON)
    if store.exists(report_key):
        return _existing_result(store, report_key, run_id, fingerprint)

    from pipeline.data.fetch import fetch_dataset
    from pipeline.evaluation import run_objects
    from pipeline.evaluation.classifier import load_or_train_classifier
    from pipeline.evaluation.extractors import ClassifierExtractor, open_extractor

    started = time.monotonic()
    training = run_objects.training_summary(store, run_id, fingerprint)
    generator = run_objects.load_generator(store, run_id)
    directory, manifest = fetch_dataset(store, fingerprint, config.cache_dir)
    run_objects.check_generator_fits(generator, manifest, training, run_id)
    classifier_model, classifier_info = load_or_train_classifier(
        store, fingerprint, directory, manifest, config.eval.classifier_epochs, config.train.seed
    )
    classifier = ClassifierExtractor(classifier_model, classifier_info)
    # NOTE: tests run this step with the classifier extractor only. The inception_v3 path is tested
    # through its own module, because InceptionV3 embeds about 2 images/s on the 2-core test machine.
    extractor = open_extractor(config.eval.extractor, classifier, config.eval.inception_weights)

    references = _references(config, store, fingerprint, directory, manifest, extractor, classifier)
    generated_images = generate_images(generator, config.eval.num_samples, config.train.seed, run_id)
    features, probabilities = _features_and_probabilities(generated_images, extractor, classifier)
    metrics, noise_floor = _metrics_and_noise_floor(config, references, features, probabilities)

    report = _build_report(config, run_id, fingerprint, metrics, noise_floor, manifest, extractor, classifier_info, training)
    report["reference"] = {split: {"count": ref.count, "reused": ref.reused} for split, ref in references.items()}
    _write_report(store, config, run_id, generator, extractor, references, directory, manifest, report)

    logger.info(
        "run %s: evaluated in %.1f s, FID %.4f (noise floor %.4f), KID %.6f ± %.6f, precision %.3f, recall %.3f, report %s",
        run_id, time.monotonic() - started, metrics["fid"]["value"], noise_floor["metrics"]["fid"]["value"],
        metrics["kid"]["mean"], metrics["kid"]["std"], metrics["precision_recall"]["precision"],
        metrics["precision_recall"]["recall"], store.location(run_key(run_id, REPORT_HTML)),
    )
    return summarize_report(report)


def summarize_report(report: dict[str, Any]) -> dict[str, Any]:
    """Return the small JSON result of the step (an Airflow XCom) from report.json content.

    Reports of schema version 1 lack precision/recall, coverage and the noise floor: those keys are None.
    """
    run_id = report["run_id"]
    metrics = report["metrics"]
    classifier = report.get("classifier", report["extractor"])
    return {
        "run_id": run_id,
        "fid": metrics["fid"]["value"],
        "kid_mean": metrics["kid"]["mean"],
        "kid_std": metrics["kid"]["std"],
        "num_generated": metrics["fid"]["num_generated"],
        "num_real": metrics["fid"]["num_real"],
        "classifier_test_accuracy": classifier["test_accuracy"],
        "precision": metrics.get("precision_recall", {}).get("precision"),
        "recall": metrics.get("precision_recall", {}).get("recall"),
        "coverage": metrics.get("class_coverage", {}).get("coverage"),
        "classifier_score": metrics.get("class_coverage", {}).get("classifier_score"),
        "noise_floor_fid": report.get("noise_floor", {}).get("metrics", {}).get("fid", {}).get("value"),
        "extractor": report["extractor"]["name"],
        "report_key": run_key(run_id, REPORT_JSON),
        "report_html_key": run_key(run_id, REPORT_HTML),
    }


def generate_images(generator, count: int, seed: int, run_id: str) -> np.ndarray:
    """Generate `count` uint8 images (count, H, W, C) from latents drawn from default_rng((seed, LATENT_STREAM))."""
    from pipeline.data.pixels import to_uint8
    from pipeline.evaluation.run_objects import LATENT_STREAM

    latent_dim = int(generator.input_shape[-1])
    rng = np.random.default_rng((seed, LATENT_STREAM))
    started = time.monotonic()
    batches = []
    for start in range(0, count, BATCH_SIZE):
        latent = rng.standard_normal((min(BATCH_SIZE, count - start), latent_dim)).astype(np.float32)
        generated_images = np.asarray(generator(latent, training=False))
        if not np.all(np.isfinite(generated_images)):
            raise EvaluationError(
                f"the generator of run {run_id} produced NaN or infinite pixels, so its training diverged: "
                "train the run again with a lower learning rate or another seed"
            )
        batches.append(to_uint8(generated_images))

    seconds = time.monotonic() - started
    logger.info("run %s: generated %d images in %.1f s (%.0f images/s)", run_id, count, seconds, count / max(seconds, 1e-9))
    return np.concatenate(batches)


def real_images(directory, manifest, split: str, count: int) -> np.ndarray:
    """Return the first `count` real images of `split` in stored order, uint8 (count, H, W, C)."""
    # NOTE: the first records stand for the whole split only when the stored order is not grouped by
    # class. That holds for Fashion-MNIST, but is not checked for other sources.
    from pipeline.data.pixels import to_uint8
    from pipeline.data.reader import make_dataset

    dataset = make_dataset(directory, manifest, split, BATCH_SIZE, shuffle=False, drop_remainder=False)
    batches, remaining = [], count
    for batch in dataset:
        if remaining <= 0:
            break
        batches.append(to_uint8(batch[:remaining]))
        remaining -= len(batches[-1])
    return np.concatenate(batches)


def _references(config, store, fingerprint, directory, manifest, extractor, classifier) -> dict[str, Any]:
    """Return the cached or new reference sets of REAL_SPLIT and of NOISE_FLOOR_SPLIT, keyed by split."""
    from pipeline.evaluation.reference_stats import load_or_compute_reference

    references = {}
    for split in (REAL_SPLIT, NOISE_FLOOR_SPLIT):
        count = min(config.eval.num_samples, manifest.split(split).num_records)
        references[split] = load_or_compute_reference(
            store, fingerprint, split, count, extractor, classifier,
            lambda split=split, count=count: real_images(directory, manifest, split, count),
        )
    return references


def _features_and_probabilities(images: np.ndarray, extractor, classifier) -> tuple[np.ndarray, np.ndarray]:
    features, probabilities = classifier.features_and_probabilities(images)
    if extractor is not classifier:
        features = extractor.features(images)
    return features, probabilities


def _metrics_and_noise_floor(config, references, features, probabilities) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the metrics of the generated set and of the real noise-floor set against the real test set."""
    from pipeline.evaluation.metrics import MetricSettings, compute_metrics

    settings = MetricSettings(
        kid_subset_size=config.eval.kid_subset_size,
        kid_subsets=config.eval.kid_subsets,
        precision_recall_k=config.eval.precision_recall_k,
        seed=config.train.seed,
    )
    reference, floor = references[REAL_SPLIT], references[NOISE_FLOOR_SPLIT]
    metrics = compute_metrics(reference, features, probabilities, settings)
    noise_floor = {
        "split": NOISE_FLOOR_SPLIT,
        "num_images": floor.count,
        "metrics": compute_metrics(reference, floor.features, floor.probabilities, settings),
    }
    return metrics, noise_floor


def _build_report(
    config: PipelineConfig,
    run_id: str,
    fingerprint: str,
    metrics: dict[str, Any],
    noise_floor: dict[str, Any],
    manifest,
    extractor,
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
        "noise_floor": noise_floor,
        "real": {
            "split": REAL_SPLIT,
            "num_real": metrics["fid"]["num_real"],
            "num_available": manifest.split(REAL_SPLIT).num_records,
        },
        "generation": {"num_generated": metrics["fid"]["num_generated"], "seed": config.train.seed, "generator": GENERATOR_FILE},
        "extractor": {**_extractor_record(extractor, classifier_info), "setting": config.eval.extractor},
        "classifier": _classifier_record(classifier_info),
        "label_names": list(manifest.label_names),
        "final_losses": {name: training.get(name) for name in ("steps", "d_loss", "g_loss")},
        "training": {name: training[name] for name in _TRAINING_FIELDS if name in training},
        "training_settings": {
            name: training["train_settings"][name]
            for name in _TRAINING_SETTINGS
            if name in training.get("train_settings", {})
        },
    }


def _extractor_record(extractor, classifier_info: dict[str, Any]) -> dict[str, Any]:
    """Describe the feature extractor; for the classifier this repeats its accuracy, as schema version 1 did."""
    if extractor.name != classifier_info["extractor"]:
        return {name: extractor.info.get(name) for name in ("name", "feature_dim", "input_size", "weights", "sha256")}
    return {"name": classifier_info["extractor"], **_classifier_record(classifier_info)}


def _classifier_record(info: dict[str, Any]) -> dict[str, Any]:
    names = ("feature_layer", "feature_dim", "epochs", "num_train", "num_test", "sha256")
    record = {"name": info["extractor"], "test_accuracy": info["test_accuracy"]}
    record.update({name: info.get(name) for name in names})
    record["accuracy_target"] = CLASSIFIER_ACCURACY_TARGET
    return record


def _write_report(store, config, run_id, generator, extractor, references, directory, manifest, report) -> None:
    """Add the memorisation check and earlier runs to `report`, write report.html, then report.json."""
    from pipeline.evaluation import comparison, plots
    from pipeline.evaluation.nearest import NUM_SAMPLES, nearest_real
    from pipeline.evaluation.report import loss_curve_png, render_report_html, sample_grid_png
    from pipeline.evaluation.run_objects import grid_latents, load_generator, metrics_rows

    latent = grid_latents(store, run_id, int(generator.input_shape[-1]), config.train.seed)
    grid_images = _images_from(generator, latent, run_id)
    figures = {"grid": sample_grid_png(grid_images), "grid_raw": None}
    if store.exists(run_key(run_id, GENERATOR_RAW_FILE)):
        raw_generator = load_generator(store, run_id, GENERATOR_RAW_FILE)
        figures["grid_raw"] = sample_grid_png(_images_from(raw_generator, latent, run_id))
        report["generation"]["raw_grid"] = True

    # Memorisation check: a few grid samples beside their nearest real training images.
    floor = references[NOISE_FLOOR_SPLIT]
    samples = grid_images[:NUM_SAMPLES]
    indices, distances = nearest_real(extractor.features(samples), floor.features)
    train_images = real_images(directory, manifest, NOISE_FLOOR_SPLIT, int(indices.max()) + 1)
    report["nearest"] = {
        "split": NOISE_FLOOR_SPLIT,
        "train_indices": indices.tolist(),
        "distances": distances.tolist(),
    }
    figures["nearest"] = plots.nearest_strip_png(samples, train_images[indices])

    report["history"] = comparison.metric_history(store, report["fingerprint"], run_id)
    report["promoted"] = comparison.promoted_comparison(store, report)
    figures["trend"] = plots.trend_png(report["history"], run_id, report["metrics"])
    figures["classes"] = plots.class_histogram_png(report["metrics"]["class_coverage"], report["label_names"])
    figures["loss"] = loss_curve_png(metrics_rows(store, run_id))

    store.put_bytes(run_key(run_id, REPORT_HTML), render_report_html(report, figures).encode("utf-8"))
    store.put_json(run_key(run_id, REPORT_JSON), report)


def _images_from(generator, latent: np.ndarray, run_id: str) -> np.ndarray:
    from pipeline.data.pixels import to_uint8

    generated_images = np.asarray(generator(latent, training=False))
    if not np.all(np.isfinite(generated_images)):
        raise EvaluationError(f"the generator of run {run_id} produced NaN or infinite pixels from the grid latents")
    return to_uint8(generated_images)


def _existing_result(store: ArtifactStore, report_key: str, run_id: str, fingerprint: str) -> dict[str, Any]:
    report = store.get_json(report_key)
    if report.get("fingerprint") != fingerprint:
        raise EvaluationError(
            f"run {run_id} was evaluated on dataset {report.get('fingerprint')}, not {fingerprint} "
            f"({store.location(report_key)}): delete that report to evaluate the run again"
        )
    logger.info("run %s: report %s exists, so its metrics are returned", run_id, store.location(report_key))
    return summarize_report(report)
