"""TFRecord shards of labelled images: the writer, and the batch parser the reader maps.

Each record is a `tf.train.Example` with the features

    image     bytes   raw uint8 pixels in HWC order, height * width * channels bytes
    height    int64
    width     int64
    channels  int64
    label     int64   class index into the manifest's label_names

Changing this layout needs a new `RECORD_FORMAT_VERSION` in pipeline.data.manifest.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from pipeline.data.manifest import ShardInfo
from pipeline.errors import DataError
from pipeline.files import mkstemp_like_open
from pipeline.storage.base import sha256_file

logger = logging.getLogger(__name__)

# Shard progress is logged at INFO at most this often, and at DEBUG for every shard.
_LOG_INTERVAL_S = 5.0

_PARSE_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
}


def shard_file_name(split: str, index: int, count: int) -> str:
    """Name of shard `index` (from 0) of `count`, for example 'train-00002-of-00006.tfrecord'."""
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def encode_example(image: np.ndarray, label: int) -> bytes:
    """Serialise one uint8 HWC image and its label as a tf.train.Example.

    Serialisation is deterministic (map keys sorted), so the same images give byte-identical shards.
    """
    height, width, channels = image.shape
    features = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
        "height": _int64_feature(height),
        "width": _int64_feature(width),
        "channels": _int64_feature(channels),
        "label": _int64_feature(label),
    }
    example = tf.train.Example(features=tf.train.Features(feature=features))
    return example.SerializeToString(deterministic=True)


def write_shards(
    directory: str | Path, split: str, images: np.ndarray, labels: np.ndarray, records_per_shard: int
) -> list[ShardInfo]:
    """Write `images` (uint8 N×H×W×C) and `labels` to ceil(N / records_per_shard) shards, in order.

    Each shard is written under a temporary name in `directory` and renamed when complete, so a
    killed writer leaves no file with a shard's name that lacks records. Existing shards of the
    same name are replaced. Returns the shards' infos in record order.
    """
    if len(images) == 0:
        raise DataError(f"split {split!r} has no images to write")

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    count = math.ceil(len(images) / records_per_shard)
    started = last_log = time.monotonic()

    shards = []
    for index in range(count):
        window = slice(index * records_per_shard, (index + 1) * records_per_shard)
        path = directory / shard_file_name(split, index, count)
        shards.append(write_shard(path, images[window], labels[window]))

        now = time.monotonic()
        written = min((index + 1) * records_per_shard, len(images))
        rate = written / max(now - started, 1e-9)
        level = logging.INFO if now - last_log >= _LOG_INTERVAL_S or index == count - 1 else logging.DEBUG
        if level == logging.INFO:
            last_log = now
        logger.log(
            level,
            "wrote %s (%d records); %s split: %d/%d records written, %.0f images/s, ETA %.0f s",
            path.name, shards[-1].num_records, split, written, len(images), rate,
            (len(images) - written) / rate,
        )
    return shards


def write_shard(path: str | Path, images: np.ndarray, labels: np.ndarray) -> ShardInfo:
    """Write one shard atomically: to a temporary file beside `path`, fsync, then rename."""
    path = Path(path)
    handle, temporary = mkstemp_like_open(path.parent, f".{path.name}.", ".tmp")
    os.close(handle)
    try:
        with tf.io.TFRecordWriter(temporary) as writer:
            for image, label in zip(images, labels):
                writer.write(encode_example(image, int(label)))
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())

        info = ShardInfo(
            file=path.name,
            num_records=len(images),
            sha256=sha256_file(temporary),
            size_bytes=os.path.getsize(temporary),
        )
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return info


def parse_batch(serialized: tf.Tensor, shards: tf.Tensor, height: int, width: int, channels: int):
    """Parse a batch of records into (images uint8 [batch, height, width, channels], labels int64 [batch]).

    `shards` contains each record's file path. Parsing a batch at once is several times faster than
    record by record. Raises tf.errors.InvalidArgumentError naming the shards of the records whose
    image is not height * width * channels bytes, which means a corrupted or foreign shard.
    """
    features = tf.io.parse_example(serialized, _PARSE_FEATURES)

    expected_bytes = height * width * channels
    wrong_size = tf.not_equal(tf.strings.length(features["image"]), expected_bytes)
    check = tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(wrong_size)),
        [
            "corrupted shard",
            tf.boolean_mask(shards, wrong_size)[:1],
            "has a record whose image has",
            tf.boolean_mask(tf.strings.length(features["image"]), wrong_size)[:1],
            f"bytes, expected {expected_bytes} (height {height} * width {width} * channels {channels} "
            "in the manifest); prepare the dataset again",
        ],
    )
    with tf.control_dependencies([check]):
        pixels = tf.io.decode_raw(features["image"], tf.uint8)
    return tf.reshape(pixels, [-1, height, width, channels]), features["label"]


def _int64_feature(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))
