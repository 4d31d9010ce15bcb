"""Tests of the IDX reader against files written here byte by byte, and Debian's Fashion-MNIST."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.idx import read_idx
from pipeline.errors import DataError

UBYTE = 0x08
INT32 = 0x0C


def idx_bytes(array: np.ndarray, type_code: int) -> bytes:
    """Encode `array` as IDX: magic (0, 0, type, ndim), big-endian uint32 sizes, big-endian values."""
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(5, 4, 3), dtype=np.uint8)


def test_read_idx_raw_round_trip(tmp_path, images):
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(idx_bytes(images, UBYTE))

    values = read_idx(path)

    assert values.dtype == np.uint8
    assert values.shape == (5, 4, 3)
    assert np.array_equal(values, images)


def test_read_idx_gzip_detected_by_magic(tmp_path, images):
    path = tmp_path / "images-without-gz-suffix"
    path.write_bytes(gzip.compress(idx_bytes(images, UBYTE)))

    values = read_idx(path)

    assert np.array_equal(values, images)


def test_read_idx_gzip_round_trip(tmp_path, images):
    path = tmp_path / "images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(images, UBYTE)))

    assert np.array_equal(read_idx(path), images)


def test_read_idx_int32_native_order(tmp_path):
    labels = np.array([1, -2, 70_000], dtype=np.int32)
    path = tmp_path / "labels-idx1-int"
    path.write_bytes(idx_bytes(labels, INT32))

    values = read_idx(path)

    assert values.dtype == np.dtype("=i4")
    assert values.tolist() == [1, -2, 70_000]


def test_read_idx_truncated_payload(tmp_path, images):
    path = tmp_path / "truncated-idx3-ubyte"
    path.write_bytes(idx_bytes(images, UBYTE)[:-1])

    with pytest.raises(DataError, match="expected 60") as error:
        read_idx(path)

    assert str(path) in str(error.value)


def test_read_idx_trailing_bytes(tmp_path, images):
    path = tmp_path / "long-idx3-ubyte"
    path.write_bytes(idx_bytes(images, UBYTE) + b"\x00")

    with pytest.raises(DataError, match="has 61 bytes of data, expected 60"):
        read_idx(path)


def test_read_idx_truncated_header(tmp_path):
    path = tmp_path / "header-idx3-ubyte"
    path.write_bytes(bytes([0, 0, UBYTE, 3, 0, 0, 0, 5]))

    with pytest.raises(DataError, match="16-byte header"):
        read_idx(path)


def test_read_idx_truncated_gzip(tmp_path, images):
    path = tmp_path / "cut-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(images, UBYTE))[:-10])

    with pytest.raises(DataError, match="cannot be decompressed") as error:
        read_idx(path)

    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    "content",
    [b"\x01\x00\x08\x01" + bytes(8), b"\x00\x00\x07\x01" + bytes(8), b"\x00\x00\x08\x00" + bytes(8), b"PK\x03\x04", b""],
    ids=["nonzero-first-byte", "unknown-type-code", "zero-dimensions", "zip-file", "empty-file"],
)
def test_read_idx_bad_magic(tmp_path, content):
    path = tmp_path / "not-idx"
    path.write_bytes(content)

    with pytest.raises(DataError, match="is not an IDX file") as error:
        read_idx(path)

    assert str(path) in str(error.value)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="cannot read IDX file"):
        read_idx(tmp_path / "absent-idx1-ubyte")


def test_read_idx_fashion_mnist_test_labels(fashion_mnist_dir):
    labels = read_idx(Path(fashion_mnist_dir) / "t10k-labels-idx1-ubyte.gz")

    assert labels.shape == (10_000,)
    assert set(np.unique(labels).tolist()) == set(range(10))
