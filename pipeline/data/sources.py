"""Image sources: where the real images of a dataset come from, as uint8 NHWC arrays with labels.

Accepted `source` values:

- `fashion_mnist`: Debian's dataset-fashion-mnist IDX files when FASHION_MNIST_DIR exists,
  otherwise `tfds:fashion_mnist`.
- `idx:<directory>`: MNIST-style IDX files `train-images-idx3-ubyte[.gz]`,
  `train-labels-idx1-ubyte[.gz]`, `t10k-images-idx3-ubyte[.gz]` and `t10k-labels-idx1-ubyte[.gz]`.
- `tfds:<name>[:<version>]`: a TensorFlow Datasets builder with `image` and `label` features.
  It downloads and prepares the data on first use, which needs a network.

TensorFlow Datasets is imported only when a `tfds:` source is loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data.idx import read_idx
from pipeline.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_LABEL_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

SPLITS = ("train", "test")
SOURCE_FORMS = "must be 'fashion_mnist', 'idx:<directory>' or 'tfds:<name>[:<version>]'"

# IDX file name prefix of each split, as MNIST and Fashion-MNIST name their files.
_IDX_PREFIXES = {"train": "train", "test": "t10k"}
_TFDS_BATCH = 4096


@dataclass(frozen=True, eq=False)
class SourceData:
    """One split of a source: images uint8 (N, H, W, C), labels int64 (N,), and their digest.

    `content_digest` is the sha256 hex of the kept images and labels, their shapes and the label
    names, so it changes whenever anything written to the shards would change.
    """

    images: np.ndarray
    labels: np.ndarray
    label_names: list[str]
    content_digest: str


def load_source(source: str, split: str, limit: int | None) -> SourceData:
    """Load `split` ('train' or 'test') of `source`, keeping the first `limit` examples when set.

    Raises ConfigError for an unknown source form, split or limit, and DataError for missing or
    malformed data.
    """
    if split not in SPLITS:
        raise ConfigError("split", split, f"must be one of {list(SPLITS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError("limit", limit, "must be a positive integer or None")

    if source == "fashion_mnist":
        if FASHION_MNIST_DIR.is_dir():
            return load_idx_directory(FASHION_MNIST_DIR, split, limit, FASHION_MNIST_LABEL_NAMES)
        logger.info("%s not found; loading fashion_mnist through TensorFlow Datasets", FASHION_MNIST_DIR)
        return load_tfds("fashion_mnist", None, split, limit)

    kind, _, argument = source.partition(":")
    if kind == "idx" and argument:
        return load_idx_directory(Path(argument).expanduser(), split, limit)
    if kind == "tfds" and argument:
        name, _, version = argument.partition(":")
        if name:
            return load_tfds(name, version or None, split, limit)

    raise ConfigError("source", source, SOURCE_FORMS)


def load_idx_directory(
    directory: Path, split: str, limit: int | None, label_names: list[str] | None = None
) -> SourceData:
    """Load one split from a directory of MNIST-style IDX files.

    Without `label_names`, classes are named '0' to 'K-1', where K - 1 is the largest label of the
    whole split file (not only of the kept examples), so `limit` does not change the names.
    """
    prefix = _IDX_PREFIXES[split]
    images = read_idx(_find_idx_file(directory, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find_idx_file(directory, f"{prefix}-labels-idx1-ubyte"))

    if labels.ndim != 1 or labels.size == 0:
        raise DataError(f"{split} labels in {directory} must be a non-empty 1-D IDX array, got shape {labels.shape}")
    if len(labels) != len(images):
        raise DataError(f"{directory} has {len(images)} {split} images but {len(labels)} {split} labels")
    if label_names is None:
        label_names = [str(label) for label in range(int(labels.max()) + 1)]

    return make_source_data(images[:limit], labels[:limit], label_names, origin=f"{directory} ({split})")


def load_tfds(name: str, version: str | None, split: str, limit: int | None) -> SourceData:
    """Load one split through `tfds.load`, which downloads and prepares the data when absent."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    # NOTE: the download path is untested here (no network). tensorflow-datasets 4.9.10 needs the
    # undeclared package importlib_resources to download, and fails with ModuleNotFoundError without it.
    qualified = f"{name}:{version}" if version else name
    split_spec = f"{split}[:{limit}]" if limit else split
    try:
        dataset, info = tfds.load(qualified, split=split_spec, with_info=True, shuffle_files=False)
    except tfds.core.DatasetNotFoundError as error:
        raise ConfigError("source", f"tfds:{qualified}", f"names no TensorFlow Datasets builder; {SOURCE_FORMS}") from error
    except Exception as error:  # tfds raises many types: download, checksum, missing split, import
        raise DataError(
            f"cannot load TensorFlow Datasets {qualified!r} split {split_spec!r}: {error}. "
            "Check the network and TFDS_DATA_DIR, or prepare from an 'idx:<directory>' source"
        ) from error

    missing = {"image", "label"} - set(info.features.keys())
    if missing:
        raise DataError(
            f"TensorFlow Datasets {qualified!r} lacks the features {sorted(missing)}; "
            f"it has {sorted(info.features.keys())}, and this pipeline needs 'image' and 'label'"
        )

    try:
        batches = list(tfds.as_numpy(dataset.map(lambda example: (example["image"], example["label"])).batch(_TFDS_BATCH)))
    except tf.errors.InvalidArgumentError as error:
        # NOTE: sources whose images differ in size are rejected; resizing is not implemented.
        raise DataError(f"TensorFlow Datasets {qualified!r} images must all have one shape: {error.message}") from error
    if not batches:
        raise DataError(f"TensorFlow Datasets {qualified!r} split {split_spec!r} is empty")

    images = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    return make_source_data(images[:limit], labels[:limit], list(info.features["label"].names), origin=f"tfds:{qualified}")


def make_source_data(images: np.ndarray, labels: np.ndarray, label_names: list[str], origin: str) -> SourceData:
    """Check shapes, dtypes and label range, add the channel axis to grayscale, and digest the content."""
    if images.dtype != np.uint8:
        raise DataError(f"images of {origin} must be uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., np.newaxis]
    if images.ndim != 4:
        raise DataError(f"images of {origin} must have shape (N, H, W) or (N, H, W, C), got {images.shape}")
    if labels.shape != (len(images),):
        raise DataError(f"{origin} has {len(images)} images but labels of shape {labels.shape}")

    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(label_names)):
        raise DataError(
            f"labels of {origin} range over [{labels.min()}, {labels.max()}], "
            f"expected [0, {len(label_names) - 1}] for {len(label_names)} label names"
        )

    images = np.ascontiguousarray(images)
    return SourceData(images, labels, list(label_names), _digest(images, labels, label_names))


def _find_idx_file(directory: Path, name: str) -> Path:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"IDX file {name} or {name}.gz not found in {directory}")


def _digest(images: np.ndarray, labels: np.ndarray, label_names: list[str]) -> str:
    """sha256 of a JSON header (shapes, label names), the image bytes and the labels as little-endian int64."""
    header = {"images_shape": list(images.shape), "labels_shape": list(labels.shape), "label_names": label_names}
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    digest.update(images.tobytes())
    digest.update(labels.astype("<i8").tobytes())
    return digest.hexdigest()
