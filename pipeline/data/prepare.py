"""The prepare step: load a source, write TFRecord shards, upload them and commit a manifest.

A dataset is named by its fingerprint, which covers the kept source content and the settings in
`preprocessing_settings`. The source string itself is not part of it, so the same images loaded
from Debian's IDX files or from TensorFlow Datasets share one fingerprint. The step is idempotent:
when the store already contains `manifest.json` for the fingerprint, nothing is written. Otherwise
the shards are (re)written and uploaded, and the manifest is uploaded last, because its presence
marks a complete dataset.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig
from pipeline.data.fetch import dataset_directory
from pipeline.data.manifest import Manifest, SplitInfo, compute_fingerprint
from pipeline.data.sources import SourceData, load_source
from pipeline.errors import DataError
from pipeline.layout import dataset_prefix, manifest_key
from pipeline.storage.base import ArtifactStore

logger = logging.getLogger(__name__)


def prepare_dataset(config: PipelineConfig, store: ArtifactStore) -> dict[str, Any]:
    """Prepare train and test shards of `config.data.source` in `store`, or reuse a prepared copy.

    Returns {"fingerprint", "manifest_key", "num_train", "num_test", "height", "width",
    "channels", "reused"}, small enough for an Airflow XCom.
    """
    data = config.data
    started = time.monotonic()
    sources = {
        "train": load_source(data.source, "train", data.max_train_examples),
        "test": load_source(data.source, "test", data.max_test_examples),
    }
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

    logger.info("preparing dataset %s from source %r with settings %s", fingerprint, data.source, settings)
    manifest = _write_dataset(config, fingerprint, sources, settings)
    _upload_dataset(store, manifest, dataset_directory(config.cache_dir, fingerprint))

    num_images = sum(split.num_records for split in manifest.splits.values())
    elapsed = time.monotonic() - started
    logger.info(
        "prepared dataset %s: %d images in %.1f s (%.0f images/s), manifest %s",
        fingerprint, num_images, elapsed, num_images / max(elapsed, 1e-9), store.location(key),
    )
    return _summary(manifest, key, reused=False)


def preprocessing_settings(config: PipelineConfig) -> dict[str, Any]:
    """Return every setting that changes the shards' content or split into files; the fingerprint covers them."""
    return {
        "records_per_shard": config.data.records_per_shard,
        "max_train_examples": config.data.max_train_examples,
        "max_test_examples": config.data.max_test_examples,
    }


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
