"""Tests of the tf.data reader over shards prepared from a real Fashion-MNIST slice."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import PipelineConfig
from pipeline.data.fetch import fetch_dataset
from pipeline.data.manifest import Manifest, SplitInfo
from pipeline.data.pixels import to_model_range
from pipeline.data.prepare import prepare_dataset
from pipeline.data.reader import make_dataset, shuffle_buffer_size, steps_per_epoch
from pipeline.data.sources import load_source
from pipeline.data.tfrecord import write_shard
from pipeline.errors import ConfigError, DataError
from pipeline.storage.local import LocalStore


@dataclasses.dataclass
class Fetched:
    directory: Path
    manifest: Manifest


@pytest.fixture(scope="module")
def fetched(tmp_path_factory, fashion_mnist_dir) -> Fetched:
    root = tmp_path_factory.mktemp("reader")
    config = PipelineConfig.from_mapping(
        {"max_train_examples": 512, "max_test_examples": 256, "records_per_shard": 200, "cache_dir": str(root / "cache")}
    )
    store = LocalStore(root / "store")
    summary = prepare_dataset(config, store)
    directory, manifest = fetch_dataset(store, summary["fingerprint"], root / "fetched")
    return Fetched(directory, manifest)


def first_batch(dataset: tf.data.Dataset) -> np.ndarray:
    return next(iter(dataset)).numpy()


def test_make_dataset_batch_shape(fetched):
    images = first_batch(make_dataset(fetched.directory, fetched.manifest, "train", 64, seed=1))

    assert images.shape == (64, 28, 28, 1)
    assert images.dtype == np.float32


def test_make_dataset_model_range(fetched):
    batches = [images.numpy() for images in make_dataset(fetched.directory, fetched.manifest, "train", 64, seed=1)]

    assert min(images.min() for images in batches) >= -1.0
    assert max(images.max() for images in batches) <= 1.0
    assert max(images.max() for images in batches) > min(images.min() for images in batches)


@pytest.mark.parametrize(
    "split, batch_size, drop_remainder, expected",
    [("train", 64, True, 8), ("train", 100, True, 5), ("train", 100, False, 6), ("test", 100, False, 3)],
)
def test_make_dataset_batch_count(fetched, split, batch_size, drop_remainder, expected):
    dataset = make_dataset(fetched.directory, fetched.manifest, split, batch_size, seed=3, drop_remainder=drop_remainder)

    assert sum(1 for _ in dataset) == expected
    assert steps_per_epoch(fetched.manifest, split, batch_size, drop_remainder) == expected


def test_make_dataset_keeps_remainder(fetched):
    dataset = make_dataset(fetched.directory, fetched.manifest, "test", 100, shuffle=False, drop_remainder=False)

    assert [images.shape[0] for images in dataset] == [100, 100, 56]


def test_make_dataset_seed_repeats_first_batch(fetched):
    first = first_batch(make_dataset(fetched.directory, fetched.manifest, "train", 32, seed=7))
    second = first_batch(make_dataset(fetched.directory, fetched.manifest, "train", 32, seed=7))

    assert np.array_equal(first, second)


def test_make_dataset_seeds_differ(fetched):
    first = first_batch(make_dataset(fetched.directory, fetched.manifest, "train", 32, seed=7))
    other = first_batch(make_dataset(fetched.directory, fetched.manifest, "train", 32, seed=8))

    assert not np.array_equal(first, other)


def test_make_dataset_epochs_reshuffle(fetched):
    dataset = make_dataset(fetched.directory, fetched.manifest, "train", 512, seed=7, repeat=True)
    batches = iter(dataset)

    first_epoch = next(batches).numpy()
    second_epoch = next(batches).numpy()

    assert not np.array_equal(first_epoch, second_epoch)
    assert np.array_equal(np.sort(first_epoch, axis=None), np.sort(second_epoch, axis=None))


def test_make_dataset_unshuffled_stored_order(fetched):
    source = load_source("fashion_mnist", "train", 512)
    dataset = make_dataset(fetched.directory, fetched.manifest, "train", 512, shuffle=False, with_labels=True)

    images, labels = next(iter(dataset))

    assert np.array_equal(images.numpy(), to_model_range(source.images).numpy())
    assert np.array_equal(labels.numpy(), source.labels)


def test_make_dataset_with_labels(fetched):
    images, labels = next(iter(make_dataset(fetched.directory, fetched.manifest, "test", 16, seed=0, with_labels=True)))

    assert images.shape == (16, 28, 28, 1)
    assert labels.dtype == tf.int64
    assert labels.shape == (16,)
    assert labels.numpy().min() >= 0
    assert labels.numpy().max() <= 9


def test_make_dataset_repeat(fetched):
    dataset = make_dataset(fetched.directory, fetched.manifest, "train", 64, seed=0, repeat=True)

    assert sum(1 for _ in dataset.take(20)) == 20


def test_make_dataset_corrupted_record(fetched, tmp_path):
    images = np.zeros((3, 28, 27, 1), dtype=np.uint8)
    shard = write_shard(tmp_path / "train-00000-of-00001.tfrecord", images, np.zeros(3, dtype=np.int64))
    manifest = dataclasses.replace(fetched.manifest, splits={"train": SplitInfo(3, [shard])})

    with pytest.raises(tf.errors.InvalidArgumentError, match="corrupted shard") as error:
        list(make_dataset(tmp_path, manifest, "train", 2, shuffle=False))

    assert "train-00000-of-00001.tfrecord" in str(error.value)
    assert "expected 784" in str(error.value)


def test_make_dataset_missing_shard(fetched, tmp_path):
    with pytest.raises(DataError, match="run fetch_dataset"):
        make_dataset(tmp_path, fetched.manifest, "train", 64)


def test_make_dataset_unknown_split(fetched):
    with pytest.raises(DataError, match="validation"):
        make_dataset(fetched.directory, fetched.manifest, "validation", 64)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_make_dataset_invalid_batch_size(fetched, batch_size):
    with pytest.raises(ConfigError, match="batch_size"):
        make_dataset(fetched.directory, fetched.manifest, "train", batch_size)


def test_steps_per_epoch_batch_exceeds_split(fetched):
    with pytest.raises(ConfigError, match="at most 256"):
        steps_per_epoch(fetched.manifest, "test", 300)


def test_shuffle_buffer_size_capped_by_split(fetched):
    assert shuffle_buffer_size(fetched.manifest, "train") == 512


def test_shuffle_buffer_size_large_images(fetched):
    manifest = dataclasses.replace(fetched.manifest, height=64, width=64, channels=3)
    manifest = dataclasses.replace(manifest, splits={"train": SplitInfo(100_000, [])})

    assert shuffle_buffer_size(manifest, "train") == 64 * 1024 * 1024 // (64 * 64 * 3)


def test_make_dataset_flip_mirrors_some_images(fetched):
    source = to_model_range(load_source("fashion_mnist", "train", 512).images).numpy()
    dataset = make_dataset(fetched.directory, fetched.manifest, "train", 512, shuffle=False, flip=True, seed=5)

    images = first_batch(dataset)

    unchanged = [np.array_equal(image, original) for image, original in zip(images, source)]
    mirrored = [np.array_equal(image, original[:, ::-1]) for image, original in zip(images, source)]
    assert all(same or mirror for same, mirror in zip(unchanged, mirrored))
    assert 100 < sum(mirrored) < 412


def test_make_dataset_flip_seeded(fetched):
    def epoch():
        dataset = make_dataset(fetched.directory, fetched.manifest, "train", 64, seed=5, flip=True)
        return np.concatenate([images.numpy() for images in dataset])

    assert np.array_equal(epoch(), epoch())


def test_make_dataset_file_cache_reused(fetched, tmp_path):
    # tf.data writes the cache files only when a pass reaches the end, so both passes read it all.
    cache = tmp_path / "records"
    first = [images.numpy() for images in make_dataset(fetched.directory, fetched.manifest, "test", 100, shuffle=False, cache=cache)]

    again = [images.numpy() for images in make_dataset(fetched.directory, fetched.manifest, "test", 100, shuffle=False, cache=cache)]

    assert list(tmp_path.glob("records*.index"))
    assert np.array_equal(np.concatenate(first), np.concatenate(again))


def test_make_dataset_memory_cache_epochs(fetched):
    dataset = make_dataset(fetched.directory, fetched.manifest, "test", 256, seed=2, cache=True, repeat=True)
    batches = iter(dataset)

    first_epoch, second_epoch = next(batches).numpy(), next(batches).numpy()

    assert np.array_equal(np.sort(first_epoch, axis=None), np.sort(second_epoch, axis=None))


def test_make_dataset_deterministic_whole_epoch(fetched):
    def epoch():
        dataset = make_dataset(fetched.directory, fetched.manifest, "train", 128, seed=11, deterministic=True)
        return np.concatenate([images.numpy() for images in dataset])

    assert np.array_equal(epoch(), epoch())


def test_make_dataset_small_shuffle_buffer(fetched):
    dataset = make_dataset(fetched.directory, fetched.manifest, "train", 64, seed=1, shuffle_buffer=1)

    assert sum(1 for _ in dataset) == 8


@pytest.mark.parametrize("shuffle_buffer", [0, -5, True])
def test_make_dataset_invalid_shuffle_buffer(fetched, shuffle_buffer):
    with pytest.raises(ConfigError, match="shuffle_buffer"):
        make_dataset(fetched.directory, fetched.manifest, "train", 64, shuffle_buffer=shuffle_buffer)
