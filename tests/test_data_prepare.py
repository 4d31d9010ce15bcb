"""Tests of sources, fingerprints, manifests, the prepare step and fetch, on a real Fashion-MNIST slice."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import DataConfig, PipelineConfig
from pipeline.data import sources
from pipeline.data.fetch import dataset_directory, fetch_dataset
from pipeline.data.manifest import Manifest, ShardInfo, SplitInfo, compute_fingerprint
from pipeline.data.prepare import prepare_dataset, preprocessing_settings
from pipeline.data.sources import FASHION_MNIST_LABEL_NAMES, load_source
from pipeline.errors import ConfigError, DataError
from pipeline.layout import dataset_prefix, manifest_key
from pipeline.storage.base import sha256_file
from pipeline.storage.local import LocalStore

SLICE_SETTINGS = {"max_train_examples": 512, "max_test_examples": 256, "records_per_shard": 200}


@dataclass
class Prepared:
    config: PipelineConfig
    store: LocalStore
    summary: dict
    manifest: Manifest


def make_config(root: Path, **overrides) -> PipelineConfig:
    return PipelineConfig.from_mapping({**SLICE_SETTINGS, "cache_dir": str(root / "cache"), **overrides})


def store_snapshot(store: LocalStore) -> dict[str, tuple[int, int]]:
    """Map every file under the store root, hidden ones included, to (size, mtime in ns)."""
    return {
        path.relative_to(store.root).as_posix(): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in store.root.rglob("*")
        if path.is_file()
    }


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, fashion_mnist_dir) -> Prepared:
    root = tmp_path_factory.mktemp("prepared")
    config = make_config(root)
    store = LocalStore(root / "store")
    summary = prepare_dataset(config, store)
    manifest = Manifest.from_dict(store.get_json(summary["manifest_key"]))
    return Prepared(config, store, summary, manifest)


# Sources


def test_load_source_unknown_source():
    with pytest.raises(ConfigError, match="mnist_typo") as error:
        load_source("mnist_typo", "train", None)

    assert error.value.name == "source"
    assert "idx:<directory>" in error.value.rule


@pytest.mark.parametrize("source", ["idx:", "tfds:", "tfds::1.0.0"])
def test_load_source_empty_argument(source):
    with pytest.raises(ConfigError) as error:
        load_source(source, "train", None)

    assert error.value.value == source


def test_load_source_unknown_split():
    with pytest.raises(ConfigError, match="validation"):
        load_source("fashion_mnist", "validation", None)


def test_load_source_fashion_mnist_slice(fashion_mnist_dir):
    data = load_source("fashion_mnist", "test", 50)

    assert data.images.shape == (50, 28, 28, 1)
    assert data.images.dtype == np.uint8
    assert data.labels.dtype == np.int64
    assert data.label_names == FASHION_MNIST_LABEL_NAMES


def test_load_source_limit_changes_digest(fashion_mnist_dir):
    first = load_source("fashion_mnist", "test", 40)
    again = load_source("fashion_mnist", "test", 40)
    longer = load_source("fashion_mnist", "test", 41)

    assert first.content_digest == again.content_digest
    assert first.content_digest != longer.content_digest


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def write_idx_directory(directory: Path, num_train: int = 6, num_test: int = 4, num_classes: int = 3) -> None:
    rng = np.random.default_rng(1)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", num_train), ("t10k", num_test)):
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, size=(count, 5, 7)))
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", np.arange(count) % num_classes)


def test_load_source_idx_directory(tmp_path):
    write_idx_directory(tmp_path / "digits")

    data = load_source(f"idx:{tmp_path / 'digits'}", "train", None)

    assert data.images.shape == (6, 5, 7, 1)
    assert data.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert data.label_names == ["0", "1", "2"]


def test_load_source_idx_limit_keeps_label_names(tmp_path):
    write_idx_directory(tmp_path / "digits")

    data = load_source(f"idx:{tmp_path / 'digits'}", "train", 2)

    assert data.labels.tolist() == [0, 1]
    assert data.label_names == ["0", "1", "2"]


def test_load_source_idx_missing_file(tmp_path):
    write_idx_directory(tmp_path / "digits")
    (tmp_path / "digits" / "t10k-labels-idx1-ubyte.gz").unlink()

    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_source(f"idx:{tmp_path / 'digits'}", "test", None)


def test_load_source_idx_count_mismatch(tmp_path):
    write_idx_directory(tmp_path / "digits")
    write_idx(tmp_path / "digits" / "train-labels-idx1-ubyte.gz", np.zeros(5))

    with pytest.raises(DataError, match="6 train images but 5 train labels"):
        load_source(f"idx:{tmp_path / 'digits'}", "train", 2)


def test_load_source_tfds_mock():
    tfds = pytest.importorskip("tensorflow_datasets")

    with tfds.testing.mock_data(num_examples=9):
        data = load_source("tfds:fashion_mnist:3.0.1", "train", 5, DataConfig(tfds_download=True))

    assert data.images.shape == (5, 28, 28, 1)
    assert data.labels.dtype == np.int64
    assert data.label_names == FASHION_MNIST_LABEL_NAMES


def test_load_source_fashion_mnist_falls_back_to_tfds(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(sources, "FASHION_MNIST_DIR", tmp_path / "absent")

    with tfds.testing.mock_data(num_examples=3):
        data = load_source("fashion_mnist", "test", None, DataConfig(tfds_download=True))

    assert data.images.shape == (3, 28, 28, 1)


# Fingerprint and manifest


def test_compute_fingerprint_canonical_json():
    # Pins the canonical JSON, so a change in encoding cannot silently rename every dataset.
    canonical = (
        b'{"content_digests":{"test":"bb","train":"aa"},"record_format_version":1,'
        b'"settings":{"max_train_examples":null,"records_per_shard":10}}'
    )

    fingerprint = compute_fingerprint({"train": "aa", "test": "bb"}, {"records_per_shard": 10, "max_train_examples": None})

    assert fingerprint == hashlib.sha256(canonical).hexdigest()[:20]


def test_compute_fingerprint_ignores_key_order():
    first = compute_fingerprint({"train": "aa", "test": "bb"}, {"a": 1, "b": None})
    second = compute_fingerprint({"test": "bb", "train": "aa"}, {"b": None, "a": 1})

    assert first == second


@pytest.mark.parametrize(
    "digests, settings",
    [
        ({"train": "aa", "test": "bc"}, {"records_per_shard": 10}),
        ({"train": "aa", "test": "bb"}, {"records_per_shard": 11}),
        ({"train": "aa", "test": "bb"}, {"records_per_shard": 10, "max_train_examples": 5}),
    ],
    ids=["content", "setting-value", "extra-setting"],
)
def test_compute_fingerprint_changes(digests, settings):
    reference = compute_fingerprint({"train": "aa", "test": "bb"}, {"records_per_shard": 10})

    assert compute_fingerprint(digests, settings) != reference


def test_manifest_json_round_trip(prepared):
    values = json.loads(json.dumps(prepared.manifest.to_dict()))

    assert Manifest.from_dict(values) == prepared.manifest


def test_manifest_rejects_other_schema(prepared):
    values = {**prepared.manifest.to_dict(), "schema_version": 2}

    with pytest.raises(DataError, match="schema version 2"):
        Manifest.from_dict(values)


def test_manifest_rejects_missing_key(prepared):
    values = prepared.manifest.to_dict()
    del values["height"]

    with pytest.raises(DataError, match="height"):
        Manifest.from_dict(values)


# The prepare step


def test_prepare_summary_counts(prepared):
    assert prepared.summary["num_train"] == 512
    assert prepared.summary["num_test"] == 256
    assert prepared.summary["reused"] is False


def test_prepare_summary_is_json(prepared):
    assert json.loads(json.dumps(prepared.summary)) == prepared.summary


def test_prepare_image_shape(prepared):
    shape = (prepared.manifest.height, prepared.manifest.width, prepared.manifest.channels)

    assert shape == (28, 28, 1)
    assert (prepared.summary["height"], prepared.summary["width"], prepared.summary["channels"]) == (28, 28, 1)


def test_prepare_manifest_splits(prepared):
    splits = prepared.manifest.splits

    assert splits["train"].num_records == 512
    assert [shard.num_records for shard in splits["train"].shards] == [200, 200, 112]
    assert splits["test"].num_records == 256
    assert [shard.num_records for shard in splits["test"].shards] == [200, 56]


def test_prepare_shard_names(prepared):
    names = [shard.file for shard in prepared.manifest.splits["train"].shards]

    assert names == [f"train-{index:05d}-of-00003.tfrecord" for index in range(3)]


def test_prepare_manifest_fields(prepared):
    assert prepared.manifest.fingerprint == prepared.summary["fingerprint"]
    assert prepared.manifest.source == "fashion_mnist"
    assert prepared.manifest.label_names == FASHION_MNIST_LABEL_NAMES
    assert prepared.manifest.settings == preprocessing_settings(prepared.config)
    assert prepared.manifest.skipped == []


def test_prepare_stored_shards_match_manifest(prepared):
    prefix = dataset_prefix(prepared.summary["fingerprint"])
    for split in prepared.manifest.splits.values():
        for shard in split.shards:
            stored = prepared.store.location(prefix + shard.file)
            assert sha256_file(stored) == shard.sha256, shard.file
            assert Path(stored).stat().st_size == shard.size_bytes, shard.file


def test_prepare_store_holds_only_dataset(prepared):
    keys = [info.key for info in prepared.store.list()]
    shards = [shard.file for split in prepared.manifest.splits.values() for shard in split.shards]
    prefix = dataset_prefix(prepared.summary["fingerprint"])

    assert sorted(keys) == sorted([prefix + "manifest.json"] + [prefix + name for name in shards])


def test_prepare_local_cache_has_manifest(prepared):
    directory = dataset_directory(prepared.config.cache_dir, prepared.summary["fingerprint"])

    assert Manifest.load(directory / "manifest.json") == prepared.manifest


def test_prepare_twice_reuses(prepared):
    before = store_snapshot(prepared.store)

    summary = prepare_dataset(prepared.config, prepared.store)

    assert summary["fingerprint"] == prepared.summary["fingerprint"]
    assert summary["reused"] is True
    assert store_snapshot(prepared.store) == before


def test_prepare_other_settings_new_fingerprint(prepared, tmp_path):
    config = make_config(tmp_path, records_per_shard=300)

    summary = prepare_dataset(config, prepared.store)

    assert summary["fingerprint"] != prepared.summary["fingerprint"]
    assert summary["reused"] is False


def test_prepare_rewrites_after_killed_attempt(prepared, tmp_path):
    """A store with shards but no manifest (a killed attempt) gets complete shards and a manifest."""
    store = LocalStore(tmp_path / "store")
    prefix = dataset_prefix(prepared.summary["fingerprint"])
    store.put_bytes(prefix + "train-00000-of-00003.tfrecord", b"half written")

    summary = prepare_dataset(make_config(tmp_path), store)

    first_shard = prepared.manifest.splits["train"].shards[0]
    assert summary["reused"] is False
    assert sha256_file(store.location(prefix + first_shard.file)) == first_shard.sha256
    assert store.exists(manifest_key(summary["fingerprint"]))


def test_prepare_unknown_source(tmp_path):
    with pytest.raises(ConfigError, match="imagenet_typo"):
        prepare_dataset(make_config(tmp_path, source="imagenet_typo"), LocalStore(tmp_path / "store"))


# Fetch


def test_fetch_into_empty_cache(prepared, tmp_path):
    fingerprint = prepared.summary["fingerprint"]

    directory, manifest = fetch_dataset(prepared.store, fingerprint, tmp_path / "cache")

    assert directory == tmp_path / "cache" / "datasets" / fingerprint
    assert manifest == prepared.manifest
    for split in manifest.splits.values():
        for shard in split.shards:
            assert sha256_file(directory / shard.file) == shard.sha256, shard.file


def test_fetch_repairs_corrupted_shard(prepared, tmp_path):
    fingerprint = prepared.summary["fingerprint"]
    directory, manifest = fetch_dataset(prepared.store, fingerprint, tmp_path / "cache")
    shard = manifest.splits["test"].shards[1]
    corrupted = bytearray((directory / shard.file).read_bytes())
    corrupted[100] ^= 0xFF
    (directory / shard.file).write_bytes(bytes(corrupted))

    fetch_dataset(prepared.store, fingerprint, tmp_path / "cache")

    assert sha256_file(directory / shard.file) == shard.sha256


def test_fetch_restores_deleted_shard(prepared, tmp_path):
    fingerprint = prepared.summary["fingerprint"]
    directory, manifest = fetch_dataset(prepared.store, fingerprint, tmp_path / "cache")
    shard = manifest.splits["train"].shards[2]
    (directory / shard.file).unlink()

    fetch_dataset(prepared.store, fingerprint, tmp_path / "cache")

    assert sha256_file(directory / shard.file) == shard.sha256


def test_fetch_keeps_intact_shards(prepared, tmp_path):
    fingerprint = prepared.summary["fingerprint"]
    directory, manifest = fetch_dataset(prepared.store, fingerprint, tmp_path / "cache")
    mtimes = {path.name: path.stat().st_mtime_ns for path in directory.glob("*.tfrecord")}

    fetch_dataset(prepared.store, fingerprint, tmp_path / "cache")

    assert {path.name: path.stat().st_mtime_ns for path in directory.glob("*.tfrecord")} == mtimes


def test_fetch_missing_manifest(tmp_path):
    store = LocalStore(tmp_path / "store")

    with pytest.raises(DataError, match="run the prepare step first") as error:
        fetch_dataset(store, "0123456789abcdef0123", tmp_path / "cache")

    assert "0123456789abcdef0123" in str(error.value)
    assert store.uri in str(error.value)


def test_fetch_corrupted_store_shard(prepared, tmp_path):
    fingerprint = prepared.summary["fingerprint"]
    store = LocalStore(tmp_path / "store")
    shutil.copytree(prepared.store.root, store.root, dirs_exist_ok=True)
    shard = prepared.manifest.splits["train"].shards[1]
    store.put_bytes(dataset_prefix(fingerprint) + shard.file, b"not a shard")

    with pytest.raises(DataError, match=shard.file):
        fetch_dataset(store, fingerprint, tmp_path / "cache")

    assert not (tmp_path / "cache" / "datasets" / fingerprint / shard.file).exists()


def test_fetch_invalid_fingerprint(prepared, tmp_path):
    with pytest.raises(ConfigError, match="fingerprint"):
        fetch_dataset(prepared.store, "../escape", tmp_path / "cache")


def test_manifest_default_schema_version():
    shard = ShardInfo(file="train-00000-of-00001.tfrecord", num_records=1, sha256="00", size_bytes=10)
    manifest = Manifest("f" * 20, "fashion_mnist", 28, 28, 1, ["a"], {"train": SplitInfo(1, [shard])})

    assert manifest.to_dict()["schema_version"] == 1


def test_prepare_uploads_verified_local_copy(prepared, tmp_path):
    """A complete local copy (an upload that was killed before the manifest) is uploaded, not rewritten."""
    config = make_config(tmp_path)
    directory = dataset_directory(config.cache_dir, prepared.summary["fingerprint"])
    fetch_dataset(prepared.store, prepared.summary["fingerprint"], config.cache_dir)
    mtimes = {path.name: path.stat().st_mtime_ns for path in directory.glob("*.tfrecord")}
    store = LocalStore(tmp_path / "store")

    summary = prepare_dataset(config, store)

    assert summary["fingerprint"] == prepared.summary["fingerprint"]
    assert {path.name: path.stat().st_mtime_ns for path in directory.glob("*.tfrecord")} == mtimes
    assert store.exists(manifest_key(summary["fingerprint"]))


def test_prepare_rewrites_corrupted_local_copy(prepared, tmp_path):
    config = make_config(tmp_path)
    directory, manifest = fetch_dataset(prepared.store, prepared.summary["fingerprint"], config.cache_dir)
    shard = manifest.splits["train"].shards[0]
    (directory / shard.file).write_bytes(b"damaged")

    prepare_dataset(config, LocalStore(tmp_path / "store"))

    assert sha256_file(directory / shard.file) == shard.sha256
