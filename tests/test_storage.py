"""Artifact store tests: one contract run on LocalStore and on S3Store (real moto server on loopback)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import pytest

from pipeline.config import StoreConfig
from pipeline.errors import ConfigError, StoreError
from pipeline.storage import ArtifactStore, open_store
from pipeline.storage.local import LocalStore
from pipeline.storage.s3 import MIN_PART_BYTES, S3Store


@dataclass
class StoreCase:
    """A store under test and a probe whose value changes whenever `key` is written again."""

    store: ArtifactStore
    write_marker: Callable[[str], object]


def _local_case(tmp_path) -> StoreCase:
    store = LocalStore(tmp_path / "store")

    def write_marker(key: str) -> object:
        status = (store.root / key).stat()
        return status.st_ino, status.st_mtime_ns

    return StoreCase(store, write_marker)


def _s3_case(s3_env) -> StoreCase:
    store = S3Store.from_uri(
        f"s3://{s3_env['bucket']}/artifacts", endpoint_url=s3_env["endpoint_url"], create_bucket=True
    )
    writes: Counter[str] = Counter()

    def count_write(params, **_):
        writes[params["Key"]] += 1

    store.client.meta.events.register("provide-client-params.s3.PutObject", count_write)
    store.client.meta.events.register("provide-client-params.s3.CreateMultipartUpload", count_write)
    return StoreCase(store, lambda key: writes[f"artifacts/{key}"])


@pytest.fixture(params=["local", "s3"])
def case(request, tmp_path) -> StoreCase:
    if request.param == "local":
        return _local_case(tmp_path)
    return _s3_case(request.getfixturevalue("s3_env"))


def _closed_port() -> int:
    """Return a loopback port that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- contract: both stores ---------------------------------------------------------------------


def test_put_bytes_round_trip(case):
    case.store.put_bytes("runs/r1/metrics.jsonl", b'{"step": 1}\n')

    assert case.store.get_bytes("runs/r1/metrics.jsonl") == b'{"step": 1}\n'


def test_put_json_round_trip(case):
    case.store.put_json("models/latest.json", {"run_id": "r1", "fid": 12.5})

    assert case.store.get_json("models/latest.json") == {"run_id": "r1", "fid": 12.5}


def test_put_file_get_file_round_trip(case, tmp_path):
    source = tmp_path / "generator.keras"
    source.write_bytes(os.urandom(50_000))

    case.store.put_file("runs/r1/generator.keras", source)
    copy = case.store.get_file("runs/r1/generator.keras", tmp_path / "download" / "nested" / "generator.keras")

    assert copy.read_bytes() == source.read_bytes()
    assert not copy.with_name("generator.keras.partial").exists()


def test_list_filters_by_prefix(case):
    for key in ("runs/a/one.bin", "runs/a/two.bin", "runs/ab/other.bin", "datasets/f/manifest.json"):
        case.store.put_bytes(key, b"xyz")

    listed = case.store.list("runs/a/")

    assert [info.key for info in listed] == ["runs/a/one.bin", "runs/a/two.bin"]
    assert [info.size for info in listed] == [3, 3]


def test_list_without_prefix_returns_every_object(case):
    case.store.put_bytes("b.bin", b"1")
    case.store.put_bytes("a/c.bin", b"22")

    assert [(info.key, info.size) for info in case.store.list()] == [("a/c.bin", 2), ("b.bin", 1)]


def test_list_unknown_prefix_is_empty(case):
    case.store.put_bytes("runs/a/one.bin", b"1")

    assert case.store.list("runs/zzz/") == []


def test_exists_before_and_after_put(case):
    assert not case.store.exists("runs/r1/report.json")

    case.store.put_bytes("runs/r1/report.json", b"{}")

    assert case.store.exists("runs/r1/report.json")


def test_delete_removes_object(case):
    case.store.put_bytes("runs/r1/report.json", b"{}")

    case.store.delete("runs/r1/report.json")

    assert not case.store.exists("runs/r1/report.json")


def test_delete_missing_key_is_no_error(case):
    case.store.delete("runs/never/written.bin")

    assert not case.store.exists("runs/never/written.bin")


