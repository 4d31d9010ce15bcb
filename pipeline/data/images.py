"""Image normalisation: every image of every source becomes uint8 height x width x channels here.

`normalize_image` (one decoded Pillow image) and `normalize_array` (one array from IDX, `.npz` or
TensorFlow Datasets) are the only places that change an image's values, channels or size:

1. Values: 16-bit images are scaled to 0-255 by x / 257 (65535 maps to 255, nothing is clipped),
   floats in [0, 1] by x * 255, both rounded.
2. Channels: alpha (RGBA, LA, palette transparency) is composited on the `background` colour,
   then the image is converted to grayscale (1 channel, ITU-R 601 luma) or RGB (3 channels).
3. Size: `resize_mode` 'crop' scales the image to cover height x width and cuts the centre;
   'pad' scales it to fit inside and fills the border with `background`. Both resample with
   Lanczos, which low-pass filters when shrinking (antialiasing).

`decode_image_file` also applies the EXIF orientation and takes the first frame of an animation.
Pillow is imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError, DataError

RESIZE_MODES = ("crop", "pad")
CHANNEL_COUNTS = (1, 3)

# Pillow modes that hold 16 or 32 bits per pixel in one integer channel.
_WIDE_INTEGER_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_UINT16_TO_UINT8 = 257.0

# EXIF tag 0x0112 (Orientation); values 5-8 rotate by 90 or 270 degrees, which swaps width and height.
_EXIF_ORIENTATION = 0x0112
_EXIF_ROTATIONS_BY_90 = (5, 6, 7, 8)


@dataclass(frozen=True)
class ImageSpec:
    """Target of normalisation: uint8 images of height x width x channels."""

    height: int
    width: int
    channels: int
    resize_mode: str = "crop"
    background: tuple[int, int, int] = (0, 0, 0)


def make_image_spec(height: int, width: int, channels: int, resize_mode: str, background: str) -> ImageSpec:
    """Build a spec, parsing `background` as a Pillow colour ('black', '#ffffff', 'rgb(0,0,0)').

    Raises ConfigError naming the setting when a value is out of range or the colour is unknown.
    """
    from PIL import ImageColor

    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
            raise ConfigError(name, value, "must be an integer between 1 and 4096")
    if channels not in CHANNEL_COUNTS:
        raise ConfigError("channels", channels, f"must be one of {list(CHANNEL_COUNTS)} (grayscale or RGB)")
    if resize_mode not in RESIZE_MODES:
        raise ConfigError("resize_mode", resize_mode, f"must be one of {list(RESIZE_MODES)}")

    try:
        color = ImageColor.getrgb(background)
    except (ValueError, AttributeError) as error:
        raise ConfigError("background", background, "must be a colour name or '#rrggbb'") from error
    return ImageSpec(height, width, channels, resize_mode, tuple(color[:3]))


def decode_image_file(content: bytes, spec: ImageSpec, name: str | Path) -> np.ndarray:
    """Decode PNG, JPEG, BMP, GIF (first frame) or WebP bytes and normalise them to `spec`.

    Raises DataError naming `name` when the bytes are empty, truncated or not an image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not content:
        raise DataError(f"{name} is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(content)) as image:
            image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image)
    except UnidentifiedImageError as error:
        raise DataError(f"{name} is not an image Pillow can identify") from error
    except Image.DecompressionBombError as error:
        raise DataError(f"{name} is too large to decode safely: {error}") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise DataError(f"{name} cannot be decoded: {error}") from error
    return normalize_image(image, spec)


