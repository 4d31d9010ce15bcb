"""Tests of the publish step: run.json, model pointers, idempotence and listing of runs."""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import datetime, timedelta

import pytest

import pipeline
from pipeline.config import PipelineConfig
from pipeline.errors import StoreError
from pipeline.publish import build_run_record, list_runs, publish_run, redact_config
from pipeline.storage.local import LocalStore
from pipeline.storage.s3 import S3Store

FINGERPRINT = "f" * 16


@pytest.fixture
def config(tmp_path) -> PipelineConfig:
    return PipelineConfig.from_mapping(
        {"store_uri": str(tmp_path / "store"), "cache_dir": str(tmp_path / "cache"), "seed": 7, "steps": 10}
    )


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def _report(run_id: str, *, num_generated: int = 1000, extractor: str = "fashion-cnn") -> bytes:
    """Return a report.json with the fields that decide whether two FIDs are comparable."""
    report = {
        "run_id": run_id,
        "fingerprint": FINGERPRINT,
        "extractor": {"name": extractor, "sha256": "e" * 64},
        "metrics": {"fid": {"value": 1.0, "num_real": 1000, "num_generated": num_generated}},
    }
    return json.dumps(report).encode()


def _write_run(
    store, run_id: str, *, generator: bool = True, report: bool = True, num_generated: int = 1000
) -> dict[str, bytes]:
    """Write the objects that training and evaluation leave under runs/<run_id>/; return key -> content."""
    objects = {
        f"runs/{run_id}/checkpoints/ckpt-10.weights.h5": b"checkpoint " + run_id.encode(),
        f"runs/{run_id}/samples/step-10.png": b"png " + run_id.encode(),
    }
    if generator:
        objects[f"runs/{run_id}/generator.keras"] = b"generator " + run_id.encode()
    if report:
        objects[f"runs/{run_id}/report.json"] = _report(run_id, num_generated=num_generated)
    for key, content in objects.items():
        store.put_bytes(key, content)
    return objects


def _metrics(fid: float) -> dict:
    return {"fid": fid, "kid_mean": fid / 100, "kid_std": 0.001}


def _snapshot(store: LocalStore) -> dict[str, tuple[int, int]]:
    """Map every file of the store to (inode, mtime_ns), which change on any rewrite."""
    return {
        path.relative_to(store.root).as_posix(): (path.stat().st_ino, path.stat().st_mtime_ns)
        for path in store.root.rglob("*")
        if path.is_file()
    }


def test_publish_run_json_lists_objects_with_sha256(config, store):
    written = _write_run(store, "run-1")

    publish_run(config, store, "run-1", FINGERPRINT, _metrics(20.0))

    objects = store.get_json("runs/run-1/run.json")["objects"]
    assert sorted(entry["key"] for entry in objects) == sorted(written)
    for entry in objects:
        assert entry["sha256"] == hashlib.sha256(written[entry["key"]]).hexdigest()
        assert entry["size"] == len(written[entry["key"]])


def test_publish_run_json_fields(config, store):
    _write_run(store, "run-1")

    publish_run(config, store, "run-1", FINGERPRINT, _metrics(20.0))

    record = store.get_json("runs/run-1/run.json")
    assert record["schema_version"] == 1
    assert record["run_id"] == "run-1"
    assert record["fingerprint"] == FINGERPRINT
    assert record["config"] == config.to_flat()
    assert record["seed"] == 7
    assert record["code_version"] == pipeline.__version__
    assert record["metrics"] == _metrics(20.0)
    assert datetime.fromisoformat(record["created_at"]).utcoffset() == timedelta(0)


def test_publish_returns_summary(config, store):
    _write_run(store, "run-1")

    summary = publish_run(config, store, "run-1", FINGERPRINT, _metrics(20.0))

    assert summary == {
        "run_id": "run-1",
        "run_json_key": "runs/run-1/run.json",
        "run_location": str(store.root / "runs" / "run-1"),
        "num_objects": 4,
        "promoted": True,
        "promotion_reason": "no best model existed yet",
        "best_run_id": "run-1",
        "latest_key": "models/latest.json",
        "deleted_runs": [],
    }


