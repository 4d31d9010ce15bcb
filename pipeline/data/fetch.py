"""Local copies of prepared datasets: download and verify the shards a manifest lists.

The local cache of a dataset is `<cache_dir>/datasets/<fingerprint>/`, holding the shards and a
copy of `manifest.json`. A shard is trusted only when its size, sha256 and record count match the
manifest (see pipeline.data.verify).
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

from pipeline.data.manifest import FINGERPRINT_HEX_CHARS, Manifest, ShardInfo
from pipeline.data.verify import shard_problem
from pipeline.errors import ConfigError, DataError
from pipeline.files import mkstemp_like_open
from pipeline.layout import dataset_prefix, manifest_key
from pipeline.storage.base import ArtifactStore

logger = logging.getLogger(__name__)

_FINGERPRINT_PATTERN = re.compile(rf"^[0-9a-f]{{{FINGERPRINT_HEX_CHARS}}}$")


def dataset_directory(cache_dir: str | Path, fingerprint: str) -> Path:
    """Local directory of the dataset `fingerprint` under `cache_dir`."""
    if not isinstance(fingerprint, str) or not _FINGERPRINT_PATTERN.match(fingerprint):
        raise ConfigError(
            "fingerprint", fingerprint, f"must be {FINGERPRINT_HEX_CHARS} lowercase hex characters, as the prepare step returns"
        )
    return Path(cache_dir).expanduser() / "datasets" / fingerprint


def fetch_dataset(store: ArtifactStore, fingerprint: str, cache_dir: str | Path) -> tuple[Path, Manifest]:
    """Make `<cache_dir>/datasets/<fingerprint>/` hold every shard of the dataset; return it and the manifest.

    Shards already present with the manifest's size, sha256 and record count are kept. Missing or
    mismatched ones are downloaded to a temporary file, verified, then renamed into place, so the
    returned directory has passed `verify_dataset`. Raises DataError when the store has no manifest
    for `fingerprint`, or when a downloaded shard still mismatches, naming the shard.
    """
    directory = dataset_directory(cache_dir, fingerprint)
    key = manifest_key(fingerprint)
    if not store.exists(key):
        raise DataError(
            f"dataset with fingerprint {fingerprint} was not prepared in store {store.uri} "
            f"({store.location(key)} not found): run the prepare step first"
        )
    manifest = Manifest.from_dict(store.get_json(key))
    if manifest.fingerprint != fingerprint:
        raise DataError(
            f"manifest {store.location(key)} records fingerprint {manifest.fingerprint}, expected {fingerprint}: "
            f"delete {dataset_prefix(fingerprint)} in the store and run the prepare step again"
        )
    directory.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    downloaded_bytes = 0
    for split in manifest.splits.values():
        for shard in split.shards:
            if shard_problem(directory / shard.file, shard) is None:
                continue
            _download_shard(store, fingerprint, shard, directory)
            downloaded_bytes += shard.size_bytes

    manifest.save(directory / "manifest.json")
    elapsed = time.monotonic() - started
    logger.info(
        "dataset %s is complete in %s (downloaded %d bytes in %.1f s)", fingerprint, directory, downloaded_bytes, elapsed
    )
    return directory, manifest


def _download_shard(store: ArtifactStore, fingerprint: str, shard: ShardInfo, directory: Path) -> None:
    """Download one shard next to its final path, verify it, then rename it into place."""
    key = dataset_prefix(fingerprint) + shard.file
    logger.info("downloading shard %s of dataset %s (%d bytes)", shard.file, fingerprint, shard.size_bytes)
    handle, temporary = mkstemp_like_open(directory, f".{shard.file}.", ".download")
    os.close(handle)
    try:
        store.get_file(key, temporary)
        problem = shard_problem(temporary, shard)
        if problem is not None:
            raise DataError(
                f"shard {shard.file} downloaded from {store.location(key)} does not match the manifest of dataset "
                f"{fingerprint}: {problem}. The stored dataset is corrupted; delete {dataset_prefix(fingerprint)} "
                "in the store and run the prepare step again"
            )
        os.replace(temporary, directory / shard.file)
    finally:
        Path(temporary).unlink(missing_ok=True)