def oriented_size(content: bytes, name: str | Path) -> tuple[int, int]:
    """Return (height, width) of encoded image bytes after EXIF orientation, reading only the header."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(content)) as image:
            width, height = image.size
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        raise DataError(f"{name} cannot be decoded: {error}") from error
    return (width, height) if orientation in _EXIF_ROTATIONS_BY_90 else (height, width)


def normalize_array(array: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """Normalise one image array of shape (H, W) or (H, W, C) with C in 1-4 to `spec`.

    Accepts uint8, uint16 (scaled by 1/257) and floats in [0, 1]. C = 2 is gray with alpha,
    C = 4 is RGBA. Raises DataError for other shapes, dtypes or value ranges.
    """
    from PIL import Image

    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (2, 3, 4)):
        raise DataError(f"an image array must have shape (H, W) or (H, W, C) with C in 1-4, got {array.shape}")

    pixels = to_uint8_values(array)
    if pixels.ndim == 2 and pixels.shape == (spec.height, spec.width) and spec.channels == 1:
        return pixels[:, :, np.newaxis]
    if pixels.ndim == 3 and pixels.shape == (spec.height, spec.width, 3) and spec.channels == 3:
        return pixels

    # Pillow infers the mode from the shape: L, LA, RGB or RGBA.
    return normalize_image(Image.fromarray(np.ascontiguousarray(pixels)), spec)


def normalize_image(image, spec: ImageSpec) -> np.ndarray:
    """Normalise one Pillow image to a uint8 array of shape (height, width, channels)."""
    from PIL import Image, ImageOps

    image = _to_8bit(image)
    image = _to_channels(image, spec)

    size = (spec.width, spec.height)
    if image.size != size:
        fill = spec.background if spec.channels == 3 else _luma(spec.background)
        if spec.resize_mode == "crop":
            image = ImageOps.fit(image, size, method=Image.Resampling.LANCZOS)
        else:
            image = ImageOps.pad(image, size, method=Image.Resampling.LANCZOS, color=fill)

    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[:, :, np.newaxis] if pixels.ndim == 2 else pixels


def to_uint8_values(array: np.ndarray) -> np.ndarray:
    """Scale an array's values to uint8, rounding; raise DataError for values it cannot map.

    uint8 is kept. uint16 is divided by 257, so 65535 maps to 255. Other integer arrays (the int64
    of a plain `np.array`) are kept when their values lie in [0, 255] and divided by 257 when they
    lie in [0, 65535]. Floats in [0, 1] are multiplied by 255, and booleans map to 0 and 255.
    """
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.size == 0:
        return array.astype(np.uint8)

    low, high = array.min(), array.max()
    if array.dtype.kind == "u" and array.dtype.itemsize == 2:
        return _scale_uint16(array)
    if array.dtype.kind in "iu" and low >= 0 and high <= 255:
        return array.astype(np.uint8)
    if array.dtype.kind in "iu" and low >= 0 and high <= 65535:
        return _scale_uint16(array)
    if array.dtype.kind == "f" and low >= 0.0 and high <= 1.0:
        return np.round(array * 255.0).astype(np.uint8)
    raise DataError(
        f"image values of dtype {array.dtype} range over [{low}, {high}], but they must be uint8, uint16, "
        "integers in [0, 65535] or floats in [0, 1]"
    )


def _scale_uint16(array: np.ndarray) -> np.ndarray:
    return np.round(array.astype(np.float32) / _UINT16_TO_UINT8).astype(np.uint8)


def _to_8bit(image):
    """Return `image` in an 8-bit mode, scaling 16-bit and float values rather than clipping them."""
    from PIL import Image

    if image.mode in _WIDE_INTEGER_MODES or image.mode == "F":
        values = np.asarray(image)
        if image.mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise DataError(
                f"32-bit integer images must have values in [0, 65535], got [{values.min()}, {values.max()}]"
            )
        if image.mode != "F":
            values = values.astype(np.uint16)  # so that a dark 16-bit image is scaled like a bright one
        return Image.fromarray(to_uint8_values(values))
    if image.mode == "1":
        return image.convert("L")
    if image.mode in ("P", "PA"):
        return image.convert("RGBA")
    if image.mode not in ("L", "LA", "RGB", "RGBA"):
        return image.convert("RGB")
    return image


def _to_channels(image, spec: ImageSpec):
    """Composite alpha on the background, then convert to grayscale ('L') or RGB."""
    from PIL import Image

    if image.mode in ("LA", "RGBA"):
        background = Image.new("RGBA", image.size, (*spec.background, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("L" if spec.channels == 1 else "RGB")


def _luma(color: tuple[int, int, int]) -> int:
    """ITU-R 601 luma of an RGB colour, as Pillow's 'L' conversion computes it."""
    red, green, blue = color
    return round((red * 299 + green * 587 + blue * 114) / 1000)
