"""Image sources: where the real images of a dataset come from, as normalised uint8 NHWC arrays with labels.

Accepted `source` values:

- `fashion_mnist`: Debian's dataset-fashion-mnist IDX files when FASHION_MNIST_DIR exists,
  otherwise `tfds:fashion_mnist`.
- `idx:<directory>`: MNIST-style IDX files `train-images-idx3-ubyte[.gz]`,
  `train-labels-idx1-ubyte[.gz]`, `t10k-images-idx3-ubyte[.gz]` and `t10k-labels-idx1-ubyte[.gz]`.
- `tfds:<name>[:<version>]`: a TensorFlow Datasets builder with an `image` and an optional
  `label` feature, read from `tfds_data_dir` (see pipeline.data.tfds_source).
- `folder:<directory>`: PNG, JPEG, BMP, GIF and WebP files, class sub-folders as labels
  (see pipeline.data.folder).
- `npz:<file>`: a NumPy `.npz` file with images `x` and optional integer labels `y`. A share of
  `test_fraction` of them, chosen by the hash of their index, forms the test split.

Every image is normalised by pipeline.data.images to the settings in DataConfig.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.config import DataConfig
from pipeline.data.folder import load_image_folder
from pipeline.data.idx import read_idx
from pipeline.data.source_data import (
    UNLABELLED,
    SourceData,
    in_test_split,
    make_source_data,
    normalize_arrays,
)
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
SOURCE_FORMS = (
    "must be 'fashion_mnist', 'idx:<directory>', 'tfds:<name>[:<version>]', 'folder:<directory>' or 'npz:<file>'"
)

# IDX file name prefix of each split, as MNIST and Fashion-MNIST name their files.
_IDX_PREFIXES = {"train": "train", "test": "t10k"}


def load_source(source: str, split: str, limit: int | None, options: DataConfig | None = None) -> SourceData:
    """Load and normalise `split` ('train' or 'test') of `source`, keeping the first `limit` examples.

    Raises ConfigError for an unknown source form, split or limit, and DataError for missing or
    malformed data.
    """
    options = options or DataConfig()
    if split not in SPLITS:
        raise ConfigError("split", split, f"must be one of {list(SPLITS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError("limit", limit, "must be a positive integer or None")

    if source == "fashion_mnist":
        if FASHION_MNIST_DIR.is_dir():
            return load_idx_directory(FASHION_MNIST_DIR, split, limit, options, FASHION_MNIST_LABEL_NAMES)
        logger.info("%s not found; loading fashion_mnist through TensorFlow Datasets", FASHION_MNIST_DIR)
        return _load_tfds("fashion_mnist", None, split, limit, options)

    kind, _, argument = source.partition(":")
    if kind == "idx" and argument:
        return load_idx_directory(Path(argument).expanduser(), split, limit, options)
    if kind == "folder" and argument:
        return load_image_folder(Path(argument).expanduser(), split, limit, options)
    if kind == "npz" and argument:
        return load_npz(Path(argument).expanduser(), split, limit, options)
    if kind == "tfds" and argument:
        name, _, version = argument.partition(":")
        if name:
            return _load_tfds(name, version or None, split, limit, options)

    raise ConfigError("source", source, SOURCE_FORMS)


def load_idx_directory(
    directory: Path,
    split: str,
    limit: int | None,
    options: DataConfig | None = None,
    label_names: list[str] | None = None,
) -> SourceData:
    """Load one split from a directory of MNIST-style IDX files, gzipped or not.

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

    origin = f"{directory} ({split})"
    images = normalize_arrays(images[:limit], options or DataConfig(), origin)
    return make_source_data(images, labels[:limit], label_names, origin=origin)


def load_npz(path: Path, split: str, limit: int | None, options: DataConfig | None = None) -> SourceData:
    """Load one split of a `.npz` file with images `x` and optional integer labels `y`.

    An example is in the test split when its index hashes into `options.test_fraction` (see
    `in_test_split`). Without `y`, every image has the label 'unlabelled'.
    """
    options = options or DataConfig()
    try:
        with np.load(path, allow_pickle=False) as arrays:
            keys = set(arrays.files)
            images = arrays["x"] if "x" in keys else None
            labels = arrays["y"] if "y" in keys else None
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read .npz file {path}: {error}") from error
    if images is None:
        raise DataError(f".npz file {path} has the arrays {sorted(keys)}, but no images array 'x'")

    if labels is None:
        labels, label_names = np.zeros(len(images), dtype=np.int64), [UNLABELLED]
    elif labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(images):
        raise DataError(
            f".npz file {path}: labels 'y' must be a 1-D integer array of {len(images)} values, "
            f"got {labels.dtype} {labels.shape}"
        )
    else:
        label_names = [str(label) for label in range(int(labels.max()) + 1)] if labels.size else [UNLABELLED]

    held_out = in_test_split([str(index) for index in range(len(images))], options.test_fraction)
    chosen = np.flatnonzero(held_out == (split == "test"))[:limit]
    origin = f"{path} ({split})"
    if chosen.size == 0:
        raise DataError(f".npz file {path} has no {split} images (test_fraction {options.test_fraction})")
    return make_source_data(normalize_arrays(images[chosen], options, origin), labels[chosen], label_names, origin=origin)


def _load_tfds(name: str, version: str | None, split: str, limit: int | None, options: DataConfig) -> SourceData:
    from pipeline.data.tfds_source import load_tfds

    return load_tfds(name, version, split, limit, options)


def _find_idx_file(directory: Path, name: str) -> Path:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"IDX file {name} or {name}.gz not found in {directory}")


