"""TensorFlow Datasets as a source: `tfds:<name>[:<version>]`, read from a configurable data_dir.

A dataset already prepared in the data_dir (`<data_dir>/<name>/<version>/dataset_info.json`) is
read without any network access. Otherwise, when `tfds_download` is set, the builder downloads and
prepares it, which needs a network. When it is not set, or the download fails, the error names
the dataset, its version, the directory looked in and the fix. Downloading is off by default
because tensorflow-datasets 4.9 retries a failed download for minutes before it gives up.
TensorFlow Datasets is imported inside the functions, because importing it takes seconds.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from pipeline.config import DataConfig
from pipeline.data.source_data import UNLABELLED, SourceData, make_source_data, normalize_arrays
from pipeline.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

_TFDS_BATCH = 4096


def load_tfds(name: str, version: str | None, split: str, limit: int | None, options: DataConfig) -> SourceData:
    """Load one split of a TensorFlow Datasets builder with an `image` feature and an optional `label`."""
    import tensorflow_datasets as tfds

    qualified = f"{name}:{version}" if version else name
    try:
        builder = tfds.builder(qualified, data_dir=options.tfds_data_dir)
    except tfds.core.DatasetNotFoundError as error:
        raise ConfigError("source", f"tfds:{qualified}", "names no TensorFlow Datasets builder") from error
    except ValueError as error:  # an unknown or malformed version
        raise ConfigError("source", f"tfds:{qualified}", f"names no available version: {error}") from error

    if not builder.is_prepared():
        _download_and_prepare(builder, name, options.tfds_download)

    features = builder.info.features
    if "image" not in features:
        raise DataError(
            f"TensorFlow Datasets {qualified!r} has the features {sorted(features.keys())}, "
            "but this pipeline needs an 'image' feature"
        )

    split_spec = f"{split}[:{limit}]" if limit else split
    try:
        dataset = builder.as_dataset(split=split_spec, shuffle_files=False)
    except ValueError as error:  # an unknown split
        raise DataError(f"TensorFlow Datasets {qualified!r} has no split {split_spec!r}: {error}") from error

    has_labels = "label" in features
    label_names = list(features["label"].names) if has_labels else [UNLABELLED]
    images, labels = _read_examples(tfds, dataset, has_labels, features["image"].shape, options, qualified)
    # The split slice already limits the count; tfds.testing.mock_data ignores it, hence the cut here.
    return make_source_data(images[:limit], labels[:limit], label_names, origin=f"tfds:{qualified} ({split})")


def _download_and_prepare(builder, name: str, download: bool) -> None:
    """Download and prepare the builder's data when `download` is set; raise DataError with the fix otherwise."""
    missing = f"TensorFlow Datasets {name} version {builder.version} is not prepared in {builder.data_dir}"
    fix = (
        f"On a machine with network access run 'tfds build {name}:{builder.version} --data_dir <directory>' "
        "and set tfds_data_dir to a copy of <directory>, set tfds_download to true where the network is "
        "reachable, or prepare from an 'idx:', 'folder:' or 'npz:' source"
    )
    if not download:
        raise DataError(f"{missing}, and tfds_download is off. {fix}")

    # NOTE: this download path is untested here, because the tests and benchmarks run offline.
    logger.info("%s; downloading it", missing)
    try:
        builder.download_and_prepare()
    except Exception as error:  # download, checksum and extraction failures have many types
        raise DataError(f"{missing}, and downloading it failed ({type(error).__name__}: {error}). {fix}") from error


def _read_examples(tfds, dataset, has_labels: bool, image_shape, options: DataConfig, qualified: str):
    """Return normalised images and int64 labels; images of varying size are normalised one by one."""
    pairs = dataset.map(lambda example: (example["image"], example["label"] if has_labels else 0))
    fixed_shape = None not in image_shape

    images, labels = [], []
    if fixed_shape:
        for batch_images, batch_labels in tfds.as_numpy(pairs.batch(_TFDS_BATCH)):
            images.append(normalize_arrays(batch_images, options, f"tfds:{qualified}"))
            labels.append(np.asarray(batch_labels, dtype=np.int64))
    else:
        for image, label in tfds.as_numpy(pairs):
            images.append(normalize_arrays(image[np.newaxis], options, f"tfds:{qualified}"))
            labels.append(np.asarray([label], dtype=np.int64))
            # Every later image takes the first one's size and channels.
            options = replace(options, height=images[0].shape[1], width=images[0].shape[2], channels=images[0].shape[3])

    if not images:
        raise DataError(f"TensorFlow Datasets {qualified!r} split is empty")
    return np.concatenate(images), np.concatenate(labels)
