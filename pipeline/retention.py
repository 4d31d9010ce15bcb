"""Retention of runs: which runs the store keeps, and deleting the others when asked to.

Kept are the newest `keep_last` complete runs, every run that `models/best.json` or
`models/latest.json` names, and the run that the best pointer replaced (`previous_run_id`), so the
previously promoted model is never deleted. Incomplete runs (without run.json) are never deleted:
they may still be running. Deleting is opt-in; without it the plan is only logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pipeline.layout import BEST_POINTER, LATEST_POINTER, RUN_JSON, run_key, run_prefix
from pipeline.promotion import read_pointer
from pipeline.storage.base import ArtifactStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunScan:
    """The run ids found under `runs/`: complete ones (with run.json) and incomplete ones."""

    complete: list[str]
    incomplete: list[str]


@dataclass(frozen=True)
class RetentionPlan:
    """Complete runs to keep and to delete; `protected` are the ones a pointer names."""

    keep: list[str]
    delete: list[str]
    protected: list[str] = field(default_factory=list)


def scan_runs(store: ArtifactStore) -> RunScan:
    """List the run ids under `runs/` and sort them into complete and incomplete, each sorted by id."""
    has_run_json: dict[str, bool] = {}
    for info in store.list("runs/"):
        parts = info.key.split("/")
        if len(parts) < 3:
            continue
        has_run_json[parts[1]] = has_run_json.get(parts[1], False) or info.key == run_key(parts[1], RUN_JSON)

    complete = sorted(run_id for run_id, done in has_run_json.items() if done)
    incomplete = sorted(run_id for run_id, done in has_run_json.items() if not done)
    for run_id in incomplete:
        logger.debug("ignored run %s: it has no run.json, so it is still running or failed", run_id)
    return RunScan(complete=complete, incomplete=incomplete)


def plan_retention(store: ArtifactStore, keep_last: int) -> RetentionPlan:
    """Return which complete runs to keep and which to delete, without deleting anything.

    Runs are ordered by the `created_at` of their run.json, then by run id.
    """
    scan = scan_runs(store)
    created = {run_id: store.get_json(run_key(run_id, RUN_JSON)).get("created_at") or "" for run_id in scan.complete}
    newest_first = sorted(scan.complete, key=lambda run_id: (created[run_id], run_id), reverse=True)

    protected = _pointer_run_ids(store)
    keep = [run_id for index, run_id in enumerate(newest_first) if index < keep_last or run_id in protected]
    delete = [run_id for run_id in newest_first if run_id not in keep]
    return RetentionPlan(keep=keep, delete=delete, protected=sorted(protected))


def apply_retention(store: ArtifactStore, keep_last: int, delete: bool) -> list[str]:
    """Delete the complete runs that `plan_retention` does not keep when `delete` is true; log them otherwise.

    A run's run.json is deleted first, so a run that is half deleted reads as incomplete and
    every reader ignores it. Returns the run ids deleted (empty when `delete` is false).
    """
    plan = plan_retention(store, keep_last)
    if not plan.delete:
        return []
    if not delete:
        logger.info(
            "retention would delete %d runs beyond the newest %d: %s (set delete_old_runs=true to delete them)",
            len(plan.delete), keep_last, ", ".join(plan.delete),
        )
        return []

    return [run_id for run_id in plan.delete if _delete_run(store, run_id)]


def _delete_run(store: ArtifactStore, run_id: str) -> bool:
    # Re-check just before deleting: another run may have pointed at this one since the plan.
    if run_id in _pointer_run_ids(store):
        logger.info("kept run %s: a model pointer names it now", run_id)
        return False

    store.delete(run_key(run_id, RUN_JSON))
    objects = store.list(run_prefix(run_id))
    for info in objects:
        store.delete(info.key)
    location = store.location(run_prefix(run_id).rstrip("/"))
    logger.info("deleted run %s: run.json and %d more objects under %s", run_id, len(objects), location)
    return True


def _pointer_run_ids(store: ArtifactStore) -> set[str]:
    """Return the run ids that the best and latest pointers name, including the best's previous run."""
    run_ids = set()
    for key in (BEST_POINTER, LATEST_POINTER):
        pointer = read_pointer(store, key) or {}
        run_ids.update(value for value in (pointer.get("run_id"), pointer.get("previous_run_id")) if value)
    return run_ids
