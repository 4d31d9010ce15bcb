"""DCGAN generator and discriminator builders (Keras 3 functional API).

The generator maps a latent of shape (latent_dim,) to an image of shape (height, width, channels)
in [-1, 1], the range of `pipeline.data.pixels.to_model_range`. The discriminator maps such an
image to one logit: positive means "real". Both sides share one plan: n stride-2 steps between
the base grid (height / 2**n, width / 2**n) and the full image.
"""

from __future__ import annotations

import keras
from keras import layers

from pipeline.errors import ConfigError

# Channels of the base grid that the generator's Dense layer fills.
BASE_FILTERS = 128

# The upsampling plan stops halving once the larger side is at most this many pixels.
MAX_BASE_SIZE = 8

# Kernel 4 with stride 2: a kernel size divisible by the stride gives every output pixel of a
# transposed convolution the same number of kernel taps, which avoids checkerboard patterns.
KERNEL_SIZE = 4

_MIN_GENERATOR_FILTERS = 16
_MAX_DISCRIMINATOR_FILTERS = 256
_LEAKY_SLOPE = 0.2


def plan_upsampling(height: int, width: int) -> tuple[int, int, int]:
    """Return (base_height, base_width, num_upsamplings) for an image of height x width pixels.

    num_upsamplings n is the smallest n >= 1 with max(height, width) / 2**n <= 8, and both sides
    must be divisible by 2**n: 28 -> base 7 with 2 upsamplings, 32 -> 8 with 2, 64 -> 8 with 3.
    Raises ConfigError for any other size (for example 30, which 4 does not divide).
    """
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"image {name}", value, "must be a positive integer")

    num_upsamplings = 1
    while max(height, width) / 2**num_upsamplings > MAX_BASE_SIZE:
        num_upsamplings += 1

    factor = 2**num_upsamplings
    if height % factor or width % factor:
        raise ConfigError(
            "image size",
            f"{height}x{width}",
            f"height and width must both be divisible by {factor}, because {num_upsamplings} stride-2 "
            f"upsamplings bring the larger side to at most {MAX_BASE_SIZE} pixels. Resize the images, "
            f"for example to {_nearest_multiple(height, factor)}x{_nearest_multiple(width, factor)}",
        )
    return height // factor, width // factor, num_upsamplings


def build_generator(latent_dim: int, height: int, width: int, channels: int) -> keras.Model:
    """Build the generator: latent -> Dense -> reshape -> n x (Conv2DTranspose, stride 2) -> tanh.

    Block i of n outputs max(128 / 2**(i + 1), 16) channels at twice the previous resolution, so a
    28x28 generator goes 7x7x128 -> 14x14x64 -> 28x28x32 -> 28x28xC. BatchNormalization and
    LeakyReLU(0.2) follow the Dense layer and every transposed convolution. Output: float32
    (batch, height, width, channels) in [-1, 1]. Raises ConfigError for an unsupported size.

    The blocks are narrow because the transposed convolutions dominate the cost of a step: with
    this 28x28 generator, a train step runs about 650 to 700 images/s at batch 128 on 2 CPU cores
    (TensorFlow 2.21, Fashion-MNIST).
    """
    _check_positive("latent_dim", latent_dim)
    _check_positive("image channels", channels)
    base_height, base_width, num_upsamplings = plan_upsampling(height, width)

    latent = keras.Input(shape=(latent_dim,), name="latent")
    x = layers.Dense(base_height * base_width * BASE_FILTERS, use_bias=False, name="project")(latent)
    x = _normalize_and_activate(x, "project")
    x = layers.Reshape((base_height, base_width, BASE_FILTERS), name="to_grid")(x)

    for block in range(num_upsamplings):
        filters = max(BASE_FILTERS // 2 ** (block + 1), _MIN_GENERATOR_FILTERS)
        x = layers.Conv2DTranspose(
            filters, KERNEL_SIZE, strides=2, padding="same", use_bias=False, name=f"upsample_{block}"
        )(x)
        x = _normalize_and_activate(x, f"upsample_{block}")

    # float32 output under any mixed-precision policy, so images and losses keep full precision.
    generated_images = layers.Conv2D(
        channels, 5, padding="same", activation="tanh", dtype="float32", name="to_image"
    )(x)
    return keras.Model(latent, generated_images, name="generator")


def build_discriminator(height: int, width: int, channels: int, dropout_rate: float = 0.3) -> keras.Model:
    """Build the discriminator: n x (Conv2D stride 2, LeakyReLU(0.2), Dropout) -> Flatten -> Dense(1).

    Block i outputs min(64 * 2**i, 256) channels at half the previous resolution, using the same n
    as the generator. Input: float32 (batch, height, width, channels) in [-1, 1]. Output: logits of
    shape (batch, 1), with no sigmoid, for a loss computed `from_logits`. `dropout_rate` 0 drops no
    units. Raises ConfigError for an unsupported size or a rate outside [0, 1).
    """
    _check_positive("image channels", channels)
    if not 0 <= dropout_rate < 1:
        raise ConfigError("dropout_rate", dropout_rate, "must be in [0, 1)")
    _, _, num_downsamplings = plan_upsampling(height, width)

    images = keras.Input(shape=(height, width, channels), name="images")
    x = images
    for block in range(num_downsamplings):
        filters = min(64 * 2**block, _MAX_DISCRIMINATOR_FILTERS)
        # No bias, as in common DCGAN code. With a bias, TensorFlow 2.21's grappler logs an error
        # ("remapper failed") on every trace while trying to fuse Conv2D, BiasAdd and LeakyReLU.
        x = layers.Conv2D(
            filters, KERNEL_SIZE, strides=2, padding="same", use_bias=False, name=f"downsample_{block}"
        )(x)
        x = layers.LeakyReLU(_LEAKY_SLOPE, name=f"downsample_{block}_activation")(x)
        if dropout_rate:
            x = layers.Dropout(dropout_rate, name=f"downsample_{block}_dropout")(x)

    x = layers.Flatten(name="flatten")(x)
    logits = layers.Dense(1, dtype="float32", name="logits")(x)
    return keras.Model(images, logits, name="discriminator")


def _normalize_and_activate(x, name: str):
    # Momentum 0.9 lets the moving statistics follow the generator within about 10 steps, so images
    # generated in inference mode look like those of training mode even after a short run.
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_norm")(x)
    return layers.LeakyReLU(_LEAKY_SLOPE, name=f"{name}_activation")(x)


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(name, value, "must be a positive integer")


def _nearest_multiple(value: int, factor: int) -> int:
    return max(factor, round(value / factor) * factor)