def test_publish_maps_airflow_run_id_to_safe_key(config, store):
    _write_run(store, "manual__2025-01-31T12-00-00-00-00")

    summary = publish_run(config, store, "manual__2025-01-31T12:00:00+00:00", FINGERPRINT, _metrics(20.0))

    assert summary["run_json_key"] == "runs/manual__2025-01-31T12-00-00-00-00/run.json"


def test_first_publish_sets_latest_and_best(config, store):
    _write_run(store, "run-1")

    publish_run(config, store, "run-1", FINGERPRINT, _metrics(20.0))

    for pointer_key in ("models/latest.json", "models/best.json"):
        pointer = store.get_json(pointer_key)
        assert pointer["run_id"] == "run-1"
        assert pointer["run_location"] == str(store.root / "runs" / "run-1")
        assert pointer["generator_key"] == "runs/run-1/generator.keras"
        assert pointer["fid"] == 20.0
        assert pointer["kid_mean"] == 0.2
        assert datetime.fromisoformat(pointer["updated_at"]).utcoffset() == timedelta(0)


def test_second_publish_rewrites_nothing(config, store):
    _write_run(store, "run-1")
    first = publish_run(config, store, "run-1", FINGERPRINT, _metrics(20.0))
    before = _snapshot(store)

    second = publish_run(config, store, "run-1", FINGERPRINT, _metrics(99.0))

    assert _snapshot(store) == before
    assert second == first


def test_publish_without_generator_raises(config, store):
    _write_run(store, "run-1", generator=False)

    with pytest.raises(StoreError, match="runs/run-1/generator.keras"):
        publish_run(config, store, "run-1", FINGERPRINT, _metrics(20.0))

    assert not store.exists("runs/run-1/run.json")
    assert not store.exists("models/latest.json")


def test_publish_without_report_raises(config, store):
    _write_run(store, "run-1", report=False)

    with pytest.raises(StoreError, match="runs/run-1/report.json"):
        publish_run(config, store, "run-1", FINGERPRINT, _metrics(20.0))

    assert not store.exists("runs/run-1/run.json")


def test_worse_run_moves_latest_not_best(config, store):
    _write_run(store, "run-1")
    _write_run(store, "run-2")
    publish_run(config, store, "run-1", FINGERPRINT, _metrics(20.0))

    summary = publish_run(config, store, "run-2", FINGERPRINT, _metrics(25.0))

    assert summary["promoted"] is False
    assert store.get_json("models/latest.json")["run_id"] == "run-2"
    assert store.get_json("models/best.json")["run_id"] == "run-1"


def test_better_run_moves_best(config, store):
    _write_run(store, "run-1")
    _write_run(store, "run-2")
    publish_run(config, store, "run-1", FINGERPRINT, _metrics(20.0))

    summary = publish_run(config, store, "run-2", FINGERPRINT, _metrics(15.0))

    assert summary["promoted"] is True
    assert store.get_json("models/best.json")["run_id"] == "run-2"


def test_run_without_finite_fid_is_not_promoted(config, store):
    _write_run(store, "run-1")

    summary = publish_run(config, store, "run-1", FINGERPRINT, {"fid": float("nan")})

    assert summary["promoted"] is False
    assert not store.exists("models/best.json")
    assert store.get_json("models/latest.json")["run_id"] == "run-1"


def test_retry_after_crash_before_pointers_writes_them(config, store):
    _write_run(store, "run-0")
    _write_run(store, "run-1")
    publish_run(config, store, "run-0", FINGERPRINT, _metrics(30.0))
    store.put_json("runs/run-1/run.json", build_run_record(config, store, "run-1", FINGERPRINT, _metrics(20.0)))

    summary = publish_run(config, store, "run-1", FINGERPRINT, _metrics(20.0))

    assert summary["promoted"] is True
    assert store.get_json("models/latest.json")["run_id"] == "run-1"
    assert store.get_json("models/best.json")["run_id"] == "run-1"


