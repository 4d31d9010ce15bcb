"""Object keys of the artifact store; the only place that spells them out.

    datasets/<fingerprint>/manifest.json        written last: a dataset without it is incomplete
    datasets/<fingerprint>/<split>-NNNNN-of-NNNNN.tfrecord
    datasets/<fingerprint>/evaluator/...        feature classifier cached per dataset
    runs/<run_id>/...                           checkpoints, generator, samples, metrics, report
    runs/<run_id>/run.json                      written last: a run without it is incomplete
    models/latest.json, models/best.json        pointers to promoted runs
"""

from __future__ import annotations

import re

from pipeline.errors import ConfigError

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def safe_run_id(run_id: str) -> str:
    """Map any run id (Airflow's contain ':' and '+') to a key-safe form, the same on every call."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", run_id).strip("-.")
    if not cleaned or not RUN_ID_PATTERN.match(cleaned):
        raise ConfigError("run_id", run_id, "must contain letters or digits, at most 200 characters")
    return cleaned


def dataset_prefix(fingerprint: str) -> str:
    return f"datasets/{fingerprint}/"


def manifest_key(fingerprint: str) -> str:
    return f"datasets/{fingerprint}/manifest.json"


def evaluator_prefix(fingerprint: str) -> str:
    return f"datasets/{fingerprint}/evaluator/"


def run_prefix(run_id: str) -> str:
    return f"runs/{run_id}/"


def run_key(run_id: str, name: str) -> str:
    """Key of an object of a run, for example run_key(id, 'report.json')."""
    return f"runs/{run_id}/{name}"


RUN_JSON = "run.json"
LATEST_POINTER = "models/latest.json"
BEST_POINTER = "models/best.json"

# Objects that the train step writes under runs/<run_id>/; pass them to run_key.
GENERATOR_FILE = "generator.keras"
METRICS_FILE = "metrics.jsonl"
FIXED_LATENTS_FILE = "fixed_latents.npy"
TRAIN_JSON = "train.json"  # written last by the train step: without it, training has not finished

# Objects that the evaluate step writes under runs/<run_id>/; report.json is written last.
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"

# More objects of the train step under runs/<run_id>/. generator.keras is the EMA generator.
GENERATOR_RAW_FILE = "generator_raw.keras"  # the generator's own weights, without the moving average
GENERATOR_SAVEDMODEL_DIR = "generator_savedmodel"  # TensorFlow SavedModel of the EMA generator, for serving
GENERATOR_REFERENCE_FILE = "generator_reference.npz"  # 4 latents and the uint8 images generated from them
TENSORBOARD_DIR = "tensorboard"  # TensorBoard event files: losses, images/s, sample grids


def reference_stats_key(fingerprint: str, split: str, extractor: str, count: int) -> str:
    """Key of cached real-image features and statistics: one per split, extractor and sample count."""
    return f"datasets/{fingerprint}/evaluator/reference/{split}-{extractor}-{count}.npz"


def promoted_samples_key(run_id: str) -> str:
    """Key of the sample grid that the example consumer DAG draws from a promoted generator."""
    return f"models/samples/{run_id}.png"
