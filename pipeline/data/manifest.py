"""The manifest of a prepared dataset, and the fingerprint that names it.

`manifest.json` lists every shard of every split with its record count, sha256 and size, so a
consumer on another machine can verify what it downloaded. It is written last: a dataset prefix
without it is incomplete.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import DataError
from pipeline.files import mkstemp_like_open

SCHEMA_VERSION = 1

# Version of the record layout that pipeline.data.tfrecord writes (feature names, dtypes, HWC order).
# It is part of every fingerprint, so bumping it invalidates datasets prepared with the old layout.
RECORD_FORMAT_VERSION = 1

FINGERPRINT_HEX_CHARS = 20


@dataclass(frozen=True)
class ShardInfo:
    """One TFRecord file of a split; `file` is relative to the dataset directory or prefix."""

    file: str
    num_records: int
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class SplitInfo:
    """The shards of one split, in record order."""

    num_records: int
    shards: list[ShardInfo]


@dataclass(frozen=True)
class Manifest:
    """Description of a prepared dataset: image shape, label names, shards and the settings used.

    `skipped` lists {"split", "file", "reason"} for every source file that could not be decoded.
    """

    fingerprint: str
    source: str
    height: int
    width: int
    channels: int
    label_names: list[str]
    splits: dict[str, SplitInfo]
    settings: dict[str, Any] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    def split(self, name: str) -> SplitInfo:
        """Return the split `name`; raise DataError listing the splits the manifest has."""
        if name not in self.splits:
            raise DataError(
                f"dataset {self.fingerprint} has no split {name!r}; its splits are {sorted(self.splits)}"
            )
        return self.splits[name]

    def save(self, path: str | Path) -> None:
        """Write the manifest as JSON to `path`, through a temporary file that is then renamed."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = mkstemp_like_open(path.parent, f".{path.name}.", ".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as output:
                json.dump(self.to_dict(), output, indent=2, sort_keys=True)
                output.write("\n")
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> "Manifest":
        """Read a manifest written by `save`; raise DataError when it is missing or invalid."""
        try:
            values = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise DataError(f"cannot read manifest {path}: {error}") from error
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict; `from_dict` reads it back unchanged."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Manifest":
        """Build a manifest from `to_dict` output; raise DataError on a missing key or another schema."""
        if not isinstance(values, dict):
            raise DataError(f"manifest must be a JSON object, got {type(values).__name__}")

        schema_version = values.get("schema_version")
        if schema_version != SCHEMA_VERSION:
            raise DataError(
                f"manifest schema version {schema_version!r} is not supported, expected {SCHEMA_VERSION}: "
                "prepare the dataset again with this version of the pipeline"
            )

        try:
            splits = {
                name: SplitInfo(
                    num_records=int(split["num_records"]),
                    shards=[ShardInfo(**shard) for shard in split["shards"]],
                )
                for name, split in values["splits"].items()
            }
            return cls(
                fingerprint=values["fingerprint"],
                source=values["source"],
                height=int(values["height"]),
                width=int(values["width"]),
                channels=int(values["channels"]),
                label_names=list(values["label_names"]),
                splits=splits,
                settings=dict(values.get("settings", {})),
                skipped=[dict(entry) for entry in values.get("skipped", [])],
                schema_version=schema_version,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise DataError(f"manifest is missing a key or has an invalid value ({error!r})") from error


def compute_fingerprint(content_digests: dict[str, str], settings: dict[str, Any]) -> str:
    """Return the dataset fingerprint: the first 20 hex chars of a sha256 over canonical JSON.

    The JSON contains the source content digests (one per split), every preprocessing setting and
    RECORD_FORMAT_VERSION, with sorted keys and no whitespace, so the same input and settings give
    the same fingerprint on any machine. Settings must be JSON values (numbers, strings, None).
    """
    canonical = json.dumps(
        {
            "content_digests": content_digests,
            "settings": settings,
            "record_format_version": RECORD_FORMAT_VERSION,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:FINGERPRINT_HEX_CHARS]
