"""The result of every source: one split of normalised images with labels, skipped files and a digest."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from pipeline.config import DataConfig
from pipeline.data.images import ImageSpec, make_image_spec, normalize_array
from pipeline.errors import DataError

# Label name of every image of a source without labels (no class sub-folders, no `y` array).
UNLABELLED = "unlabelled"


@dataclass(frozen=True, eq=False)
class SourceData:
    """One split of a source: images uint8 (N, H, W, C), labels int64 (N,), and their digest.

    `content_digest` is the sha256 hex of the kept images and labels, their shapes, the label
    names and the skipped files, so it changes whenever anything written to the dataset would.
    `skipped` lists {"file", "reason"} for every input that could not be decoded.
    """

    images: np.ndarray
    labels: np.ndarray
    label_names: list[str]
    content_digest: str
    skipped: list[dict[str, str]] = field(default_factory=list)


def resolve_spec(options: DataConfig, height: int, width: int, channels: int) -> ImageSpec:
    """Return the spec of `options`, taking the source's height, width and channels where they are None."""
    return make_image_spec(
        options.height or height,
        options.width or width,
        options.channels or channels,
        options.resize_mode,
        options.background,
    )


def normalize_arrays(images: np.ndarray, options: DataConfig, origin: str) -> np.ndarray:
    """Normalise an array of images, (N, H, W) or (N, H, W, C) with C in 1-4, to uint8 (N, h, w, c).

    Arrays that already have the target dtype and shape are returned as they are; others are
    normalised image by image with `normalize_array`.
    """
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] not in (1, 2, 3, 4)):
        raise DataError(f"images of {origin} must have shape (N, H, W) or (N, H, W, C) with C in 1-4, got {images.shape}")

    source_channels = 1 if images.ndim == 3 or images.shape[3] <= 2 else 3
    spec = resolve_spec(options, images.shape[1], images.shape[2], source_channels)
    target = (spec.height, spec.width, spec.channels)

    if images.dtype == np.uint8 and images.ndim == 3 and target == (*images.shape[1:], 1):
        return images[..., np.newaxis]
    if images.dtype == np.uint8 and images.ndim == 4 and tuple(images.shape[1:]) == target:
        return images

    normalized = np.empty((len(images), *target), dtype=np.uint8)
    for index, image in enumerate(images):
        try:
            normalized[index] = normalize_array(image, spec)
        except DataError as error:
            raise DataError(f"image {index} of {origin}: {error}") from error
    return normalized


def make_source_data(
    images: np.ndarray,
    labels: np.ndarray,
    label_names: list[str],
    origin: str,
    skipped: list[dict[str, str]] | None = None,
) -> SourceData:
    """Check normalised uint8 NHWC images and their labels, and digest the content."""
    skipped = list(skipped or [])
    if images.dtype != np.uint8 or images.ndim != 4:
        raise DataError(f"images of {origin} must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    if labels.shape != (len(images),):
        raise DataError(f"{origin} has {len(images)} images but labels of shape {labels.shape}")

    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(label_names)):
        raise DataError(
            f"labels of {origin} range over [{labels.min()}, {labels.max()}], "
            f"expected [0, {len(label_names) - 1}] for {len(label_names)} label names"
        )

    images = np.ascontiguousarray(images)
    return SourceData(images, labels, list(label_names), _digest(images, labels, label_names, skipped), skipped)


def in_test_split(keys: list[str], test_fraction: float) -> np.ndarray:
    """Return a boolean mask: True where `key` hashes into the held-out test share.

    A key's share is the first 8 bytes of sha256(key) read as a fraction of 2**64, so a file keeps
    its split when other files are added or removed, on every machine.
    """
    shares = np.array(
        [int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64 for key in keys],
        dtype=np.float64,
    )
    return shares < test_fraction


def _digest(images: np.ndarray, labels: np.ndarray, label_names: list[str], skipped: list[dict[str, str]]) -> str:
    """sha256 of a JSON header (shapes, label names, skipped files), the image bytes and int64 labels."""
    header = {
        "images_shape": list(images.shape),
        "labels_shape": list(labels.shape),
        "label_names": label_names,
        "skipped": skipped,
    }
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    digest.update(images.tobytes())
    digest.update(labels.astype("<i8").tobytes())
    return digest.hexdigest()