def test_sha256_of_bytes_and_file(case, tmp_path):
    data = os.urandom(10_000)
    source = tmp_path / "weights.h5"
    source.write_bytes(data)

    case.store.put_bytes("a.bin", data)
    case.store.put_file("b.bin", source)

    assert case.store.sha256("a.bin") == hashlib.sha256(data).hexdigest()
    assert case.store.sha256("b.bin") == hashlib.sha256(data).hexdigest()


def test_put_file_identical_content_skips_write(case, tmp_path):
    source = tmp_path / "generator.keras"
    source.write_bytes(os.urandom(20_000))
    case.store.put_file("runs/r1/generator.keras", source)
    before = case.write_marker("runs/r1/generator.keras")

    case.store.put_file("runs/r1/generator.keras", source)

    assert case.write_marker("runs/r1/generator.keras") == before


def test_put_file_changed_content_writes(case, tmp_path):
    source = tmp_path / "generator.keras"
    source.write_bytes(b"first version")
    case.store.put_file("runs/r1/generator.keras", source)
    before = case.write_marker("runs/r1/generator.keras")

    source.write_bytes(b"other version")
    case.store.put_file("runs/r1/generator.keras", source)

    assert case.write_marker("runs/r1/generator.keras") != before
    assert case.store.get_bytes("runs/r1/generator.keras") == b"other version"


def test_put_bytes_identical_content_skips_write(case):
    case.store.put_bytes("runs/r1/report.json", b'{"fid": 3.0}')
    before = case.write_marker("runs/r1/report.json")

    case.store.put_bytes("runs/r1/report.json", b'{"fid": 3.0}')

    assert case.write_marker("runs/r1/report.json") == before


def test_put_file_skip_is_logged_at_debug(case, tmp_path, caplog):
    source = tmp_path / "report.json"
    source.write_bytes(b"{}")
    case.store.put_file("runs/r1/report.json", source)

    with caplog.at_level("DEBUG", logger="pipeline.storage"):
        case.store.put_file("runs/r1/report.json", source)

    assert any(record.levelname == "DEBUG" and "skipped" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("operation", ["get_bytes", "get_file", "sha256"])
def test_missing_key_error_names_key(case, tmp_path, operation):
    key = "runs/r1/missing-object.bin"
    call = {
        "get_bytes": lambda: case.store.get_bytes(key),
        "get_file": lambda: case.store.get_file(key, tmp_path / "out.bin"),
        "sha256": lambda: case.store.sha256(key),
    }[operation]

    with pytest.raises(StoreError) as raised:
        call()

    assert key in str(raised.value)
    assert not (tmp_path / "out.bin.partial").exists()


@pytest.mark.parametrize("key", ["", "/abs/path", "runs/../escape", "runs//double"])
def test_invalid_key_rejected(case, key):
    with pytest.raises(StoreError, match="invalid object key"):
        case.store.put_bytes(key, b"x")


# --- S3 only -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bucket", ["Upper-Case", "ab", "under_score", "a..b", "192.168.1.10", "-leading", "xn--punycode", "x" * 64]
)
def test_invalid_bucket_name_raises_config_error(bucket):
    # The endpoint is closed, so any request would fail with StoreError instead of ConfigError.
    with pytest.raises(ConfigError) as raised:
        S3Store.from_uri(f"s3://{bucket}/prefix", endpoint_url=f"http://127.0.0.1:{_closed_port()}")

    assert repr(bucket) in str(raised.value)


def test_invalid_prefix_raises_config_error():
    with pytest.raises(ConfigError, match="prefix"):
        S3Store.from_uri("s3://valid-bucket/a/../b")


def test_missing_bucket_without_create_names_bucket(s3_env):
    store = S3Store.from_uri(f"s3://{s3_env['bucket']}", endpoint_url=s3_env["endpoint_url"])

    with pytest.raises(StoreError) as raised:
        store.put_bytes("a.bin", b"x")

    assert repr(s3_env["bucket"]) in str(raised.value)
    assert s3_env["endpoint_url"] in str(raised.value)
    assert "store_create_bucket=true" in str(raised.value)


