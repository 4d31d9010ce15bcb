"""Publish a finished run: record its objects in `run.json`, then move the model pointers.

A run is complete once `runs/<run_id>/run.json` exists, which is why it is written after every
other object of the run is listed and hashed. The pointers `models/latest.json` and
`models/best.json` are written after `run.json`, so they only ever name complete runs. After the
promotion gate, run.json is replaced once more with the gate's decision added.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pipeline
from pipeline.config import PipelineConfig
from pipeline.errors import StoreError
from pipeline.layout import BEST_POINTER, LATEST_POINTER, RUN_JSON, run_key, run_prefix, safe_run_id
from pipeline.promotion import (
    PromotionDecision,
    evaluation_basis,
    promote_best,
    read_pointer,
    update_latest,
    utc_now,
)
from pipeline.retention import apply_retention, scan_runs
from pipeline.storage.base import ArtifactStore

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
GENERATOR_FILE = "generator.keras"
REPORT_FILE = "report.json"
REQUIRED_FILES = (GENERATOR_FILE, REPORT_FILE)

_SECRET_NAME = re.compile(r"secret|password|passwd|token|credential|access_key|private_key", re.IGNORECASE)


def publish_run(
    config: PipelineConfig, store: ArtifactStore, run_id: str, fingerprint: str, metrics: dict
) -> dict:
    """Write `runs/<run_id>/run.json`, move `models/latest.json`, apply the promotion gate, then retention.

    Training and evaluation must already have written `generator.keras` and `report.json` under
    `runs/<run_id>/`, else StoreError names the missing key. `metrics` should contain `fid` and
    `kid_mean`. The run becomes `models/best.json` when `promotion.decide_promotion` accepts it with
    `config.promotion.promotion_margin`. The decision and its reason are added to run.json as
    `promotion`. Old runs are deleted only with `config.promotion.delete_old_runs`.

    Idempotent: an existing run.json keeps its objects and metrics, a recorded promotion decision
    is reused, and pointers already naming this run are not rewritten.
    Returns `{"run_id", "run_json_key", "run_location", "num_objects", "promoted", "promotion_reason",
    "best_run_id", "latest_key", "deleted_runs"}`, where `best_run_id` is the best run after the gate.
    """
    run_id = safe_run_id(run_id)
    run_json_key = run_key(run_id, RUN_JSON)
    record = _load_or_write_record(config, store, run_id, fingerprint, metrics)

    pointer = _pointer(store, record)
    update_latest(store, pointer)
    if "promotion" in record:
        decision = PromotionDecision(**record["promotion"])
        logger.info("run %s: reusing its recorded promotion decision (%s)", run_id, decision.reason)
    else:
        decision = promote_best(store, pointer, config.promotion.promotion_margin)
        # run.json stays complete: the rewrite replaces it atomically with the same objects and metrics.
        store.put_json(run_json_key, {**record, "promotion": decision.to_json()})

    deleted = apply_retention(store, config.promotion.keep_last_runs, config.promotion.delete_old_runs)
    return {
        "run_id": run_id,
        "run_json_key": run_json_key,
        "run_location": pointer["run_location"],
        "num_objects": len(record["objects"]),
        "promoted": decision.promoted,
        "promotion_reason": decision.reason,
        "best_run_id": run_id if decision.promoted else decision.best_run_id,
        "latest_key": LATEST_POINTER,
        "deleted_runs": deleted,
    }


def _load_or_write_record(
    config: PipelineConfig, store: ArtifactStore, run_id: str, fingerprint: str, metrics: dict
) -> dict:
    """Return the run.json of the run, writing it first when an earlier attempt has not."""
    run_json_key = run_key(run_id, RUN_JSON)
    if store.exists(run_json_key):
        logger.info("run %s is already published at %s, so its run.json is kept", run_id, store.location(run_json_key))
        return store.get_json(run_json_key)

    record = build_run_record(config, store, run_id, fingerprint, metrics)
    store.put_json(run_json_key, record)
    logger.info(
        "published run %s: %d objects, run.json at %s", run_id, len(record["objects"]), store.location(run_json_key)
    )
    return record


def build_run_record(
    config: PipelineConfig, store: ArtifactStore, run_id: str, fingerprint: str, metrics: dict
) -> dict:
    """List and hash every object of the run and return the content of its `run.json`."""
    for name in REQUIRED_FILES:
        key = run_key(run_id, name)
        if not store.exists(key):
            raise StoreError(
                f"cannot publish run {run_id} because {store.location(key)} is missing. "
                "Run the training and evaluation steps for this run first."
            )

    objects = [
        {"key": info.key, "size": info.size, "sha256": store.sha256(info.key)}
        for info in store.list(run_prefix(run_id))
        if info.key != run_key(run_id, RUN_JSON)
    ]
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "fingerprint": fingerprint,
        "config": redact_config(config.to_flat()),
        "seed": config.train.seed,
        "code_version": pipeline.__version__,
        "metrics": _plain(metrics),
        "evaluation_basis": evaluation_basis(store.get_json(run_key(run_id, REPORT_FILE))),
        "objects": objects,
        "created_at": utc_now(),
    }


def list_runs(store: ArtifactStore) -> list[dict]:
    """Return a summary of every complete run (one with `run.json`), oldest first.

    Each summary contains run_id, created_at, fingerprint, fid, kid_mean, num_objects, location,
    promoted and promotion_reason (the gate's decision when the run was published, None for runs
    published before the gate existed), is_best and is_latest (what the pointers name now).
    Incomplete runs (still running or failed) are logged by `scan_runs` and skipped.
    """
    best = read_pointer(store, BEST_POINTER) or {}
    latest = read_pointer(store, LATEST_POINTER) or {}
    runs = []
    for run_id in scan_runs(store).complete:
        record = store.get_json(run_key(run_id, RUN_JSON))
        metrics = record.get("metrics", {})
        promotion = record.get("promotion", {})
        runs.append(
            {
                "run_id": run_id,
                "created_at": record.get("created_at"),
                "fingerprint": record.get("fingerprint"),
                "fid": metrics.get("fid"),
                "kid_mean": metrics.get("kid_mean"),
                "num_objects": len(record.get("objects", [])),
                "location": store.location(run_prefix(run_id).rstrip("/")),
                "promoted": promotion.get("promoted"),
                "promotion_reason": promotion.get("reason"),
                "is_best": best.get("run_id") == run_id,
                "is_latest": latest.get("run_id") == run_id,
            }
        )
    return sorted(runs, key=lambda run: (run["created_at"] or "", run["run_id"]))


def redact_config(flat: dict[str, Any]) -> dict[str, Any]:
    """Drop settings whose name suggests a secret and strip user:password from URL values."""
    cleaned = {}
    for key, value in flat.items():
        if _SECRET_NAME.search(key):
            continue
        if isinstance(value, str) and "@" in value and "://" in value:
            value = _strip_userinfo(value)
        cleaned[key] = value
    return cleaned


def _strip_userinfo(url: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host))


def _pointer(store: ArtifactStore, record: dict) -> dict:
    """Build the content of a model pointer to the run that `record` describes (without updated_at)."""
    run_id = record["run_id"]
    metrics = record.get("metrics", {})
    generator_key = run_key(run_id, GENERATOR_FILE)
    generator_sha256 = next((entry["sha256"] for entry in record["objects"] if entry["key"] == generator_key), None)
    return {
        "run_id": run_id,
        "run_location": store.location(run_prefix(run_id).rstrip("/")),
        "generator_key": generator_key,
        "generator_sha256": generator_sha256,
        "fid": metrics.get("fid"),
        "kid_mean": metrics.get("kid_mean"),
        "basis": record.get("evaluation_basis", {}),
        "created_at": record.get("created_at", ""),
    }


def _plain(value: Any) -> Any:
    """Convert numpy scalars and arrays inside `value` to plain Python values for JSON."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value
