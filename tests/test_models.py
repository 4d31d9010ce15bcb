"""DCGAN builders and the GAN train step, on tiny synthetic batches."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from pipeline.errors import ConfigError  # noqa: E402
from pipeline.models.dcgan import build_discriminator, build_generator, plan_upsampling  # noqa: E402
from pipeline.training.gan import GAN  # noqa: E402

LATENT_DIM = 8


def _compiled_gan(height: int, width: int, channels: int) -> GAN:
    keras.utils.set_random_seed(1)
    gan = GAN(
        build_generator(LATENT_DIM, height, width, channels),
        build_discriminator(height, width, channels),
        LATENT_DIM,
        seed=1,
    )
    gan.compile(
        d_optimizer=keras.optimizers.Adam(1e-3, beta_1=0.5),
        g_optimizer=keras.optimizers.Adam(1e-3, beta_1=0.5),
    )
    return gan


@pytest.mark.parametrize(
    "height, width, expected",
    [(28, 28, (7, 7, 2)), (32, 32, (8, 8, 2)), (64, 64, (8, 8, 3)), (28, 32, (7, 8, 2)), (8, 8, (4, 4, 1))],
)
def test_plan_upsampling_sizes(height, width, expected):
    assert plan_upsampling(height, width) == expected


def test_plan_upsampling_rejects_indivisible_size():
    with pytest.raises(ConfigError) as raised:
        plan_upsampling(30, 30)
    assert "30x30" in str(raised.value)
    assert "divisible by 4" in str(raised.value)


def test_plan_upsampling_rejects_zero_height():
    with pytest.raises(ConfigError, match="image height"):
        plan_upsampling(0, 28)


def test_build_generator_rejects_bad_size():
    with pytest.raises(ConfigError, match="27x27"):
        build_generator(LATENT_DIM, 27, 27, 1)


def test_build_discriminator_rejects_dropout_rate():
    with pytest.raises(ConfigError, match="dropout_rate"):
        build_discriminator(28, 28, 1, dropout_rate=1.0)


@pytest.mark.parametrize("height, width, channels", [(28, 28, 1), (32, 32, 3)])
def test_generator_output_shape_and_range(height, width, channels):
    generator = build_generator(LATENT_DIM, height, width, channels)
    latent = np.random.default_rng(0).standard_normal((3, LATENT_DIM)).astype(np.float32)

    generated_images = generator(latent, training=False).numpy()

    assert generator.name == "generator"
    assert generated_images.shape == (3, height, width, channels)
    assert generated_images.min() >= -1.0
    assert generated_images.max() <= 1.0


def test_discriminator_outputs_one_logit_per_image():
    discriminator = build_discriminator(32, 32, 3)
    images = np.random.default_rng(0).uniform(-1, 1, (5, 32, 32, 3)).astype(np.float32)

    logits = discriminator(images, training=False)

    assert discriminator.name == "discriminator"
    assert tuple(logits.shape) == (5, 1)
    assert discriminator.layers[-1].activation.__name__ == "linear"


def test_gan_metrics_are_d_loss_and_g_loss():
    gan = _compiled_gan(28, 28, 1)

    assert [metric.name for metric in gan.metrics] == ["d_loss", "g_loss"]


def test_gan_train_step_updates_both_networks():
    gan = _compiled_gan(28, 28, 1)
    real_images = tf.random.uniform((8, 28, 28, 1), -1, 1, seed=2)
    generator_before = _trainable_values(gan.generator)
    discriminator_before = _trainable_values(gan.discriminator)

    results = tf.function(gan.train_step)(real_images)

    generator_after = _trainable_values(gan.generator)
    discriminator_after = _trainable_values(gan.discriminator)
    unchanged_generator = [
        name for name in generator_before if np.array_equal(generator_before[name], generator_after[name])
    ]
    unchanged_discriminator = [
        name for name in discriminator_before if np.array_equal(discriminator_before[name], discriminator_after[name])
    ]
    assert unchanged_generator == []
    assert unchanged_discriminator == []
    assert np.isfinite(float(results["d_loss"]))
    assert np.isfinite(float(results["g_loss"]))
    assert int(gan.d_optimizer.iterations.numpy()) == 1
    assert int(gan.g_optimizer.iterations.numpy()) == 1


def _trainable_values(model) -> dict[str, np.ndarray]:
    return {variable.path: variable.numpy().copy() for variable in model.trainable_variables}


def test_gan_fit_reports_both_losses():
    gan = _compiled_gan(28, 28, 1)
    real_images = tf.data.Dataset.from_tensor_slices(tf.random.uniform((16, 28, 28, 1), -1, 1, seed=3)).batch(8)

    history = gan.fit(real_images, epochs=1, shuffle=False, verbose=0)

    assert sorted(history.history) == ["d_loss", "g_loss"]