def test_missing_bucket_with_create_bucket_works(s3_env):
    store = S3Store.from_uri(f"s3://{s3_env['bucket']}", endpoint_url=s3_env["endpoint_url"], create_bucket=True)

    store.put_bytes("a.bin", b"x")

    assert store.client.head_bucket(Bucket=s3_env["bucket"])["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert store.get_bytes("a.bin") == b"x"


def test_open_store_wires_create_bucket(s3_env):
    config = StoreConfig(uri=f"s3://{s3_env['bucket']}/p", endpoint_url=s3_env["endpoint_url"], create_bucket=True)

    store = open_store(config)
    store.put_bytes("a.bin", b"x")

    assert isinstance(store, S3Store)
    assert store.exists("a.bin")


def test_keys_are_relative_to_prefix(s3_env):
    store = S3Store.from_uri(
        f"s3://{s3_env['bucket']}/team/gan/", endpoint_url=s3_env["endpoint_url"], create_bucket=True
    )
    store.put_bytes("runs/r1/run.json", b"{}")
    store.client.put_object(Bucket=s3_env["bucket"], Key="team/gan2/runs/r1/run.json", Body=b"{}")

    assert store.client.head_object(Bucket=s3_env["bucket"], Key="team/gan/runs/r1/run.json")["ContentLength"] == 2
    assert [info.key for info in store.list("runs/")] == ["runs/r1/run.json"]
    assert store.location("runs/r1/run.json") == f"s3://{s3_env['bucket']}/team/gan/runs/r1/run.json"


def test_put_stores_sha256_metadata(s3_env):
    store = S3Store.from_uri(f"s3://{s3_env['bucket']}", endpoint_url=s3_env["endpoint_url"], create_bucket=True)

    store.put_bytes("a.bin", b"content")

    head = store.client.head_object(Bucket=s3_env["bucket"], Key="a.bin")
    assert head["Metadata"]["sha256"] == hashlib.sha256(b"content").hexdigest()


def test_sha256_without_metadata_hashes_content(s3_env):
    store = S3Store.from_uri(f"s3://{s3_env['bucket']}", endpoint_url=s3_env["endpoint_url"], create_bucket=True)
    store.put_bytes("placeholder.bin", b"")
    store.client.put_object(Bucket=s3_env["bucket"], Key="foreign.bin", Body=b"written by another tool")

    assert store.sha256("foreign.bin") == hashlib.sha256(b"written by another tool").hexdigest()


def test_large_file_uploads_multipart(s3_env, tmp_path):
    store = S3Store.from_uri(
        f"s3://{s3_env['bucket']}",
        endpoint_url=s3_env["endpoint_url"],
        create_bucket=True,
        multipart_threshold_bytes=MIN_PART_BYTES,
    )
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(6 * 1000 * 1000))

    store.put_file("runs/r1/big.bin", source)
    copy = store.get_file("runs/r1/big.bin", tmp_path / "copy.bin")

    etag = store.client.head_object(Bucket=s3_env["bucket"], Key="runs/r1/big.bin")["ETag"].strip('"')
    assert etag.endswith("-2")
    assert copy.read_bytes() == source.read_bytes()
    assert store.sha256("runs/r1/big.bin") == hashlib.sha256(source.read_bytes()).hexdigest()


def test_endpoint_down_raises_store_error_quickly(s3_env):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    store = S3Store.from_uri(
        f"s3://{s3_env['bucket']}", endpoint_url=endpoint, max_retries=1, connect_timeout_s=1, read_timeout_s=1
    )
    started = time.monotonic()

    with pytest.raises(StoreError) as raised:
        store.get_bytes("runs/r1/report.json")

    assert endpoint in str(raised.value)
    assert "runs/r1/report.json" in str(raised.value)
    assert time.monotonic() - started < 5


def test_error_message_has_no_credentials(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-test-value")
    store = S3Store.from_uri(f"s3://{s3_env['bucket']}", endpoint_url=s3_env["endpoint_url"])

    with pytest.raises(StoreError) as raised:
        store.get_bytes("a.bin")

    assert "very-secret-test-value" not in str(raised.value)


def test_client_config_for_custom_endpoint(s3_env):
    store = S3Store.from_uri(f"s3://{s3_env['bucket']}", endpoint_url=s3_env["endpoint_url"], max_retries=2)
    config = store.client.meta.config

    assert config.s3["addressing_style"] == "path"
    assert config.request_checksum_calculation == "when_required"
    assert config.response_checksum_validation == "when_required"
    assert config.retries["mode"] == "adaptive"
    assert config.retries["total_max_attempts"] == 3


# --- Airflow connection ------------------------------------------------------------------------


def _airflow_connection(monkeypatch, conn_id: str, extra: dict) -> None:
    """Define an Airflow connection through its AIRFLOW_CONN_<ID> environment variable."""
    connection = {"conn_type": "aws", "login": "airflow-key-id", "password": "airflow-secret-value", "extra": extra}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))


