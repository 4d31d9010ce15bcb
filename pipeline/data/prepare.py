"""The prepare step: load a source, write TFRecord shards, upload them and commit a manifest.

A dataset is named by its fingerprint, which covers the kept source content and the settings in
`preprocessing_settings`. The source string itself is not part of it, so the same images loaded
from Debian's IDX files or from TensorFlow Datasets share one fingerprint. The step is idempotent:
when the store already contains `manifest.json` for the fingerprint, nothing is written. When the
local cache contains a complete copy that passes verification, it is uploaded without being
written again. Otherwise the shards are (re)written and uploaded. The manifest is uploaded last,
because its presence marks a complete dataset.

NOTE: the source is loaded and normalised before the fingerprint is known, so a reused dataset still
costs one decoding pass over the source.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.config import DataConfig, PipelineConfig
from pipeline.data.fetch import dataset_directory
from pipeline.data.manifest import Manifest, SplitInfo, compute_fingerprint
from pipeline.data.images import make_image_spec
from pipeline.data.source_data import SourceData
from pipeline.data.sources import load_source
from pipeline.errors import DataError
from pipeline.layout import dataset_prefix, manifest_key
from pipeline.storage.base import ArtifactStore

logger = logging.getLogger(__name__)

# Skipped files named in an error or warning; the manifest lists all of them.
_LISTED_SKIPPED_FILES = 5


def prepare_dataset(config: PipelineConfig, store: ArtifactStore) -> dict[str, Any]:
    """Prepare train and test shards of `config.data.source` in `store`, or reuse a prepared copy.

    Returns {"fingerprint", "manifest_key", "num_train", "num_test", "height", "width",
    "channels", "reused"}, small enough for an Airflow XCom.
    """
    data = config.data
    started = time.monotonic()
    sources = load_splits(config)
    logger.info(
        "loaded %d train and %d test images of shape %s from source %r in %.1f s",
        len(sources["train"].images), len(sources["test"].images), sources["train"].images.shape[1:],
        data.source, time.monotonic() - started,
    )

    settings = preprocessing_settings(config)
    fingerprint = compute_fingerprint({split: source.content_digest for split, source in sources.items()}, settings)
    key = manifest_key(fingerprint)

    if store.exists(key):
        manifest = Manifest.from_dict(store.get_json(key))
        if manifest.fingerprint != fingerprint:
            raise DataError(
                f"manifest {store.location(key)} records fingerprint {manifest.fingerprint}, expected "
                f"{fingerprint}: delete the prefix {dataset_prefix(fingerprint)} in the store and prepare again"
            )
        logger.info("dataset %s is already prepared at %s; reusing it", fingerprint, store.location(key))
        return _summary(manifest, key, reused=True)

    directory = dataset_directory(config.cache_dir, fingerprint)
    manifest = _verified_local_copy(directory, fingerprint)
    if manifest is None:
        logger.info("preparing dataset %s from source %r with settings %s", fingerprint, data.source, settings)
        manifest = _write_dataset(config, fingerprint, sources, settings)
    _upload_dataset(store, manifest, directory)

    num_images = sum(split.num_records for split in manifest.splits.values())
    elapsed = time.monotonic() - started
    logger.info(
        "prepared dataset %s: %d images in %.1f s (%.0f images/s), manifest %s",
        fingerprint, num_images, elapsed, num_images / max(elapsed, 1e-9), store.location(key),
    )
    return _summary(manifest, key, reused=False)


def load_splits(config: PipelineConfig) -> dict[str, SourceData]:
    """Load and normalise both splits; the test split takes the train split's image shape.

    Raises DataError when a split has no usable image, or when the share of skipped files of a
    split exceeds `max_skipped_fraction`.
    """
    data = config.data
    options = source_options(config)
    train = load_source(data.source, "train", data.max_train_examples, options)
    check_skipped("train", train, data.max_skipped_fraction)

    _, height, width, channels = train.images.shape
    test_options = replace(options, height=height, width=width, channels=channels)
    test = load_source(data.source, "test", data.max_test_examples, test_options)
    check_skipped("test", test, data.max_skipped_fraction)
    return {"train": train, "test": test}


def source_options(config: PipelineConfig) -> DataConfig:
    """Return `config.data`, the reading and normalisation options, after validating its background colour."""
    make_image_spec(1, 1, 1, config.data.resize_mode, config.data.background)  # raises ConfigError before any work
    return config.data


def check_skipped(split: str, source: SourceData, max_skipped_fraction: float) -> None:
    """Raise DataError when `split` has no images, or skipped more than `max_skipped_fraction` of its files.

    The message lists the first skipped files in path order with their reasons.
    """
    skipped = len(source.skipped)
    total = skipped + len(source.images)
    if skipped == 0:
        return

    examples = "; ".join(f"{entry['file']}: {entry['reason']}" for entry in source.skipped[:_LISTED_SKIPPED_FILES])
    if len(source.images) == 0:
        raise DataError(f"the {split} split has no usable image: all {total} files were skipped ({examples})")
    if skipped / total > max_skipped_fraction:
        raise DataError(
            f"{skipped} of {total} {split} files ({skipped / total:.1%}) cannot be decoded, more than "
            f"max_skipped_fraction {max_skipped_fraction:.1%}; first skipped: {examples}. "
            "Fix or remove those files, or raise max_skipped_fraction"
        )
    logger.warning("skipped %d of %d %s files that cannot be decoded; first: %s", skipped, total, split, examples)


def preprocessing_settings(config: PipelineConfig) -> dict[str, Any]:
    """Return every setting that changes the shards' content or split into files; the fingerprint covers them.

    `tfds_data_dir` and `tfds_download` are left out because they only select where to read from, and
    `max_skipped_fraction` because it only decides whether to fail.
    """
    data = config.data
    return {
        "records_per_shard": data.records_per_shard,
        "max_train_examples": data.max_train_examples,
        "max_test_examples": data.max_test_examples,
        "height": data.height,
        "width": data.width,
        "channels": data.channels,
        "resize_mode": data.resize_mode,
        "background": data.background,
        "test_fraction": data.test_fraction,
    }


def _verified_local_copy(directory: Path, fingerprint: str) -> Manifest | None:
    """Return the manifest of a complete, verified local copy of the dataset, or None to write it anew.

    A copy that a killed upload left behind is reused this way instead of being written again.
    """
    from pipeline.data.verify import verify_dataset

    local_manifest = directory / "manifest.json"
    if not local_manifest.is_file():
        return None
    try:
        manifest = Manifest.load(local_manifest)
        if manifest.fingerprint != fingerprint:
            return None
        verify_dataset(directory, manifest)
    except DataError as error:
        logger.warning("local copy of dataset %s in %s is unusable (%s); writing it again", fingerprint, directory, error)
        return None
    logger.info("dataset %s is complete in the local cache %s; uploading it without writing", fingerprint, directory)
    return manifest


def _write_dataset(
    config: PipelineConfig, fingerprint: str, sources: dict[str, SourceData], settings: dict[str, Any]
) -> Manifest:
    """Write every split's shards to the local cache and return the manifest that lists them."""
    from pipeline.data.tfrecord import write_shards

    height, width, channels = _common_image_shape(sources)
    label_names = _common_label_names(sources)
    directory = dataset_directory(config.cache_dir, fingerprint)

    splits = {}
    for split, source in sources.items():
        shards = write_shards(directory, split, source.images, source.labels, config.data.records_per_shard)
        splits[split] = SplitInfo(num_records=len(source.images), shards=shards)

    manifest = Manifest(
        fingerprint=fingerprint,
        source=config.data.source,
        height=height,
        width=width,
        channels=channels,
        label_names=label_names,
        splits=splits,
        settings=settings,
        skipped=[{"split": split, **entry} for split, source in sources.items() for entry in source.skipped],
    )
    manifest.save(directory / "manifest.json")
    return manifest


