"""Publish a finished run: record its objects in `run.json`, then move the model pointers.

A run is complete once `runs/<run_id>/run.json` exists, which is why it is written after every
other object of the run is listed and hashed. The pointers `models/latest.json` and
`models/best.json` are written after `run.json`, so they only ever name complete runs.
"""

from __future__ import annotations

import logging
import math
import re
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pipeline
from pipeline.config import PipelineConfig
from pipeline.errors import StoreError
from pipeline.layout import BEST_POINTER, LATEST_POINTER, RUN_JSON, run_key, run_prefix, safe_run_id
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
    """Write `runs/<run_id>/run.json` and update `models/latest.json` and, if better, `models/best.json`.

    Training and evaluation must already have written `generator.keras` and `report.json` under
    `runs/<run_id>/`, else StoreError names the missing key. `metrics` should contain `fid` and
    `kid_mean`; the run becomes best when no best exists or its `fid` is lower than the best's.

    Idempotent: when `run.json` exists it is kept as it is, and a pointer is written only if the
    earlier attempt stopped before writing it, so a second call after success writes nothing.
    Returns `{"run_id", "run_json_key", "run_location", "num_objects", "promoted", "latest_key"}`,
    where `promoted` is True when `models/best.json` names this run as the call returns.
    """
    run_id = safe_run_id(run_id)
    run_json_key = run_key(run_id, RUN_JSON)

    if store.exists(run_json_key):
        record = store.get_json(run_json_key)
        logger.info("run %s is already published at %s, so its run.json is kept", run_id, store.location(run_json_key))
    else:
        record = build_run_record(config, store, run_id, fingerprint, metrics)
        store.put_json(run_json_key, record)
        logger.info(
            "published run %s: %d objects, run.json at %s", run_id, len(record["objects"]), store.location(run_json_key)
        )

    pointer = _pointer(store, record)
    _update_latest(store, pointer, record.get("created_at", ""))
    promoted = _update_best(store, pointer)

    return {
        "run_id": run_id,
        "run_json_key": run_json_key,
        "run_location": pointer["run_location"],
        "num_objects": len(record["objects"]),
        "promoted": promoted,
        "latest_key": LATEST_POINTER,
    }


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
        "objects": objects,
        "created_at": _utc_now(),
    }


def list_runs(store: ArtifactStore) -> list[dict]:
    """Return a summary of every complete run (one with `run.json`), oldest first.

    Each summary contains run_id, created_at, fingerprint, fid, kid_mean, num_objects and location.
    Runs without `run.json` are incomplete (still running or failed): they are logged and skipped.
    """
    run_ids: dict[str, bool] = {}
    for info in store.list("runs/"):
        parts = info.key.split("/")
        if len(parts) < 3:
            continue
        run_ids[parts[1]] = run_ids.get(parts[1], False) or parts[2] == RUN_JSON

    runs = []
    for run_id, complete in run_ids.items():
        if not complete:
            logger.info("skipped run %s: it has no run.json, so it is incomplete", run_id)
            continue
        record = store.get_json(run_key(run_id, RUN_JSON))
        metrics = record.get("metrics", {})
        runs.append(
            {
                "run_id": run_id,
                "created_at": record.get("created_at"),
                "fingerprint": record.get("fingerprint"),
                "fid": metrics.get("fid"),
                "kid_mean": metrics.get("kid_mean"),
                "num_objects": len(record.get("objects", [])),
                "location": store.location(run_prefix(run_id).rstrip("/")),
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
    return {
        "run_id": run_id,
        "run_location": store.location(run_prefix(run_id).rstrip("/")),
        "generator_key": run_key(run_id, GENERATOR_FILE),
        "fid": metrics.get("fid"),
        "kid_mean": metrics.get("kid_mean"),
    }


def _update_latest(store: ArtifactStore, pointer: dict, created_at: str) -> None:
    """Point `models/latest.json` at this run unless it was last updated after this run was recorded.

    A pointer updated before `created_at` means that the earlier attempt of this run stopped
    after writing `run.json` but before writing the pointer. A later pointer names this run or a newer one.
    """
    # NOTE: timestamps come from each worker's clock, so clock skew between machines can reorder runs.
    if store.exists(LATEST_POINTER):
        current = store.get_json(LATEST_POINTER)
        if current.get("run_id") == pointer["run_id"] or current.get("updated_at", "") >= created_at:
            return

    store.put_json(LATEST_POINTER, {**pointer, "updated_at": _utc_now()})
    logger.info("models/latest.json now points at run %s", pointer["run_id"])


def _update_best(store: ArtifactStore, pointer: dict) -> bool:
    """Point `models/best.json` at this run when there is no best, the best has no finite fid, or this run's is lower.

    Returns whether `models/best.json` names this run afterwards.
    """
    # TODO: read-then-write is not atomic, so two runs publishing at once can both win. A margin
    # and conditional writes (If-Match on S3) would make promotion safe under concurrency.
    current = store.get_json(BEST_POINTER) if store.exists(BEST_POINTER) else None
    if current is not None and current.get("run_id") == pointer["run_id"]:
        return True

    fid = pointer["fid"]
    if not _is_finite_number(fid):
        logger.warning("run %s cannot become best: its fid is %r, not a finite number", pointer["run_id"], fid)
        return False

    best_fid = None if current is None else current.get("fid")
    if _is_finite_number(best_fid) and fid >= best_fid:
        logger.info(
            "best stays at run %s: fid %.4f of run %s is not lower than %.4f",
            current.get("run_id"),
            fid,
            pointer["run_id"],
            best_fid,
        )
        return False

    store.put_json(BEST_POINTER, {**pointer, "updated_at": _utc_now()})
    logger.info("models/best.json now points at run %s (fid %.4f, previous %s)", pointer["run_id"], fid, best_fid)
    return True


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _plain(value: Any) -> Any:
    """Convert numpy scalars and arrays inside `value` to plain Python values for JSON."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _utc_now() -> str:
    """Return the current UTC time as ISO-8601 with microseconds, for example 2025-01-31T12:00:00.000000+00:00."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")
