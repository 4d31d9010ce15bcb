"""Image folders as a source: every PNG, JPEG, BMP, GIF and WebP file below a directory.

Layout:

    <directory>/[train|test/]<class>/.../<image>   labelled: the first sub-folder names the class
    <directory>/[train|test/]<image>               unlabelled

With both `train/` and `test/` sub-folders they are the splits. Otherwise every file is assigned
to a split by the hash of its relative path (see `in_test_split`), so `test_fraction` of them form
the test split. Files are read in sorted path order; class names are sorted and numbered from 0.
A file that cannot be decoded is skipped and listed with the reason.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from pipeline.config import DataConfig
from pipeline.data.images import ImageSpec, decode_image_file, oriented_size
from pipeline.data.source_data import UNLABELLED, SourceData, in_test_split, make_source_data, resolve_spec
from pipeline.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")

# Folder sources default to RGB, because one grayscale file among colour ones is common.
_DEFAULT_CHANNELS = 3

_LOG_INTERVAL_S = 5.0


def load_image_folder(directory: Path, split: str, limit: int | None, options: DataConfig) -> SourceData:
    """Load and normalise `split` of the image folder `directory`, keeping the first `limit` files.

    Raises DataError when the directory is missing or contains no image files for the split.
    """
    if not directory.is_dir():
        raise DataError(f"image folder {directory} not found: set source to 'folder:<directory>' of an existing directory")

    files, split_root = _split_files(directory, split, options.test_fraction)
    if not files:
        raise DataError(
            f"image folder {directory} contains no {split} images with the suffixes {list(IMAGE_SUFFIXES)}: "
            "add image files, give it train/ and test/ sub-folders, or raise test_fraction for a small folder"
        )

    class_names = sorted({_class_name(path, split_root) for path in files})
    files = files[:limit]
    images, labels, skipped = _decode_files(files, split_root, class_names, options, f"{directory} ({split})")
    logger.info(
        "image folder %s (%s): decoded %d images, skipped %d files", directory, split, len(images), len(skipped)
    )
    return make_source_data(images, labels, class_names, origin=f"{directory} ({split})", skipped=skipped)


def _split_files(directory: Path, split: str, test_fraction: float) -> tuple[list[Path], Path]:
    """Return the split's image files in sorted order, and the folder their class names are relative to."""
    if (directory / "train").is_dir() and (directory / "test").is_dir():
        return _image_files(directory / split), directory / split

    files = _image_files(directory)
    keys = [path.relative_to(directory).as_posix() for path in files]
    held_out = in_test_split(keys, test_fraction)
    split_files = [path for path, is_test in zip(files, held_out) if is_test == (split == "test")]
    return split_files, directory


def _image_files(directory: Path) -> list[Path]:
    """Return every file below `directory` with an image suffix (any case) in sorted path order, hidden ones excluded."""
    return sorted(
        path
        for path in directory.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(directory).parts)
    )


def _class_name(path: Path, split_root: Path) -> str:
    parts = path.relative_to(split_root).parts
    return parts[0] if len(parts) > 1 else UNLABELLED


def _decode_files(
    files: list[Path], split_root: Path, class_names: list[str], options: DataConfig, origin: str
) -> tuple[np.ndarray, np.ndarray, list[dict[str, str]]]:
    """Decode and normalise every file; return images, labels and the skipped files with reasons."""
    # NOTE: a split's decoded images are all held in memory before shards are written, so a folder
    # whose normalised images exceed the worker's memory cannot be prepared yet.
    label_of = {name: index for index, name in enumerate(class_names)}
    spec = None
    images, labels, skipped = [], [], []
    started = last_log = time.monotonic()

    for index, path in enumerate(files):
        relative = path.relative_to(split_root).as_posix()
        try:
            content = path.read_bytes()
            if spec is None:
                spec = _spec_from_first_image(content, relative, options)
            images.append(decode_image_file(content, spec, relative))
        except (DataError, OSError) as error:
            skipped.append({"file": relative, "reason": str(error)})
            continue
        labels.append(label_of[_class_name(path, split_root)])

        now = time.monotonic()
        if now - last_log >= _LOG_INTERVAL_S:
            last_log = now
            rate = (index + 1) / (now - started)
            logger.info(
                "%s: decoded %d/%d files, %.0f images/s, ETA %.0f s",
                origin, index + 1, len(files), rate, (len(files) - index - 1) / rate,
            )

    if not images:
        return np.zeros((0, 1, 1, 1), dtype=np.uint8), np.zeros(0, dtype=np.int64), skipped
    return np.stack(images), np.array(labels, dtype=np.int64), skipped


def _spec_from_first_image(content: bytes, name: str, options: DataConfig) -> ImageSpec:
    """Resolve the spec, taking a missing height or width from this image's size after EXIF rotation."""
    if options.height and options.width:
        return resolve_spec(options, options.height, options.width, _DEFAULT_CHANNELS)
    height, width = oriented_size(content, name)
    return resolve_spec(options, height, width, _DEFAULT_CHANNELS)