def test_republish_of_older_run_keeps_latest(config, store):
    _write_run(store, "run-1")
    _write_run(store, "run-2")
    publish_run(config, store, "run-1", FINGERPRINT, _metrics(20.0))
    publish_run(config, store, "run-2", FINGERPRINT, _metrics(25.0))

    publish_run(config, store, "run-1", FINGERPRINT, _metrics(20.0))

    assert store.get_json("models/latest.json")["run_id"] == "run-2"


def test_redact_config_drops_secrets():
    flat = {"epochs": 3, "store_secret_key": "s3cr3t", "store_endpoint_url": "http://user:pw@127.0.0.1:9000/path"}

    redacted = redact_config(flat)

    assert redacted == {"epochs": 3, "store_endpoint_url": "http://127.0.0.1:9000/path"}


def test_list_runs_skips_incomplete(config, store):
    _write_run(store, "run-1")
    _write_run(store, "run-2")
    _write_run(store, "run-3")
    publish_run(config, store, "run-1", FINGERPRINT, _metrics(20.0))
    publish_run(config, store, "run-3", FINGERPRINT, _metrics(30.0))

    runs = list_runs(store)

    assert [run["run_id"] for run in runs] == ["run-1", "run-3"]
    assert runs[1]["fid"] == 30.0
    assert runs[1]["num_objects"] == 4


def test_publish_on_s3_store(config, s3_env):
    store = S3Store.from_uri(
        f"s3://{s3_env['bucket']}/gan", endpoint_url=s3_env["endpoint_url"], create_bucket=True
    )
    written = _write_run(store, "run-1")

    summary = publish_run(config, store, "run-1", FINGERPRINT, _metrics(20.0))

    record = store.get_json("runs/run-1/run.json")
    assert summary["run_location"] == f"s3://{s3_env['bucket']}/gan/runs/run-1"
    assert {entry["key"]: entry["sha256"] for entry in record["objects"]} == {
        key: hashlib.sha256(content).hexdigest() for key, content in written.items()
    }
    assert store.get_json("models/best.json")["run_location"] == summary["run_location"]


def test_promotion_decision_recorded_in_run_json(config, store):
    _write_run(store, "run-1")
    _write_run(store, "run-2")
    publish_run(config, store, "run-1", FINGERPRINT, _metrics(20.0))

    publish_run(config, store, "run-2", FINGERPRINT, _metrics(25.0))

    promotion = store.get_json("runs/run-2/run.json")["promotion"]
    assert promotion["promoted"] is False
    assert promotion["best_run_id"] == "run-1"
    assert "does not beat 20.0000 of run run-1" in promotion["reason"]


def test_run_json_keeps_objects_after_promotion_rewrite(config, store):
    written = _write_run(store, "run-1")

    publish_run(config, store, "run-1", FINGERPRINT, _metrics(20.0))

    record = store.get_json("runs/run-1/run.json")
    assert sorted(entry["key"] for entry in record["objects"]) == sorted(written)
    assert record["evaluation_basis"]["num_generated"] == 1000


def test_improvement_within_margin_not_promoted(tmp_path, store):
    config = PipelineConfig.from_mapping({"store_uri": str(store.root), "promotion_margin": 1.0})
    _write_run(store, "run-1")
    _write_run(store, "run-2")
    publish_run(config, store, "run-1", FINGERPRINT, _metrics(20.0))

    summary = publish_run(config, store, "run-2", FINGERPRINT, _metrics(19.5))

    assert summary["promoted"] is False
    assert summary["best_run_id"] == "run-1"
    assert store.get_json("models/best.json")["run_id"] == "run-1"


