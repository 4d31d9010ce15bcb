"""Sample grids: images generated from fixed latents, drawn as one PNG per epoch.

The same latents are used for every grid of a run, so consecutive grids show how the same
points of the latent space change as training goes on.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.pixels import to_uint8
from pipeline.errors import TrainingError
from pipeline.storage.base import ArtifactStore

SAMPLE_COUNT = 64

_PNG_CHANNELS = (1, 3, 4)


def make_fixed_latents(seed: int, latent_dim: int, count: int = SAMPLE_COUNT) -> np.ndarray:
    """Return `count` standard normal latents, float32 (count, latent_dim), the same for the same seed."""
    return np.random.default_rng(seed).standard_normal((count, latent_dim)).astype(np.float32)


def load_or_create_fixed_latents(store: ArtifactStore, key: str, seed: int, latent_dim: int) -> np.ndarray:
    """Return the latents stored at `key` (a .npy object), creating and uploading them on the first call.

    Raises TrainingError when the stored array is not float32 (N, latent_dim).
    """
    if not store.exists(key):
        latents = make_fixed_latents(seed, latent_dim)
        buffer = io.BytesIO()
        np.save(buffer, latents, allow_pickle=False)
        store.put_bytes(key, buffer.getvalue())
        return latents

    latents = np.load(io.BytesIO(store.get_bytes(key)), allow_pickle=False)
    if latents.dtype != np.float32 or latents.ndim != 2 or latents.shape[1] != latent_dim:
        raise TrainingError(
            f"fixed latents {store.location(key)} are {latents.dtype} {latents.shape}, expected float32 "
            f"(N, {latent_dim}): delete the object, or use a new run_id"
        )
    return latents


def check_sample_channels(channels: int) -> None:
    """Raise TrainingError unless images with `channels` channels can be written as PNG (1, 3 or 4)."""
    if channels not in _PNG_CHANNELS:
        raise TrainingError(
            f"sample grids support 1, 3 or 4 channels, not {channels}: prepare the dataset as grayscale or RGB"
        )


def image_grid(images: np.ndarray) -> np.ndarray:
    """Tile uint8 images (N, H, W, C) into one uint8 image (rows * H, columns * W, C).

    columns = ceil(sqrt(N)) and rows = ceil(N / columns); unused cells stay black.
    """
    count, height, width, channels = images.shape
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = np.zeros((rows * height, columns * width, channels), dtype=np.uint8)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        grid[row * height : (row + 1) * height, column * width : (column + 1) * width] = image
    return grid


def write_sample_grid(generator, latents: np.ndarray, path: str | Path) -> Path:
    """Generate images from `latents` in inference mode and write them to `path` as one PNG grid."""
    generated_images = generator(latents, training=False)
    grid = image_grid(to_uint8(generated_images))
    check_sample_channels(grid.shape[-1])

    pixels = grid[..., 0] if grid.shape[-1] == 1 else grid
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Pillow picks the mode from the array: L for (H, W), RGB or RGBA for 3 or 4 channels.
    Image.fromarray(pixels).save(path, format="PNG")
    return path
