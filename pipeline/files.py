"""Temporary files for atomic writes that end up with the permissions of a normal file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _current_umask() -> int:
    # os.umask can only be read by setting it, so it is set back at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def mkstemp_like_open(directory: str | Path, prefix: str, suffix: str) -> tuple[int, str]:
    """Return (descriptor, path) of a new temporary file in `directory`, with mode 0o666 less the umask.

    tempfile.mkstemp creates files with mode 0o600, so without this a file renamed into place would
    be readable by its owner alone, unlike one written with open().
    """
    handle, path = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=suffix)
    os.fchmod(handle, 0o666 & ~_current_umask())
    return handle, path
