"""The tf.data input pipeline over the TFRecord shards of a prepared dataset."""

from __future__ import annotations

import functools
import math
import random
from pathlib import Path

import tensorflow as tf

from pipeline.data.manifest import Manifest
from pipeline.data.pixels import to_model_range
from pipeline.data.tfrecord import parse_batch
from pipeline.errors import ConfigError, DataError

# The record shuffle buffer contains about this many bytes of uint8 images, and at least
# _MIN_SHUFFLE_RECORDS records: all of Fashion-MNIST's 60,000 records (47 MB), or about
# 5,460 records of 64x64 RGB images.
_SHUFFLE_BUFFER_BYTES = 64 * 1024 * 1024
_MIN_SHUFFLE_RECORDS = 1024

# Shards read at once while shuffling. It is a constant rather than the CPU count because the
# interleaved order depends on it, and a seeded order must be the same on every machine.
_INTERLEAVE_CYCLE = 8

# Records counted at a time when checking a shard's record count against the manifest.
_COUNT_BLOCK = 256


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
    shuffle_buffer: int | None = None,
    cache: bool | str | Path = False,
    flip: bool = False,
    deterministic: bool | None = None,
) -> tf.data.Dataset:
    """Build batches of real_images, float32 [batch, height, width, channels] in [-1, 1].

    Yields `(images, labels)` with int64 labels when `with_labels` is set. Shards are read
    `_INTERLEAVE_CYCLE` at a time in parallel. When shuffling, shard order and records (in a buffer
    of `shuffle_buffer` records, by default `shuffle_buffer_size`) are shuffled again every epoch,
    and a `seed` makes that sequence repeat exactly. Without shuffling, records come in stored order.
    `repeat` makes the dataset endless.

    `cache` keeps the serialised records after the first pass, so later passes skip the shard files
    and keep the first pass's shard order. True caches in memory. A path caches in files with that
    prefix, which later datasets built with the same path reuse. `flip` mirrors each image left-right with
    probability 1/2, drawn from `seed` and the batch index. `deterministic` fixes the element order
    under parallelism; None means deterministic when `seed` is set or `shuffle` is off.
    The train step passes `flip` from the `flip` setting and does not use `cache`.

    Errors raised while iterating name the shard. tf.errors.InvalidArgumentError is raised for a
    record whose image is not height * width * channels bytes. It is also raised for a shard that
    yields fewer records than the manifest lists, because the file is truncated or a record fails
    its CRC.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError("batch_size", batch_size, "must be a positive integer")
    if shuffle_buffer is not None and (isinstance(shuffle_buffer, bool) or not isinstance(shuffle_buffer, int) or shuffle_buffer < 1):
        raise ConfigError("shuffle_buffer", shuffle_buffer, "must be a positive number of records or None")

    files = shard_paths(directory, manifest, split)
    counts = [shard.num_records for shard in manifest.split(split).shards]
    if deterministic is None:
        deterministic = seed is not None or not shuffle
    height, width, channels = manifest.height, manifest.width, manifest.channels

    shards = tf.data.Dataset.from_tensor_slices((files, tf.constant(counts, dtype=tf.int64)))
    if shuffle:
        shards = shards.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    records = shards.interleave(
        _read_shard,
        cycle_length=_INTERLEAVE_CYCLE if shuffle else 1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    # Records stay serialised until they are batched, because parsing a whole batch at once is
    # several times faster than parsing each record.
    if cache:
        records = records.cache("" if cache is True else str(cache))
    if shuffle:
        buffer = shuffle_buffer or shuffle_buffer_size(manifest, split)
        records = records.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        records = records.repeat()

    # Flips are drawn statelessly from (flip_seed, batch index), so parallel mapping cannot reorder them.
    flip_seed = seed if seed is not None else random.getrandbits(31)
    batches = records.batch(batch_size, drop_remainder=drop_remainder).enumerate()
    batches = batches.map(
        functools.partial(
            _to_model_batch, shape=(height, width, channels), flip=flip, flip_seed=flip_seed, with_labels=with_labels
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
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


def _read_shard(path: tf.Tensor, expected_records: tf.Tensor) -> tf.data.Dataset:
    """Return the shard's records, each paired with the shard path for error messages.

    A read error (DataLossError: truncated file or bad CRC) ends the shard early instead of
    failing without a file name, and a final check then raises InvalidArgumentError naming the
    shard with the number of records read and expected. Records are counted in blocks of
    _COUNT_BLOCK, because a check per record would cost more than reading.
    """
    blocks = tf.data.TFRecordDataset(path).ignore_errors().batch(_COUNT_BLOCK)
    end_marker = tf.data.Dataset.from_tensors((tf.constant(True), tf.zeros([0], dtype=tf.string)))
    marked = blocks.map(lambda block: (tf.constant(False), block)).concatenate(end_marker)

    def count(records_read, element):
        is_end, block = element
        check = tf.debugging.Assert(
            tf.logical_or(tf.logical_not(is_end), tf.equal(records_read, expected_records)),
            [
                "corrupted shard", path, "yielded", records_read, "records, the manifest lists", expected_records,
                "(a truncated file or a record that fails its CRC); delete it and fetch the dataset again",
            ],
        )
        with tf.control_dependencies([check]):
            return records_read + tf.size(block, out_type=tf.int64), element

    checked = marked.scan(tf.constant(0, dtype=tf.int64), count)
    records = checked.filter(lambda is_end, block: tf.logical_not(is_end)).map(lambda is_end, block: block).unbatch()
    return records.map(lambda record: (record, path))


def _to_model_batch(
    index: tf.Tensor,
    batch: tuple[tf.Tensor, tf.Tensor],
    shape: tuple[int, int, int],
    flip: bool,
    flip_seed: int,
    with_labels: bool,
):
    """Parse batch `index` and convert it to the model range, mirroring a random half left-right when `flip`."""
    records, paths = batch
    images, labels = parse_batch(records, paths, *shape)
    if flip:
        draw_seed = tf.stack([tf.constant(flip_seed, dtype=tf.int64), index])
        mirrored = tf.random.stateless_uniform([tf.shape(images)[0], 1, 1, 1], seed=draw_seed) < 0.5
        images = tf.where(mirrored, tf.reverse(images, axis=[2]), images)
    images = to_model_range(images)
    return (images, labels) if with_labels else images