def test_improvement_beyond_margin_promoted(tmp_path, store):
    config = PipelineConfig.from_mapping({"store_uri": str(store.root), "promotion_margin": 1.0})
    _write_run(store, "run-1")
    _write_run(store, "run-2")
    publish_run(config, store, "run-1", FINGERPRINT, _metrics(20.0))

    summary = publish_run(config, store, "run-2", FINGERPRINT, _metrics(18.5))

    assert summary["promoted"] is True
    assert store.get_json("models/best.json")["previous_run_id"] == "run-1"


def test_different_sample_count_not_comparable(config, store):
    _write_run(store, "run-1")
    _write_run(store, "run-2", num_generated=500)
    publish_run(config, store, "run-1", FINGERPRINT, _metrics(20.0))

    summary = publish_run(config, store, "run-2", FINGERPRINT, _metrics(5.0))

    assert summary["promoted"] is False
    assert "not comparable" in summary["promotion_reason"]
    assert "num_generated (500 vs 1000)" in summary["promotion_reason"]
    assert store.get_json("models/best.json")["run_id"] == "run-1"


def test_list_runs_shows_promotion_state(config, store):
    _write_run(store, "run-1")
    _write_run(store, "run-2")
    publish_run(config, store, "run-1", FINGERPRINT, _metrics(20.0))
    publish_run(config, store, "run-2", FINGERPRINT, _metrics(25.0))

    runs = {run["run_id"]: run for run in list_runs(store)}

    assert runs["run-1"]["promoted"] is True
    assert runs["run-1"]["is_best"] is True
    assert runs["run-1"]["is_latest"] is False
    assert runs["run-2"]["promoted"] is False
    assert runs["run-2"]["is_latest"] is True
    assert "does not beat" in runs["run-2"]["promotion_reason"]


def _publish_concurrently(config, store, run_ids: list[str], fid: float) -> list[dict]:
    """Publish `run_ids` from one thread each, released together by a barrier."""
    barrier = threading.Barrier(len(run_ids))
    results: dict[str, dict] = {}
    errors: list[BaseException] = []

    def publish(run_id: str) -> None:
        barrier.wait()
        try:
            results[run_id] = publish_run(config, store, run_id, FINGERPRINT, _metrics(fid))
        except BaseException as error:  # collected so the test reports it instead of a silent thread death
            errors.append(error)

    threads = [threading.Thread(target=publish, args=(run_id,)) for run_id in run_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return [results[run_id] for run_id in run_ids]


def test_concurrent_promotions_on_local_store_one_winner(config, store):
    run_ids = [f"run-{index}" for index in range(4)]
    for run_id in run_ids:
        _write_run(store, run_id)

    # Equal FIDs: whichever run writes best.json first, no other beats it.
    results = _publish_concurrently(config, store, run_ids, fid=20.0)

    winners = [result["run_id"] for result in results if result["promoted"]]
    assert len(winners) == 1
    assert store.get_json("models/best.json")["run_id"] == winners[0]


def test_retention_keeps_pointer_runs_without_deleting(tmp_path, store):
    config = PipelineConfig.from_mapping({"store_uri": str(store.root), "keep_last_runs": 1})
    for index, fid in enumerate([10.0, 20.0, 30.0]):
        _write_run(store, f"run-{index}")
        publish_run(config, store, f"run-{index}", FINGERPRINT, _metrics(fid))

    assert [run["run_id"] for run in list_runs(store)] == ["run-0", "run-1", "run-2"]


def test_retention_deletes_only_unnamed_old_runs(tmp_path, store):
    config = PipelineConfig.from_mapping({"store_uri": str(store.root), "keep_last_runs": 1, "delete_old_runs": True})
    summaries = []
    for index, fid in enumerate([20.0, 10.0, 30.0, 40.0]):
        _write_run(store, f"run-{index}")
        summaries.append(publish_run(config, store, f"run-{index}", FINGERPRINT, _metrics(fid)))

    assert [run["run_id"] for run in list_runs(store)] == ["run-0", "run-1", "run-3"]
    assert summaries[3]["deleted_runs"] == ["run-2"]
    assert store.list("runs/run-2/") == []
