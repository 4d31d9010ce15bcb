"""Model pointers and the promotion gate: which complete run `models/best.json` and `models/latest.json` name.

Both pointers are moved with conditional writes (compare-and-swap on the pointer's version), so
two runs that publish at the same moment cannot overwrite each other's update: the loser reads
the pointer again and decides against the new content.

A run becomes best only when its FID beats the best's by more than a margin, and only when both
FIDs were measured the same way (see `EVALUATION_BASIS_FIELDS`). FID is biased at small sample
counts and depends on the feature extractor, so values measured differently are not comparable.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from pipeline.errors import StoreError
from pipeline.layout import BEST_POINTER, LATEST_POINTER
from pipeline.storage.base import ArtifactStore

logger = logging.getLogger(__name__)

EVALUATION_BASIS_FIELDS = ("fingerprint", "extractor", "extractor_sha256", "num_real", "num_generated")
"""Fields that must be equal for two FIDs to be compared: dataset (and so reference statistics),
feature extractor name and weights, and the real and generated sample counts."""

MAX_POINTER_ATTEMPTS = 10
"""Conditional writes tried before giving up when other runs keep changing a pointer."""


@dataclass(frozen=True)
class PromotionDecision:
    """The outcome of the promotion gate for one run, as recorded in its run.json."""

    promoted: bool
    reason: str
    best_run_id: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def evaluation_basis(report: dict[str, Any]) -> dict[str, Any]:
    """Return how the FID of a report.json was measured: the values of `EVALUATION_BASIS_FIELDS`.

    Missing values are None; two reports that both lack a field count as equal on it.
    """
    fid = report.get("metrics", {}).get("fid", {})
    fid = fid if isinstance(fid, dict) else {}
    extractor = report.get("extractor", {})
    return {
        "fingerprint": report.get("fingerprint"),
        "extractor": extractor.get("name"),
        "extractor_sha256": extractor.get("sha256"),
        "num_real": fid.get("num_real"),
        "num_generated": fid.get("num_generated"),
    }


def decide_promotion(candidate: dict[str, Any], best: dict[str, Any] | None, margin: float) -> PromotionDecision:
    """Decide whether the run of pointer `candidate` replaces the pointer `best`.

    Promoted when there is no best yet, or when both FIDs have the same evaluation basis and
    `best_fid - fid > margin`. A best without a finite FID is replaced by any finite one. A
    candidate without a finite FID is never promoted.
    """
    run_id = candidate["run_id"]
    fid = candidate.get("fid")
    if best is not None and best.get("run_id") == run_id:
        return PromotionDecision(True, f"run {run_id} is already the best model", run_id)

    best_run_id = None if best is None else best.get("run_id")
    if not _is_finite_number(fid):
        return PromotionDecision(False, f"fid is {fid!r}, not a finite number", best_run_id)
    if best is None:
        return PromotionDecision(True, "no best model existed yet", None)

    mismatches = _basis_mismatches(candidate.get("basis", {}), best.get("basis", {}))
    if mismatches:
        return PromotionDecision(
            False, f"not comparable with best run {best_run_id}: {'; '.join(mismatches)} differ", best_run_id
        )

    best_fid = best.get("fid")
    if not _is_finite_number(best_fid):
        return PromotionDecision(True, f"best run {best_run_id} has no finite fid ({best_fid!r})", best_run_id)
    improvement = best_fid - fid
    if improvement > margin:
        reason = (
            f"fid {fid:.4f} beats {best_fid:.4f} of run {best_run_id} by {improvement:.4f}, "
            f"more than the margin {margin:g}"
        )
        return PromotionDecision(True, reason, best_run_id)
    reason = (
        f"fid {fid:.4f} does not beat {best_fid:.4f} of run {best_run_id} by more than the margin {margin:g}"
    )
    return PromotionDecision(False, reason, best_run_id)


def promote_best(store: ArtifactStore, candidate: dict[str, Any], margin: float) -> PromotionDecision:
    """Apply the promotion gate and, when it passes, move `models/best.json` to `candidate` atomically.

    The new pointer records the replaced run as `previous_run_id`, which retention keeps. Raises
    StoreError when the pointer changed under every one of `MAX_POINTER_ATTEMPTS` attempts.
    """
    for _ in range(MAX_POINTER_ATTEMPTS):
        best, version = store.get_json_versioned(BEST_POINTER) or (None, None)
        decision = decide_promotion(candidate, best, margin)
        if not decision.promoted or decision.best_run_id == candidate["run_id"]:
            _log_decision(candidate["run_id"], decision)
            return decision

        pointer = {**candidate, "previous_run_id": decision.best_run_id, "updated_at": utc_now()}
        if store.put_json_if(BEST_POINTER, pointer, version):
            _log_decision(candidate["run_id"], decision)
            return decision
        logger.info("models/best.json changed while run %s was compared with it; comparing again", candidate["run_id"])

    raise _contention_error(store, BEST_POINTER, candidate["run_id"])


def update_latest(store: ArtifactStore, candidate: dict[str, Any]) -> bool:
    """Point `models/latest.json` at `candidate` unless it names a newer run; returns whether it names `candidate` now.

    Runs are ordered by (created_at of their run.json, run_id), so a retry of an older run never
    moves the pointer back.
    """
    # NOTE: created_at comes from each worker's clock, so clock skew between machines can reorder runs.
    for _ in range(MAX_POINTER_ATTEMPTS):
        latest, version = store.get_json_versioned(LATEST_POINTER) or (None, None)
        if latest is not None and _order(latest) >= _order(candidate):
            return latest.get("run_id") == candidate["run_id"]

        if store.put_json_if(LATEST_POINTER, {**candidate, "updated_at": utc_now()}, version):
            logger.info("models/latest.json now points at run %s", candidate["run_id"])
            return True
        logger.info("models/latest.json changed while run %s was writing it; reading it again", candidate["run_id"])

    raise _contention_error(store, LATEST_POINTER, candidate["run_id"])


def read_pointer(store: ArtifactStore, key: str) -> dict[str, Any] | None:
    """Return the content of the pointer `key`, or None when no run has been pointed at yet."""
    current = store.get_json_versioned(key)
    return None if current is None else current[0]


def utc_now() -> str:
    """Return the current UTC time as ISO-8601 with microseconds, for example 2025-01-31T12:00:00.000000+00:00."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _order(pointer: dict[str, Any]) -> tuple[str, str]:
    return (pointer.get("created_at") or "", pointer.get("run_id") or "")


def _basis_mismatches(candidate: dict[str, Any], best: dict[str, Any]) -> list[str]:
    return [
        f"{name} ({candidate.get(name)!r} vs {best.get(name)!r})"
        for name in EVALUATION_BASIS_FIELDS
        if candidate.get(name) != best.get(name)
    ]


def _log_decision(run_id: str, decision: PromotionDecision) -> None:
    if decision.promoted:
        logger.info("run %s is the best model: %s", run_id, decision.reason)
    else:
        logger.info("run %s is not promoted: %s", run_id, decision.reason)


def _contention_error(store: ArtifactStore, key: str, run_id: str) -> StoreError:
    return StoreError(
        f"could not update {store.location(key)} for run {run_id}: other runs changed it "
        f"{MAX_POINTER_ATTEMPTS} times in a row. Retry the publish step."
    )


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