def test_open_store_uses_airflow_connection(s3_env, monkeypatch, caplog):
    extra = {"endpoint_url": s3_env["endpoint_url"], "region_name": "us-east-1"}
    _airflow_connection(monkeypatch, "artifact_s3", extra)
    config = StoreConfig(uri=f"s3://{s3_env['bucket']}", aws_conn_id="artifact_s3", create_bucket=True)

    with caplog.at_level("DEBUG"):
        store = open_store(config)
        store.put_bytes("a.bin", b"x")

    assert store.endpoint == s3_env["endpoint_url"]
    assert store.get_bytes("a.bin") == b"x"
    assert "airflow-secret-value" not in caplog.text


def test_session_from_airflow_uses_connection_credentials(s3_env, monkeypatch):
    _airflow_connection(monkeypatch, "artifact_s3", {"endpoint_url": s3_env["endpoint_url"]})
    from pipeline.storage.aws_connection import session_from_airflow

    session, endpoint_url = session_from_airflow("artifact_s3")

    assert session.get_credentials().access_key == "airflow-key-id"
    assert endpoint_url == s3_env["endpoint_url"]


def test_unknown_airflow_connection_raises_config_error():
    from pipeline.storage.aws_connection import session_from_airflow

    with pytest.raises(ConfigError, match="no_such_connection"):
        session_from_airflow("no_such_connection")


# --- conditional writes: both stores -----------------------------------------------------------


def test_put_bytes_if_creates_missing_key(case):
    written = case.store.put_bytes_if("models/best.json", b"first", None)

    assert written is True
    assert case.store.get_bytes("models/best.json") == b"first"


def test_put_bytes_if_none_rejects_existing_key(case):
    case.store.put_bytes_if("models/best.json", b"first", None)

    written = case.store.put_bytes_if("models/best.json", b"second", None)

    assert written is False
    assert case.store.get_bytes("models/best.json") == b"first"


def test_put_bytes_if_matching_version_writes(case):
    case.store.put_bytes_if("models/best.json", b"first", None)
    version = case.store.get_versioned("models/best.json").version

    written = case.store.put_bytes_if("models/best.json", b"second", version)

    assert written is True
    assert case.store.get_bytes("models/best.json") == b"second"


def test_put_bytes_if_stale_version_rejected(case):
    case.store.put_bytes_if("models/best.json", b"first", None)
    stale = case.store.get_versioned("models/best.json").version
    case.store.put_bytes_if("models/best.json", b"second", stale)

    written = case.store.put_bytes_if("models/best.json", b"third", stale)

    assert written is False
    assert case.store.get_bytes("models/best.json") == b"second"


def test_get_versioned_missing_key_is_none(case):
    assert case.store.get_versioned("models/best.json") is None


