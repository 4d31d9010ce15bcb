"""An S3 endpoint that goes down in the middle of a run's upload, comes back, and the task is retried.

The test owns a moto server on a fixed loopback port. Stopping it closes the listening socket and
every connection, as a crashed or restarted S3 server would. The objects live in moto's
in-process backend, which survives the stop like a real server's disk does, so the restarted
server on the same port still contains what was uploaded before the outage.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections import Counter

import pytest

from pipeline.config import PipelineConfig
from pipeline.errors import StoreError
from pipeline.layout import run_key
from pipeline.publish import list_runs, publish_run
from pipeline.retention import scan_runs
from pipeline.storage.base import sha256_file
from pipeline.storage.s3 import S3Store

FINGERPRINT = "f" * 16
RUN_ID = "nightly-1"
GENERATOR_BYTES = 20 * 1000 * 1000


class LoopbackS3:
    """A moto S3 server on one fixed loopback port that can be stopped and started again."""

    def __init__(self):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server = None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


@pytest.fixture
def server(s3_env):
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    loopback = LoopbackS3()
    loopback.start()
    yield loopback
    loopback.stop()


@pytest.fixture
def store(server) -> S3Store:
    # Few, short retries: the outage must fail the task in seconds, as Airflow would then retry it.
    return S3Store.from_uri(
        f"s3://test-{uuid.uuid4().hex[:12]}/gan",
        endpoint_url=server.endpoint,
        create_bucket=True,
        max_retries=1,
        connect_timeout_s=1,
        read_timeout_s=5,
    )


@pytest.fixture
def run_files(tmp_path) -> dict[str, os.PathLike]:
    """The local outputs of a run: name under runs/<run_id>/ -> file."""
    report = {
        "fingerprint": FINGERPRINT,
        "extractor": {"name": "fashion-cnn", "sha256": "e" * 64},
        "metrics": {"fid": {"value": 12.5, "num_real": 1000, "num_generated": 1000}},
    }
    contents = {
        "fixed_latents.npy": os.urandom(4096),
        "samples/epoch-0001.png": os.urandom(2048),
        "report.json": json.dumps(report).encode(),
        "generator.keras": os.urandom(GENERATOR_BYTES),
    }
    files = {}
    for name, content in contents.items():
        path = tmp_path / "run" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        files[name] = path
    return files


def _upload_run(store: S3Store, files: dict, config: PipelineConfig) -> dict:
    """The task under test: upload every output of the run in order, then publish it (run.json last)."""
    for name, path in files.items():
        store.put_file(run_key(RUN_ID, name), path)
    return publish_run(config, store, RUN_ID, FINGERPRINT, {"fid": 12.5, "kid_mean": 0.01})


def _stop_after_first_part(store: S3Store, server: LoopbackS3) -> None:
    """Stop the server once, after the first part of the first multipart upload has been stored."""
    stopped = []

    def stop_once(**_):
        if not stopped:
            stopped.append(True)
            server.stop()

    store.client.meta.events.register("after-call.s3.UploadPart", stop_once)


def _count_uploads(store: S3Store) -> Counter:
    uploads: Counter = Counter()
    for operation in ("PutObject", "CreateMultipartUpload"):
        store.client.meta.events.register(
            f"provide-client-params.s3.{operation}", lambda params, **_: uploads.update([params["Key"]])
        )
    return uploads


@pytest.fixture
def config(tmp_path) -> PipelineConfig:
    return PipelineConfig.from_mapping({"store_uri": str(tmp_path / "unused"), "cache_dir": str(tmp_path / "cache")})


def test_outage_fails_task_naming_endpoint_bucket_key(server, store, run_files, config):
    _stop_after_first_part(store, server)

    with pytest.raises(StoreError) as raised:
        _upload_run(store, run_files, config)

    message = str(raised.value)
    assert server.endpoint in message
    assert f"{store.bucket}/gan/runs/{RUN_ID}/generator.keras" in message


def test_outage_leaves_run_incomplete(server, store, run_files, config):
    _stop_after_first_part(store, server)
    with pytest.raises(StoreError):
        _upload_run(store, run_files, config)

    server.start()

    assert scan_runs(store).incomplete == [RUN_ID]
    assert list_runs(store) == []
    assert not store.exists("models/latest.json")
    assert not store.exists(run_key(RUN_ID, "generator.keras"))
    # The client could not abort its multipart upload while the server was down.
    assert len(store.unfinished_uploads(run_key(RUN_ID, "generator.keras"))) == 1


def test_retry_after_outage_completes_run(server, store, run_files, config):
    _stop_after_first_part(store, server)
    with pytest.raises(StoreError):
        _upload_run(store, run_files, config)
    server.start()

    _upload_run(store, run_files, config)

    record = store.get_json(run_key(RUN_ID, "run.json"))
    recorded = {entry["key"]: entry["sha256"] for entry in record["objects"]}
    expected = {run_key(RUN_ID, name): sha256_file(path) for name, path in run_files.items()}
    assert recorded == expected
    assert [run["run_id"] for run in list_runs(store)] == [RUN_ID]
    assert store.get_json("models/best.json")["run_id"] == RUN_ID


def test_retry_after_outage_leaves_no_extra_objects(server, store, run_files, config):
    _stop_after_first_part(store, server)
    with pytest.raises(StoreError):
        _upload_run(store, run_files, config)
    server.start()

    _upload_run(store, run_files, config)

    keys = [info.key for info in store.list("")]
    expected = {run_key(RUN_ID, name) for name in run_files} | {
        run_key(RUN_ID, "run.json"), "models/best.json", "models/latest.json"
    }
    assert sorted(keys) == sorted(expected)
    assert store.unfinished_uploads() == []
    assert store.client.head_object(Bucket=store.bucket, Key=f"gan/runs/{RUN_ID}/generator.keras")[
        "ContentLength"
    ] == GENERATOR_BYTES


def test_retry_after_outage_skips_uploaded_files(server, store, run_files, config):
    _stop_after_first_part(store, server)
    with pytest.raises(StoreError):
        _upload_run(store, run_files, config)
    server.start()
    uploads = _count_uploads(store)

    _upload_run(store, run_files, config)

    assert uploads[f"gan/runs/{RUN_ID}/fixed_latents.npy"] == 0
    assert uploads[f"gan/runs/{RUN_ID}/samples/epoch-0001.png"] == 0
    assert uploads[f"gan/runs/{RUN_ID}/generator.keras"] == 1


def test_outage_during_publish_then_retry(server, store, run_files, config):
    for name, path in run_files.items():
        store.put_file(run_key(RUN_ID, name), path)
    server.stop()

    with pytest.raises(StoreError, match=server.endpoint):
        publish_run(config, store, RUN_ID, FINGERPRINT, {"fid": 12.5})
    server.start()
    summary = publish_run(config, store, RUN_ID, FINGERPRINT, {"fid": 12.5})

    assert summary["promoted"] is True
    assert store.get_json(run_key(RUN_ID, "run.json"))["promotion"]["promoted"] is True
