"""The artifact store interface that every step reads from and writes to.

Keys are POSIX-style relative paths such as `runs/<run_id>/report.json`. Every write is atomic from a
reader's point of view: an object either contains the complete new content or does not exist.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import StoreError

_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


@dataclass(frozen=True)
class VersionedObject:
    """The content of an object and the version token that a conditional write compares against.

    The token is opaque to callers: the ETag on S3, the content sha256 in a local directory.
    """

    data: bytes
    version: str


def sha256_file(path: str | Path) -> str:
    """Return the hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_key(key: str) -> str:
    """Reject keys that are empty, absolute or climb out of the store with '..'."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise StoreError(f"invalid object key {key!r}: use a relative path such as 'runs/<run_id>/run.json'")
    return key


class ArtifactStore(ABC):
    """A flat key space of immutable-looking objects: a local directory or an S3 prefix."""

    uri: str

    @abstractmethod
    def put_file(self, key: str, path: str | Path) -> None:
        """Copy a local file to `key`, replacing any previous object atomically.

        When `key` already contains content with the same sha256, nothing is written, so a retried
        task re-uploads nothing.
        """

    @abstractmethod
    def get_file(self, key: str, path: str | Path) -> Path:
        """Copy `key` to a local path (parents created); raise StoreError if it is missing."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write `data` to `key`, replacing any previous object atomically, unless it contains `data` already."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Return the content of `key`; raise StoreError if it is missing."""

    @abstractmethod
    def sha256(self, key: str) -> str:
        """Return the hex sha256 of the content of `key`, or raise StoreError if it is missing."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Return whether `key` exists."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Return every object whose key starts with `prefix`, sorted by key."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; a missing key is not an error."""

    @abstractmethod
    def location(self, key: str) -> str:
        """Return where a person finds `key`: a file path or an `s3://` URI."""

    @abstractmethod
    def get_versioned(self, key: str) -> VersionedObject | None:
        """Return the content of `key` with its version token, or None when `key` does not exist."""

    @abstractmethod
    def put_bytes_if(self, key: str, data: bytes, expected_version: str | None) -> bool:
        """Write `data` to `key` only if `key` still has `expected_version` (None: only if `key` is missing).

        The comparison and the write are one atomic step, so of several writers that read the same
        version exactly one succeeds. Returns True when written, False when another writer changed
        `key` first; the caller then reads it again and decides anew.
        """

    def put_json(self, key: str, value: Any) -> None:
        self.put_bytes(key, encode_json(value))

    def get_json(self, key: str) -> Any:
        data = self.get_bytes(key)
        try:
            return json.loads(data)
        except json.JSONDecodeError as error:
            raise StoreError(f"object {self.location(key)} is not valid JSON: {error}") from error

    def get_json_versioned(self, key: str) -> tuple[Any, str] | None:
        """Return `(value, version)` of the JSON object at `key`, or None when `key` does not exist."""
        current = self.get_versioned(key)
        if current is None:
            return None
        try:
            return json.loads(current.data), current.version
        except json.JSONDecodeError as error:
            raise StoreError(f"object {self.location(key)} is not valid JSON: {error}") from error

    def put_json_if(self, key: str, value: Any, expected_version: str | None) -> bool:
        """Write `value` as JSON with `put_bytes_if`; returns whether it was written."""
        return self.put_bytes_if(key, encode_json(value), expected_version)


def encode_json(value: Any) -> bytes:
    """Encode `value` the way every JSON object of the store is written: indented, sorted keys."""
    return json.dumps(value, indent=2, sort_keys=True).encode() + b"\n"
