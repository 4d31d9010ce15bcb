"""Tests of image normalisation on images encoded here with Pillow."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.data.images import (
    decode_image_file,
    make_image_spec,
    normalize_array,
    oriented_size,
    to_uint8_values,
)
from pipeline.data.pixels import to_model_range
from pipeline.errors import ConfigError, DataError

EXIF_ORIENTATION = 0x0112


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    output = io.BytesIO()
    image.save(output, format=image_format, **options)
    return output.getvalue()


def rgb_spec(height: int = 8, width: int = 8, resize_mode: str = "crop", background: str = "black"):
    return make_image_spec(height, width, 3, resize_mode, background)


def test_decode_rgba_png_composites_on_background():
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[:, :4] = (255, 0, 0, 255)  # opaque red left half, transparent right half

    pixels = decode_image_file(encode(Image.fromarray(rgba), "PNG"), rgb_spec(background="white"), "a.png")

    assert pixels.shape == (8, 8, 3)
    assert pixels[0, 0].tolist() == [255, 0, 0]
    assert pixels[0, 7].tolist() == [255, 255, 255]


def test_decode_grayscale_jpeg_to_rgb():
    gray = Image.fromarray(np.full((8, 8), 100, dtype=np.uint8))

    pixels = decode_image_file(encode(gray, "JPEG", quality=95), rgb_spec(), "gray.jpg")

    assert pixels.shape == (8, 8, 3)
    assert np.array_equal(pixels[..., 0], pixels[..., 2])


def test_decode_rgb_to_grayscale():
    red = Image.fromarray(np.full((8, 8, 3), (255, 0, 0), dtype=np.uint8))

    pixels = decode_image_file(encode(red, "PNG"), make_image_spec(8, 8, 1, "crop", "black"), "red.png")

    assert pixels.shape == (8, 8, 1)
    assert int(pixels[0, 0, 0]) == 76  # ITU-R 601 luma of pure red: 0.299 * 255


def test_decode_16bit_png_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)

    pixels = decode_image_file(encode(Image.fromarray(ramp), "PNG"), rgb_spec(), "deep.png")

    assert pixels.max() == 255
    assert pixels.min() == 0
    assert len(np.unique(pixels)) > 32


def test_decode_16bit_and_8bit_in_model_range():
    deep = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    shallow = np.linspace(0, 255, 64).astype(np.uint8).reshape(8, 8)
    images = np.stack([
        decode_image_file(encode(Image.fromarray(deep), "PNG"), rgb_spec(), "deep.png"),
        decode_image_file(encode(Image.fromarray(shallow), "PNG"), rgb_spec(), "shallow.png"),
    ])

    values = to_model_range(images).numpy()

    assert values.min() >= -1.0
    assert values.max() <= 1.0
    assert np.mean(values[0] == 1.0) < 0.1  # a clipped 16-bit image would be almost all 1.0


def test_decode_exif_orientation_applied():
    wide = np.zeros((4, 8, 3), dtype=np.uint8)
    wide[:, :4] = 255  # white left half
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # stored rotated: display rotates 90 degrees clockwise
    content = encode(Image.fromarray(wide), "JPEG", quality=95, exif=exif)

    pixels = decode_image_file(content, rgb_spec(height=8, width=4), "rotated.jpg")

    assert oriented_size(content, "rotated.jpg") == (8, 4)
    assert pixels[0].mean() > 200  # after the rotation the white half is on top
    assert pixels[-1].mean() < 50


def test_decode_gif_first_frame():
    frames = [Image.new("P", (8, 8), color) for color in (1, 2)]
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9)
    for frame in frames:
        frame.putpalette(palette)
    content = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])

    pixels = decode_image_file(content, rgb_spec(), "anim.gif")

    assert pixels[0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize("image_format", ["BMP", "WEBP", "PNG"])
def test_decode_lossless_formats(image_format):
    colors = np.random.default_rng(0).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    options = {"lossless": True} if image_format == "WEBP" else {}

    pixels = decode_image_file(encode(Image.fromarray(colors), image_format, **options), rgb_spec(), "x")

    assert np.array_equal(pixels, colors)


def test_decode_resize_crop_keeps_center():
    wide = np.zeros((8, 24, 3), dtype=np.uint8)
    wide[:, 8:16] = 255  # white centre third

    pixels = decode_image_file(encode(Image.fromarray(wide), "PNG"), rgb_spec(), "wide.png")

    assert pixels.shape == (8, 8, 3)
    assert pixels.min() > 200


def test_decode_resize_pad_fills_background():
    wide = np.full((8, 16, 3), 255, dtype=np.uint8)

    pixels = decode_image_file(encode(Image.fromarray(wide), "PNG"), rgb_spec(resize_mode="pad"), "wide.png")

    assert pixels[0, 0].tolist() == [0, 0, 0]
    assert pixels[4, 4].tolist() == [255, 255, 255]


def test_decode_resize_antialiased():
    checker = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)

    pixels = decode_image_file(encode(Image.fromarray(checker), "PNG"), rgb_spec(), "checker.png")

    # Point sampling would keep pure black and white; a low-pass filter averages to mid-gray.
    assert 100 < pixels.mean() < 155
    assert pixels.std() < 30


@pytest.mark.parametrize(
    "content, reason",
    [(b"", "empty"), (b"plain text, not pixels", "not an image"), (None, "cannot be decoded")],
    ids=["zero-bytes", "text", "truncated"],
)
def test_decode_invalid_file(content, reason):
    if content is None:
        content = encode(Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)), "PNG")[:60]

    with pytest.raises(DataError, match=reason) as error:
        decode_image_file(content, rgb_spec(), "bad.png")

    assert "bad.png" in str(error.value)


def test_normalize_array_2d_to_rgb():
    pixels = normalize_array(np.full((8, 8), 7, dtype=np.uint8), rgb_spec())

    assert pixels.shape == (8, 8, 3)
    assert pixels.max() == 7


def test_normalize_array_rgba_composited():
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)

    pixels = normalize_array(rgba, rgb_spec(background="#102030"))

    assert pixels[0, 0].tolist() == [16, 32, 48]


def test_to_uint8_values_uint16():
    assert to_uint8_values(np.array([0, 257, 65535], dtype=np.uint16)).tolist() == [0, 1, 255]


def test_to_uint8_values_int64_in_byte_range():
    assert to_uint8_values(np.array([0, 200], dtype=np.int64)).tolist() == [0, 200]


def test_to_uint8_values_float_unit_range():
    assert to_uint8_values(np.array([0.0, 0.5, 1.0], dtype=np.float32)).tolist() == [0, 128, 255]


def test_to_uint8_values_out_of_range():
    with pytest.raises(DataError, match="range over"):
        to_uint8_values(np.array([-1.0, 2.0]))


@pytest.mark.parametrize(
    "arguments, name",
    [
        ((0, 8, 3, "crop", "black"), "height"),
        ((8, 8, 2, "crop", "black"), "channels"),
        ((8, 8, 3, "stretch", "black"), "resize_mode"),
        ((8, 8, 3, "crop", "not-a-colour"), "background"),
    ],
)
def test_make_image_spec_invalid(arguments, name):
    with pytest.raises(ConfigError) as error:
        make_image_spec(*arguments)

    assert error.value.name == name


def test_decode_decompression_bomb_rejected(monkeypatch):
    content = encode(Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)), "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow raises past twice this many pixels

    with pytest.raises(DataError, match="too large"):
        decode_image_file(content, rgb_spec(), "huge.png")
