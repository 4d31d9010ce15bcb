"""Tests of shard verification and of read-time corruption errors, on shards written here."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from pipeline.data.manifest import Manifest, SplitInfo
from pipeline.data.reader import make_dataset
from pipeline.data.tfrecord import write_shards
from pipeline.data.verify import count_records, shard_problem, verify_dataset
from pipeline.errors import DataError
from pipeline.storage.base import sha256_file

NUM_RECORDS = 30
RECORDS_PER_SHARD = 10


@pytest.fixture
def dataset(tmp_path) -> tuple[Path, Manifest]:
    """Three shards of 10 records of 8x8x1 images in tmp_path, and their manifest."""
    images = np.random.default_rng(0).integers(0, 256, size=(NUM_RECORDS, 8, 8, 1), dtype=np.uint8)
    shards = write_shards(tmp_path, "train", images, np.zeros(NUM_RECORDS, dtype=np.int64), RECORDS_PER_SHARD)
    manifest = Manifest(
        fingerprint="0" * 20,
        source="test",
        height=8,
        width=8,
        channels=1,
        label_names=["a"],
        splits={"train": SplitInfo(NUM_RECORDS, shards)},
    )
    return tmp_path, manifest


def shard_path(directory: Path, manifest: Manifest, index: int) -> Path:
    return directory / manifest.splits["train"].shards[index].file


def flip_byte(path: Path, offset: int) -> None:
    content = bytearray(path.read_bytes())
    content[offset] ^= 0xFF
    path.write_bytes(bytes(content))


def with_current_checksums(directory: Path, manifest: Manifest) -> Manifest:
    """Return the manifest with every shard's sha256 and size taken from the files as they are now."""
    shards = [
        dataclasses.replace(shard, sha256=sha256_file(directory / shard.file), size_bytes=(directory / shard.file).stat().st_size)
        for shard in manifest.splits["train"].shards
    ]
    return dataclasses.replace(manifest, splits={"train": SplitInfo(NUM_RECORDS, shards)})


def test_verify_dataset_intact(dataset):
    directory, manifest = dataset

    verify_dataset(directory, manifest)

    assert len(manifest.splits["train"].shards) == 3


def test_verify_dataset_truncated_and_flipped(dataset):
    directory, manifest = dataset
    second, third = shard_path(directory, manifest, 1), shard_path(directory, manifest, 2)
    second.write_bytes(second.read_bytes()[:-100])
    flip_byte(third, 40)

    with pytest.raises(DataError, match="failed verification") as error:
        verify_dataset(directory, manifest)

    assert f"{second.name} has {second.stat().st_size} bytes" in str(error.value)
    assert "truncated" in str(error.value)
    assert f"{third.name} has sha256" in str(error.value)
    assert shard_path(directory, manifest, 0).name not in str(error.value)


def test_verify_dataset_missing_shard(dataset):
    directory, manifest = dataset
    shard_path(directory, manifest, 0).unlink()

    with pytest.raises(DataError, match="not found"):
        verify_dataset(directory, manifest)


def test_count_records(dataset):
    directory, manifest = dataset

    assert count_records(shard_path(directory, manifest, 0)) == RECORDS_PER_SHARD


def test_count_records_truncated(dataset):
    directory, manifest = dataset
    path = shard_path(directory, manifest, 0)
    path.write_bytes(path.read_bytes()[:-3])

    with pytest.raises(DataError, match="truncated") as error:
        count_records(path)

    assert path.name in str(error.value)


def test_shard_problem_record_count(dataset):
    directory, manifest = dataset
    shard = dataclasses.replace(manifest.splits["train"].shards[0], num_records=11)

    assert "holds 10 records, the manifest lists 11" in shard_problem(shard_path(directory, manifest, 0), shard)


def test_read_corruption_hidden_from_checksum(dataset):
    directory, manifest = dataset
    third = shard_path(directory, manifest, 2)
    flip_byte(third, 40)  # inside the first record's data, so its CRC no longer matches
    manifest = with_current_checksums(directory, manifest)
    verify_dataset(directory, manifest)

    with pytest.raises(tf.errors.InvalidArgumentError, match="corrupted shard") as error:
        list(make_dataset(directory, manifest, "train", 5, shuffle=False))

    assert third.name in str(error.value)


def test_read_truncated_shard_names_it(dataset):
    directory, manifest = dataset
    second = shard_path(directory, manifest, 1)
    second.write_bytes(second.read_bytes()[:-100])

    with pytest.raises(tf.errors.InvalidArgumentError, match="corrupted shard") as error:
        list(make_dataset(directory, manifest, "train", 5, seed=3))

    assert second.name in str(error.value)
