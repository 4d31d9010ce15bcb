"""Verification of a local dataset against its manifest: size, sha256 and record count of every shard.

A TFRecord file is a sequence of records, each framed as

    uint64 length (little-endian) | uint32 masked CRC-32C of length | data | uint32 masked CRC-32C of data

so records are counted by walking the length fields, without TensorFlow. The CRCs are not checked
here, because a matching sha256 already proves the bytes are the ones the writer produced.
"""

from __future__ import annotations

import logging
import struct
import time
from pathlib import Path

from pipeline.data.manifest import Manifest, ShardInfo
from pipeline.errors import DataError
from pipeline.storage.base import sha256_file

logger = logging.getLogger(__name__)

_HEADER_BYTES = 12  # uint64 length + uint32 CRC of the length
_FOOTER_BYTES = 4  # uint32 CRC of the data


def count_records(path: str | Path) -> int:
    """Return the number of records in a TFRecord file; raise DataError naming it when it is truncated."""
    path = Path(path)
    size = path.stat().st_size
    count = 0
    offset = 0
    with open(path, "rb") as shard:
        while offset < size:
            header = shard.read(_HEADER_BYTES)
            if len(header) < _HEADER_BYTES:
                raise DataError(f"shard {path.name} is truncated: record {count} has a partial header at byte {offset}")
            (length,) = struct.unpack("<Q", header[:8])
            offset += _HEADER_BYTES + length + _FOOTER_BYTES
            if offset > size:
                raise DataError(
                    f"shard {path.name} is truncated: record {count} needs {length} bytes of data, "
                    f"which the file's {size} bytes do not hold"
                )
            shard.seek(offset)
            count += 1
    return count


def shard_problem(path: str | Path, shard: ShardInfo) -> str | None:
    """Return why the file at `path` is not the shard the manifest describes, or None when it is.

    Checks, in order: presence, size, sha256, then the record count.
    """
    path = Path(path)
    if not path.is_file():
        return f"shard {shard.file} not found in {path.parent}"

    size = path.stat().st_size
    if size != shard.size_bytes:
        kind = "truncated" if size < shard.size_bytes else "longer than written"
        return f"shard {shard.file} has {size} bytes, the manifest lists {shard.size_bytes} ({kind})"

    digest = sha256_file(path)
    if digest != shard.sha256:
        return f"shard {shard.file} has sha256 {digest}, the manifest lists {shard.sha256} (corrupted)"

    try:
        records = count_records(path)
    except DataError as error:
        return str(error)
    if records != shard.num_records:
        return f"shard {shard.file} holds {records} records, the manifest lists {shard.num_records}"
    return None


def verify_dataset(directory: str | Path, manifest: Manifest, splits: list[str] | None = None) -> None:
    """Check every shard of `splits` (all by default) in `directory` against the manifest.

    Raises DataError naming each shard that is missing, truncated, corrupted or miscounted, and
    how to repair the local copy.
    """
    directory = Path(directory)
    started = time.monotonic()
    problems = []
    checked_bytes = 0
    for split in splits or sorted(manifest.splits):
        for shard in manifest.split(split).shards:
            problem = shard_problem(directory / shard.file, shard)
            if problem:
                problems.append(problem)
            checked_bytes += shard.size_bytes

    if problems:
        raise DataError(
            f"dataset {manifest.fingerprint} in {directory} failed verification: {'; '.join(problems)}. "
            "Delete the listed shards and fetch the dataset again (fetch_dataset downloads them), "
            "or prepare it again if the artifact store's copy is damaged too"
        )
    elapsed = time.monotonic() - started
    logger.info(
        "verified dataset %s in %s: %d bytes in %.1f s (%.0f MB/s)",
        manifest.fingerprint, directory, checked_bytes, elapsed, checked_bytes / 1e6 / max(elapsed, 1e-9),
    )
