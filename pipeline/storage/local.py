"""Artifact store in a local directory: the embedded default, no server needed."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
from pathlib import Path

from pipeline.errors import StoreError
from pipeline.files import mkstemp_like_open
from pipeline.storage.base import ArtifactStore, ObjectInfo, VersionedObject, check_key, sha256_file

logger = logging.getLogger(__name__)


class LocalStore(ArtifactStore):
    """Objects are files under `root`. Writes go to a temporary file that is then renamed.

    A missing `root` is created unless `create` is false. Then StoreError is raised, so a reader
    given a mistyped path fails instead of reading an empty store.
    """

    def __init__(self, root: str | Path, create: bool = True):
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"store path {self.root} is not a directory: set store_uri to a directory")
        if not create and not self.root.exists():
            raise StoreError(
                f"store directory {self.root} not found: check store_uri, or run a pipeline step that writes "
                "to this store first"
            )
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"cannot create store directory {self.root}: {error}") from error

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _write_atomic(self, key: str, write) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = mkstemp_like_open(target.parent, f".{target.name}.", ".tmp")
        try:
            with os.fdopen(handle, "wb") as output:
                write(output)
                output.flush()
                os.fsync(output.fileno())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def put_file(self, key: str, path: str | Path) -> None:
        size = Path(path).stat().st_size
        if self._holds(key, size, lambda: sha256_file(path)):
            logger.debug("skipped writing %s because the store already contains the same content", key)
            return

        with open(path, "rb") as source:
            self._write_atomic(key, lambda output: shutil.copyfileobj(source, output))

    def put_bytes(self, key: str, data: bytes) -> None:
        if self._holds(key, len(data), lambda: hashlib.sha256(data).hexdigest()):
            logger.debug("skipped writing %s because the store already contains the same content", key)
            return

        self._write_atomic(key, lambda output: output.write(data))

    def sha256(self, key: str) -> str:
        return sha256_file(self._require(key))

    def get_versioned(self, key: str) -> VersionedObject | None:
        """Return the content of `key` with its sha256 as the version token, or None when missing."""
        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        return VersionedObject(data=data, version=hashlib.sha256(data).hexdigest())

    def put_bytes_if(self, key: str, data: bytes, expected_version: str | None) -> bool:
        """Compare and write under an exclusive `flock` on a hidden `.<name>.lock` file next to `key`.

        Every writer of this store, in any thread or process on a machine that shares the
        directory, takes the same lock, so the check and the rename cannot interleave.
        """
        # NOTE: flock is advisory and not reliable on every network file system (NFS before v4).
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        lock_path = target.with_name(f".{target.name}.lock")
        with open(lock_path, "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                current = self.get_versioned(key)
                current_version = None if current is None else current.version
                if current_version != expected_version:
                    return False
                self._write_atomic(key, lambda output: output.write(data))
                return True
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _holds(self, key: str, size: int, digest) -> bool:
        """Return whether `key` exists with `size` bytes and the sha256 that `digest()` computes."""
        target = self._path(key)
        if not target.is_file() or target.stat().st_size != size:
            return False
        return sha256_file(target) == digest()

    def get_file(self, key: str, path: str | Path) -> Path:
        source = self._require(key)
        destination = Path(path)
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(destination.name + ".partial")
        shutil.copyfile(source, partial)
        os.replace(partial, destination)
        return destination

    def get_bytes(self, key: str) -> bytes:
        return self._require(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        objects = []
        for path in self.root.rglob("*"):
            if not path.is_file() or path.name.startswith("."):
                continue
            key = path.relative_to(self.root).as_posix()
            if key.startswith(prefix):
                objects.append(ObjectInfo(key=key, size=path.stat().st_size))
        return sorted(objects, key=lambda info: info.key)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def location(self, key: str) -> str:
        return str(self._path(key))

    def _require(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise StoreError(f"object {key!r} not found in store {self.uri}")
        return path
