"""Tests of the promotion gate and the model pointers, on the loopback S3 server with real conditional writes."""

from __future__ import annotations

import json
import threading

import pytest

from pipeline.config import PipelineConfig
from pipeline.promotion import decide_promotion, evaluation_basis, promote_best, update_latest
from pipeline.publish import publish_run
from pipeline.storage.s3 import S3Store

FINGERPRINT = "f" * 16
BASIS = {
    "fingerprint": FINGERPRINT,
    "extractor": "fashion-cnn",
    "extractor_sha256": "e" * 64,
    "num_real": 1000,
    "num_generated": 1000,
}


def _pointer(run_id: str, fid: float, created_at: str = "2026-01-01T00:00:00", **basis) -> dict:
    return {"run_id": run_id, "fid": fid, "basis": {**BASIS, **basis}, "created_at": created_at}


@pytest.fixture
def store(s3_env) -> S3Store:
    return S3Store.from_uri(f"s3://{s3_env['bucket']}/gan", endpoint_url=s3_env["endpoint_url"], create_bucket=True)


@pytest.fixture
def config(tmp_path) -> PipelineConfig:
    return PipelineConfig.from_mapping({"store_uri": str(tmp_path / "unused"), "cache_dir": str(tmp_path / "cache")})


def _write_run(store, run_id: str) -> None:
    report = {
        "fingerprint": FINGERPRINT,
        "extractor": {"name": "fashion-cnn", "sha256": "e" * 64},
        "metrics": {"fid": {"value": 1.0, "num_real": 1000, "num_generated": 1000}},
    }
    store.put_bytes(f"runs/{run_id}/generator.keras", b"generator " + run_id.encode())
    store.put_bytes(f"runs/{run_id}/report.json", json.dumps(report).encode())


# --- the gate without a store ------------------------------------------------------------------


def test_decide_first_run_promoted():
    decision = decide_promotion(_pointer("run-1", 20.0), None, margin=0.0)

    assert decision.promoted is True
    assert decision.best_run_id is None


def test_decide_equal_fid_not_promoted():
    decision = decide_promotion(_pointer("run-2", 20.0), _pointer("run-1", 20.0), margin=0.0)

    assert decision.promoted is False


def test_decide_other_extractor_not_comparable():
    decision = decide_promotion(_pointer("run-2", 1.0, extractor="inception-v3"), _pointer("run-1", 20.0), margin=0.0)

    assert decision.promoted is False
    assert "extractor ('inception-v3' vs 'fashion-cnn')" in decision.reason


def test_decide_other_dataset_not_comparable():
    decision = decide_promotion(_pointer("run-2", 1.0, fingerprint="0" * 16), _pointer("run-1", 20.0), margin=0.0)

    assert decision.promoted is False
    assert "fingerprint" in decision.reason


def test_decide_nan_fid_not_promoted_without_best():
    decision = decide_promotion(_pointer("run-1", float("nan")), None, margin=0.0)

    assert decision.promoted is False


def test_evaluation_basis_reads_report_fields():
    report = {
        "fingerprint": FINGERPRINT,
        "extractor": {"name": "fashion-cnn", "sha256": "e" * 64},
        "metrics": {"fid": {"value": 3.0, "num_real": 1000, "num_generated": 1000}},
    }

    assert evaluation_basis(report) == BASIS


# --- pointers on S3 ----------------------------------------------------------------------------


def test_worse_model_keeps_best_pointer_on_s3(config, store):
    _write_run(store, "run-1")
    _write_run(store, "run-2")
    publish_run(config, store, "run-1", FINGERPRINT, {"fid": 20.0})
    best_before = store.get_bytes("models/best.json")

    summary = publish_run(config, store, "run-2", FINGERPRINT, {"fid": 21.0})

    assert summary["promoted"] is False
    assert store.get_bytes("models/best.json") == best_before
    assert store.get_json("runs/run-2/run.json")["promotion"]["promoted"] is False
    assert store.get_json("models/latest.json")["run_id"] == "run-2"


def test_older_run_does_not_move_latest(store):
    update_latest(store, _pointer("run-2", 20.0, created_at="2026-01-02T00:00:00"))

    moved = update_latest(store, _pointer("run-1", 10.0, created_at="2026-01-01T00:00:00"))

    assert moved is False
    assert store.get_json("models/latest.json")["run_id"] == "run-2"


def _run_together(targets: list) -> list:
    """Call each function from its own thread, released together by a barrier; return their results."""
    barrier = threading.Barrier(len(targets))
    results: list = [None] * len(targets)

    def call(index: int) -> None:
        barrier.wait()
        results[index] = targets[index]()

    threads = [threading.Thread(target=call, args=(index,)) for index in range(len(targets))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


# NOTE: moto 5.2 checks If-Match / If-None-Match and then stores the object without a lock, so in
# rare interleavings it can accept two conditional writes that AWS S3 would not. The barrier makes
# the writes overlap; a failure here that does not repeat may come from moto, not from the pipeline.
def test_concurrent_promotions_on_s3_one_winner(store):
    candidates = [_pointer(f"run-{index}", 20.0) for index in range(4)]

    # Equal FIDs: once one run is best, no other beats it, so only conditional writes keep one winner.
    decisions = _run_together(
        [lambda candidate=candidate: promote_best(store, candidate, 0.0) for candidate in candidates]
    )

    winners = [candidate["run_id"] for candidate, decision in zip(candidates, decisions) if decision.promoted]
    assert len(winners) == 1
    assert store.get_json("models/best.json")["run_id"] == winners[0]


def test_concurrent_better_runs_end_with_lowest_fid(store):
    promote_best(store, _pointer("run-0", 30.0), 0.0)
    candidates = [_pointer("run-1", 25.0), _pointer("run-2", 15.0), _pointer("run-3", 20.0)]

    _run_together([lambda candidate=candidate: promote_best(store, candidate, 0.0) for candidate in candidates])

    assert store.get_json("models/best.json")["fid"] == 15.0


def test_concurrent_publishes_on_s3_one_best(config, store):
    run_ids = ["run-a", "run-b", "run-c"]
    for run_id in run_ids:
        _write_run(store, run_id)

    summaries = _run_together(
        [lambda run_id=run_id: publish_run(config, store, run_id, FINGERPRINT, {"fid": 20.0}) for run_id in run_ids]
    )

    winners = [summary["run_id"] for summary in summaries if summary["promoted"]]
    assert len(winners) == 1
    assert store.get_json("models/best.json")["run_id"] == winners[0]
    assert store.get_json("models/latest.json")["run_id"] in run_ids
