"""Reader of IDX files, the array format of MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number, one big-endian uint32 per dimension, then the values in
row-major order, big-endian. The magic is two zero bytes, a type code and the number of dimensions.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from pipeline.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"

# IDX type code -> big-endian numpy dtype.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, gzipped or not, into an array in native byte order.

    Gzip is detected from the first two bytes, whatever the file name. Raises DataError naming the
    file when it is not gzip-readable, its magic is not IDX, or the payload length differs from
    the product of the dimensions times the item size (a truncated file or trailing bytes).
    """
    path = Path(path)
    content = _read_content(path)

    dtype, shape, header_bytes = _parse_header(path, content)

    expected_bytes = math.prod(shape) * dtype.itemsize
    payload_bytes = len(content) - header_bytes
    if payload_bytes != expected_bytes:
        raise DataError(
            f"IDX file {path} has {payload_bytes} bytes of data, expected {expected_bytes} "
            f"for shape {shape} of {dtype.name}: the file is truncated or corrupted; download it again"
        )

    values = np.frombuffer(content, dtype=dtype, offset=header_bytes).reshape(shape)
    return values.astype(dtype.newbyteorder("="))


def _read_content(path: Path) -> bytes:
    """Return the file's bytes, decompressed when they start with the gzip magic."""
    try:
        content = path.read_bytes()
    except OSError as error:
        raise DataError(f"cannot read IDX file {path}: {error}") from error

    if not content.startswith(GZIP_MAGIC):
        return content
    try:
        return gzip.decompress(content)
    except (EOFError, OSError, zlib.error) as error:
        raise DataError(
            f"IDX file {path} starts like gzip but cannot be decompressed ({error}): "
            "the file is truncated or corrupted; download it again"
        ) from error


def _parse_header(path: Path, content: bytes) -> tuple[np.dtype, tuple[int, ...], int]:
    """Return the dtype, the shape and the header length in bytes; raise DataError on a bad magic."""
    if len(content) < 4 or content[0:2] != b"\x00\x00" or content[2] not in IDX_DTYPES or content[3] == 0:
        codes = ", ".join(f"0x{code:02X}" for code in IDX_DTYPES)
        raise DataError(
            f"{path} is not an IDX file: its magic is {content[:4].hex() or 'empty'}, expected two zero "
            f"bytes, a type code ({codes}) and a dimension count of at least 1"
        )

    ndim = content[3]
    header_bytes = 4 + 4 * ndim
    if len(content) < header_bytes:
        raise DataError(
            f"IDX file {path} is truncated: its magic announces {ndim} dimensions, which need a "
            f"{header_bytes}-byte header, but the file has {len(content)} bytes"
        )

    shape = tuple(int(size) for size in np.frombuffer(content, dtype=">u4", count=ndim, offset=4))
    return IDX_DTYPES[content[2]], shape, header_bytes