def _upload_dataset(store: ArtifactStore, manifest: Manifest, directory: Path) -> None:
    """Upload every shard, then the manifest, which commits the dataset."""
    prefix = dataset_prefix(manifest.fingerprint)
    started = time.monotonic()
    shards = [shard for split in manifest.splits.values() for shard in split.shards]
    for shard in shards:
        store.put_file(prefix + shard.file, directory / shard.file)

    elapsed = time.monotonic() - started
    total_bytes = sum(shard.size_bytes for shard in shards)
    logger.info(
        "stored %d shards (%d bytes) in store %s under %s in %.1f s (%.1f MB/s)",
        len(shards), total_bytes, store.uri, prefix, elapsed, total_bytes / 1e6 / max(elapsed, 1e-9),
    )
    store.put_json(manifest_key(manifest.fingerprint), manifest.to_dict())


def _common_image_shape(sources: dict[str, SourceData]) -> tuple[int, int, int]:
    """Return (height, width, channels), which every split must share."""
    shapes = {split: tuple(source.images.shape[1:]) for split, source in sources.items()}
    if len(set(shapes.values())) != 1:
        raise DataError(f"splits must share one image shape (height, width, channels), got {shapes}")
    height, width, channels = next(iter(shapes.values()))
    return height, width, channels


def _common_label_names(sources: dict[str, SourceData]) -> list[str]:
    """Return the longest of the splits' label names, which every other list must be a prefix of.

    Names derived from the largest label are shorter in a split that lacks the last classes.
    """
    longest = max((source.label_names for source in sources.values()), key=len)
    for split, source in sources.items():
        if source.label_names != longest[: len(source.label_names)]:
            raise DataError(
                f"splits disagree on label names: {split} has {source.label_names}, another split has {longest}"
            )
    return longest


def _summary(manifest: Manifest, key: str, reused: bool) -> dict[str, Any]:
    return {
        "fingerprint": manifest.fingerprint,
        "manifest_key": key,
        "num_train": manifest.split("train").num_records,
        "num_test": manifest.split("test").num_records,
        "height": manifest.height,
        "width": manifest.width,
        "channels": manifest.channels,
        "reused": reused,
    }
