"""The four steps of the pipeline as functions of flat settings; the DAG tasks and the CLI call these.

Each step builds its configuration from the flat mapping (Airflow Params, CLI flags or YAML), opens
the artifact store, does its work and returns a small JSON-serialisable dict for the next step.
Heavy modules (TensorFlow, Keras) are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Mapping

from pipeline.config import PipelineConfig
from pipeline.layout import safe_run_id
from pipeline.storage import ArtifactStore, open_store

log = logging.getLogger(__name__)


def _open(values: Mapping[str, Any]) -> tuple[PipelineConfig, ArtifactStore]:
    config = PipelineConfig.from_mapping(values)
    return config, open_store(config.store)


def new_run_id(prefix: str = "cli") -> str:
    """Return a run id such as `cli-20261204T190000Z` for runs started outside Airflow."""
    return f"{prefix}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"


def prepare(values: Mapping[str, Any]) -> dict:
    """Prepare the dataset named by `source`; returns its fingerprint and record counts."""
    config, store = _open(values)
    from pipeline.data.prepare import prepare_dataset

    return prepare_dataset(config, store)


def train(values: Mapping[str, Any], fingerprint: str, run_id: str) -> dict:
    """Train (or resume) the GAN of `run_id` on the prepared dataset `fingerprint`."""
    config, store = _open(values)
    from pipeline.training.train import train_gan

    return train_gan(config, store, fingerprint, safe_run_id(run_id))


def evaluate(values: Mapping[str, Any], fingerprint: str, run_id: str) -> dict:
    """Compute FID and KID for the generator of `run_id` and write its report."""
    config, store = _open(values)
    from pipeline.evaluation.evaluate import evaluate_run

    return evaluate_run(config, store, fingerprint, safe_run_id(run_id))


def publish(values: Mapping[str, Any], fingerprint: str, run_id: str, metrics: Mapping[str, Any]) -> dict:
    """Commit the run with `run.json` and move the model pointers."""
    config, store = _open(values)
    from pipeline.publish import publish_run

    return publish_run(config, store, safe_run_id(run_id), fingerprint, dict(metrics))


def run_all(values: Mapping[str, Any], run_id: str) -> dict:
    """Run prepare, train, evaluate and publish in this process; returns every step's result."""
    _open(values)  # fail on a bad setting or store URI before any work starts
    run_id = safe_run_id(run_id)
    log.info("run %s: starting the whole chain", run_id)

    dataset = prepare(values)
    training = train(values, dataset["fingerprint"], run_id)
    metrics = evaluate(values, dataset["fingerprint"], run_id)
    published = publish(values, dataset["fingerprint"], run_id, metrics)
    return {"dataset": dataset, "training": training, "evaluation": metrics, "publish": published}


def list_runs(values: Mapping[str, Any]) -> list[dict]:
    """Return the complete runs in the store, oldest first, with their metrics."""
    from pipeline.publish import list_runs as list_store_runs

    _, store = _open(values)
    return list_store_runs(store)


def describe_run(values: Mapping[str, Any], run_id: str) -> dict:
    """Return where the objects of a complete run are, for people to open."""
    from pipeline import layout

    _, store = _open(values)
    run_id = safe_run_id(run_id)
    run = store.get_json(layout.run_key(run_id, layout.RUN_JSON))
    return {
        "run_id": run_id,
        "metrics": run.get("metrics", {}),
        "run_json": store.location(layout.run_key(run_id, layout.RUN_JSON)),
        "report_html": store.location(layout.run_key(run_id, "report.html")),
        "generator": store.location(layout.run_key(run_id, "generator.keras")),
    }
