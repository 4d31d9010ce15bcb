"""The tf.data input pipeline over the TFRecord shards of a prepared dataset."""

from __future__ import annotations

import math
from pathlib import Path

import tensorflow as tf

from pipeline.data.manifest import Manifest
from pipeline.data.pixels import to_model_range
from pipeline.data.tfrecord import parse_example
from pipeline.errors import ConfigError, DataError

# The record shuffle buffer contains about this many bytes of uint8 images, and at least
# _MIN_SHUFFLE_RECORDS records: all of Fashion-MNIST's 60,000 records (47 MB), or about
# 5,460 records of 64x64 RGB images.
_SHUFFLE_BUFFER_BYTES = 64 * 1024 * 1024
_MIN_SHUFFLE_RECORDS = 1024

# Shards read at once while shuffling. It is a constant rather than the CPU count because the
# interleaved order depends on it, and a seeded order must be the same on every machine.
_INTERLEAVE_CYCLE = 8


def make_dataset(
    directory: str | Path,
    manifest: Manifest,
    split: str = "train",
    batch_size: int = 64,
    *,
    shuffle: bool = True,
    seed: int | None = None,
    repeat: bool = False,
    drop_remainder: bool = True,
    with_labels: bool = False,
) -> tf.data.Dataset:
    """Build batches of real_images, float32 [batch, height, width, channels] in [-1, 1].

    Yields `(images, labels)` with int64 labels when `with_labels` is set. When shuffling, shard
    order and records are shuffled again every epoch, and a `seed` makes that sequence repeat
    exactly. Without shuffling, records come in stored order. `repeat` makes the dataset
    endless. A record whose image byte length is not height * width * channels raises
    tf.errors.InvalidArgumentError naming the shard when the dataset is iterated.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError("batch_size", batch_size, "must be a positive integer")

    files = shard_paths(directory, manifest, split)
    deterministic = seed is not None or not shuffle
    height, width, channels = manifest.height, manifest.width, manifest.channels

    paths = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        paths = paths.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    records = paths.interleave(
        _read_shard,
        cycle_length=_INTERLEAVE_CYCLE if shuffle else 1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    examples = records.map(
        lambda record, path: parse_example(record, path, height, width, channels),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )

    if shuffle:
        examples = examples.shuffle(shuffle_buffer_size(manifest, split), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        examples = examples.repeat()

    batches = examples.batch(batch_size, drop_remainder=drop_remainder)
    if with_labels:
        batches = batches.map(lambda images, labels: (to_model_range(images), labels), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        batches = batches.map(lambda images, labels: to_model_range(images), num_parallel_calls=tf.data.AUTOTUNE)
    return batches.prefetch(tf.data.AUTOTUNE)


def steps_per_epoch(manifest: Manifest, split: str, batch_size: int, drop_remainder: bool = True) -> int:
    """Return the number of batches in one pass over `split`: N // batch_size, or ceil(N / batch_size).

    Raises ConfigError when `drop_remainder` leaves no batch at all (batch_size > N).
    """
    num_records = manifest.split(split).num_records
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError("batch_size", batch_size, "must be a positive integer")
    if drop_remainder and batch_size > num_records:
        raise ConfigError(
            "batch_size", batch_size, f"must be at most {num_records}, the number of {split} records, to form one full batch"
        )
    return num_records // batch_size if drop_remainder else math.ceil(num_records / batch_size)


def shuffle_buffer_size(manifest: Manifest, split: str) -> int:
    """Return the record shuffle buffer: about 64 MiB of images, at least 1024 records, at most the split."""
    record_bytes = manifest.height * manifest.width * manifest.channels
    buffer_records = max(_SHUFFLE_BUFFER_BYTES // record_bytes, _MIN_SHUFFLE_RECORDS)
    return min(buffer_records, manifest.split(split).num_records)


def shard_paths(directory: str | Path, manifest: Manifest, split: str) -> list[str]:
    """Return the local paths of `split`'s shards in record order; raise DataError if one is missing."""
    directory = Path(directory)
    paths = [directory / shard.file for shard in manifest.split(split).shards]
    if not paths:
        raise DataError(f"split {split!r} of dataset {manifest.fingerprint} lists no shards")

    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} shards of split {split!r} not found in {directory} (first: {missing[0]}): "
            "run fetch_dataset for this fingerprint first"
        )
    return [str(path) for path in paths]


def _read_shard(path: tf.Tensor) -> tf.data.Dataset:
    """Return the shard's records, each paired with the shard path for error messages."""
    return tf.data.TFRecordDataset(path).map(lambda record: (record, path))