def test_concurrent_conditional_creates_one_winner(case):
    writers = 6
    barrier = threading.Barrier(writers)
    outcomes: list[bool] = []

    def write(index: int) -> None:
        barrier.wait()
        outcomes.append(case.store.put_bytes_if("models/best.json", f"writer {index}".encode(), None))

    threads = [threading.Thread(target=write, args=(index,)) for index in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert outcomes.count(True) == 1
    assert outcomes.count(False) == writers - 1


# --- uploads with the checksum settings for S3-compatible servers ------------------------------


def _record_checksum_headers(store: S3Store) -> list[str]:
    """Collect the names of checksum headers that the client sends, for every request."""
    sent: list[str] = []

    def record(request, **_):
        sent.extend(name for name in request.headers if name.lower().startswith("x-amz-checksum-"))

    store.client.meta.events.register("before-send.s3", record)
    return sent


@pytest.mark.parametrize("size", [1000, 20 * 1000 * 1000], ids=["1KB", "20MB"])
def test_upload_without_default_checksums(s3_env, tmp_path, size):
    store = S3Store.from_uri(f"s3://{s3_env['bucket']}", endpoint_url=s3_env["endpoint_url"], create_bucket=True)
    checksum_headers = _record_checksum_headers(store)
    source = tmp_path / "upload.bin"
    source.write_bytes(os.urandom(size))

    store.put_file("runs/r1/upload.bin", source)

    head = store.client.head_object(Bucket=s3_env["bucket"], Key="runs/r1/upload.bin")
    assert head["ContentLength"] == size
    assert head["Metadata"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert checksum_headers == []


def test_20mb_upload_is_multipart(s3_env, tmp_path):
    store = S3Store.from_uri(f"s3://{s3_env['bucket']}", endpoint_url=s3_env["endpoint_url"], create_bucket=True)
    source = tmp_path / "upload.bin"
    source.write_bytes(os.urandom(20 * 1000 * 1000))

    store.put_file("runs/r1/upload.bin", source)

    etag = store.client.head_object(Bucket=s3_env["bucket"], Key="runs/r1/upload.bin")["ETag"].strip('"')
    assert etag.endswith("-3")
    assert store.unfinished_uploads() == []


def test_rerun_of_uploads_sends_no_data(s3_env, tmp_path):
    store = S3Store.from_uri(f"s3://{s3_env['bucket']}", endpoint_url=s3_env["endpoint_url"], create_bucket=True)
    files = {}
    for name, size in [("small.bin", 1000), ("large.bin", 9 * 1000 * 1000)]:
        files[name] = tmp_path / name
        files[name].write_bytes(os.urandom(size))
    for name, path in files.items():
        store.put_file(f"runs/r1/{name}", path)
    uploads: list[str] = []
    for operation in ("PutObject", "CreateMultipartUpload", "UploadPart"):
        store.client.meta.events.register(
            f"provide-client-params.s3.{operation}", lambda params, **_: uploads.append(params["Key"])
        )

    for name, path in files.items():
        store.put_file(f"runs/r1/{name}", path)

    assert uploads == []


def test_unfinished_upload_of_key_aborted_before_upload(s3_env, tmp_path):
    store = S3Store.from_uri(f"s3://{s3_env['bucket']}", endpoint_url=s3_env["endpoint_url"], create_bucket=True)
    assert store.unfinished_uploads() == []  # creates the bucket
    store.client.create_multipart_upload(Bucket=s3_env["bucket"], Key="runs/r1/large.bin")
    store.client.create_multipart_upload(Bucket=s3_env["bucket"], Key="runs/r1/other.bin")
    source = tmp_path / "large.bin"
    source.write_bytes(os.urandom(9 * 1000 * 1000))

    store.put_file("runs/r1/large.bin", source)

    assert [upload["Key"] for upload in store.unfinished_uploads()] == ["runs/r1/other.bin"]


def test_endpoint_down_retries_bounded(s3_env):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    store = S3Store.from_uri(
        f"s3://{s3_env['bucket']}", endpoint_url=endpoint, max_retries=2, connect_timeout_s=1, read_timeout_s=1
    )
    attempts: list[str] = []
    store.client.meta.events.register("before-send.s3", lambda request, **_: attempts.append(request.url))

    with pytest.raises(StoreError, match=f"s3://{s3_env['bucket']}/runs/r1/generator.keras"):
        store.put_bytes("runs/r1/generator.keras", b"weights")

    assert len(attempts) == 3


def test_open_store_uses_profile(s3_env, tmp_path, monkeypatch):
    credentials = tmp_path / "credentials"
    credentials.write_text("[pipeline]\naws_access_key_id = from-profile\naws_secret_access_key = profile-secret\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    config = StoreConfig(uri=f"s3://{s3_env['bucket']}", endpoint_url=s3_env["endpoint_url"], profile="pipeline")

    store = open_store(config)

    assert store.client._request_signer._credentials.access_key == "from-profile"


def test_open_store_unknown_profile_raises_config_error(s3_env, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    config = StoreConfig(uri=f"s3://{s3_env['bucket']}", endpoint_url=s3_env["endpoint_url"], profile="missing")

    with pytest.raises(ConfigError, match="store_profile"):
        open_store(config)


def test_local_store_files_follow_umask(tmp_path):
    import os
    import stat

    from pipeline.storage.local import LocalStore

    previous = os.umask(0o022)
    try:
        store = LocalStore(tmp_path / "store")
        store.put_bytes("runs/r/report.json", b"{}")
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((tmp_path / "store" / "runs" / "r" / "report.json").stat().st_mode)

    assert mode == 0o644
