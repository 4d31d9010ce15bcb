"""Earlier runs for the report: the FID/KID trend and the currently promoted model."""

from __future__ import annotations

import logging
import math
from typing import Any

from pipeline.layout import BEST_POINTER, REPORT_JSON, run_key
from pipeline.storage.base import ArtifactStore

logger = logging.getLogger(__name__)


def metric_history(store: ArtifactStore, fingerprint: str, run_id: str) -> list[dict[str, Any]]:
    """Return earlier complete runs on the same dataset with a finite fid, oldest first.

    Each entry has run_id, created_at, fid and kid_mean, as `pipeline.publish.list_runs` returns them.
    """
    # NOTE: list_runs does not return each run's extractor or sample count, so a run scored with
    # other settings on the same dataset still appears in the trend.
    from pipeline.publish import list_runs

    history = []
    for run in list_runs(store):
        if run["run_id"] == run_id or run.get("fingerprint") != fingerprint or not _is_number(run.get("fid")):
            continue
        history.append({name: run.get(name) for name in ("run_id", "created_at", "fid", "kid_mean")})
    return history


def promoted_comparison(store: ArtifactStore, report: dict[str, Any]) -> dict[str, Any] | None:
    """Compare this run's FID and KID with the run that `models/best.json` names; None without a promoted run.

    `comparable` is True only when both runs used the same dataset, extractor and sample counts,
    because FID depends on all three.
    """
    if not store.exists(BEST_POINTER):
        return None
    best = store.get_json(BEST_POINTER)
    fid, kid_mean = report["metrics"]["fid"]["value"], report["metrics"]["kid"]["mean"]
    comparison = {
        "run_id": best.get("run_id"),
        "fid": best.get("fid"),
        "kid_mean": best.get("kid_mean"),
        "fid_change": fid - best["fid"] if _is_number(best.get("fid")) else None,
        "kid_change": kid_mean - best["kid_mean"] if _is_number(best.get("kid_mean")) else None,
        "comparable": False,
    }

    best_report_key = run_key(str(best.get("run_id")), REPORT_JSON)
    if store.exists(best_report_key):
        best_report = store.get_json(best_report_key)
        comparison["comparable"] = _same_setup(best_report, report)
    else:
        logger.warning("promoted run %s has no report.json, so its setup cannot be compared", best.get("run_id"))
    return comparison


def _same_setup(first: dict[str, Any], second: dict[str, Any]) -> bool:
    def setup(report: dict[str, Any]) -> tuple:
        fid = report.get("metrics", {}).get("fid", {})
        return (report.get("fingerprint"), report.get("extractor", {}).get("name"), fid.get("num_real"), fid.get("num_generated"))

    return setup(first) == setup(second)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
