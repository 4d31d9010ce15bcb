"""The train step on tiny models: losses, EMA, update isolation, precision, XLA and strategy choice."""

from __future__ import annotations

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from pipeline.config import TrainConfig  # noqa: E402
from pipeline.errors import ConfigError  # noqa: E402
from pipeline.models.dcgan import build_discriminator, build_generator  # noqa: E402
from pipeline.training import losses  # noqa: E402
from pipeline.training.distribute import choose_strategy, replica_batch_size, worker_count  # noqa: E402
from pipeline.training.ema import ema_decay_at, make_ema_generator, update_ema  # noqa: E402
from pipeline.training.train import build_gan, make_step_function  # noqa: E402

REAL_LOGITS = np.array([2.0, -0.5, 0.0], dtype=np.float32)
GENERATED_LOGITS = np.array([-1.0, 0.5, 3.0], dtype=np.float32)


def _softplus(x):
    return np.log1p(np.exp(x))


def _tiny_gan(**settings):
    """A 28x28x1 GAN with latent_dim 8 and batch 8, compiled by build_gan."""
    keras.utils.set_random_seed(1)
    return build_gan(TrainConfig(batch_size=8, latent_dim=8, **settings), 28, 28, 1)


def _real_batch(seed: int = 3):
    return tf.random.uniform((8, 28, 28, 1), -1, 1, seed=seed)


def _weights(model) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(variable) for variable in model.trainable_variables]


def _bitwise_equal(before: list[np.ndarray], after: list[np.ndarray]) -> bool:
    return all(a.tobytes() == b.tobytes() for a, b in zip(before, after))


def test_non_saturating_losses_match_numpy():
    d_loss = losses.discriminator_loss("non_saturating", REAL_LOGITS, GENERATED_LOGITS)
    g_loss = losses.generator_loss("non_saturating", GENERATED_LOGITS)

    np.testing.assert_allclose(d_loss, _softplus(-REAL_LOGITS) + _softplus(GENERATED_LOGITS), rtol=1e-6)
    np.testing.assert_allclose(g_loss, _softplus(-GENERATED_LOGITS), rtol=1e-6)


def test_hinge_losses_match_numpy():
    d_loss = losses.discriminator_loss("hinge", REAL_LOGITS, GENERATED_LOGITS)
    g_loss = losses.generator_loss("hinge", GENERATED_LOGITS)

    expected = np.maximum(0, 1 - REAL_LOGITS) + np.maximum(0, 1 + GENERATED_LOGITS)
    np.testing.assert_allclose(d_loss, expected, rtol=1e-6)
    np.testing.assert_allclose(g_loss, -GENERATED_LOGITS, rtol=1e-6)


def test_wgan_losses_match_numpy():
    d_loss = losses.discriminator_loss("wgan_gp", REAL_LOGITS, GENERATED_LOGITS)

    np.testing.assert_allclose(d_loss, GENERATED_LOGITS - REAL_LOGITS, rtol=1e-6)


def test_gradient_penalty_of_linear_discriminator():
    # D(x) = sum(w * x) has gradient w everywhere, so the penalty is (||w|| - 1)^2 for any interpolation.
    weights = np.full((4, 4, 1), 0.5, dtype=np.float32)  # ||w|| = 2

    def discriminator(images, training=True):
        return tf.reduce_sum(images * weights, axis=[1, 2, 3])

    real_images = tf.random.uniform((3, 4, 4, 1), seed=1)
    generated_images = tf.random.uniform((3, 4, 4, 1), seed=2)
    penalty = losses.gradient_penalty(discriminator, real_images, generated_images, tf.constant([1, 2]))

    np.testing.assert_allclose(penalty, [1.0, 1.0, 1.0], rtol=1e-5)


def test_unknown_loss_raises():
    with pytest.raises(ValueError, match="unknown loss 'lsgan'"):
        losses.generator_loss("lsgan", GENERATED_LOGITS)


def test_ema_decay_warms_up_to_setting():
    assert float(ema_decay_at(0.999, 0)) == pytest.approx(0.1)
    assert float(ema_decay_at(0.999, 10**6)) == pytest.approx(0.999)


def test_update_ema_moves_towards_generator():
    generator = build_generator(8, 28, 28, 1)
    ema_generator = make_ema_generator(generator)
    kernel = generator.get_layer("to_image").kernel
    start = keras.ops.convert_to_numpy(kernel)
    kernel.assign(start + 1.0)

    update_ema(ema_generator, generator, 0.75)

    np.testing.assert_allclose(ema_generator.get_layer("to_image").kernel, start + 0.25, rtol=1e-6)


def test_update_ema_copies_batch_norm_statistics():
    generator = build_generator(8, 28, 28, 1)
    ema_generator = make_ema_generator(generator)
    moving_mean = generator.get_layer("project_norm").moving_mean
    moving_mean.assign(np.full(moving_mean.shape, 3.0, dtype=np.float32))

    update_ema(ema_generator, generator, 0.9)

    np.testing.assert_array_equal(ema_generator.get_layer("project_norm").moving_mean, keras.ops.convert_to_numpy(moving_mean))


def test_discriminator_update_leaves_generator_bitwise():
    gan = _tiny_gan()
    generated_images = gan.generator(gan.sample_latent(8), training=True)
    generator_before = _weights(gan.generator)
    discriminator_before = _weights(gan.discriminator)

    gan.update_discriminator(_real_batch(), generated_images)

    assert _bitwise_equal(generator_before, _weights(gan.generator))
    assert not _bitwise_equal(discriminator_before, _weights(gan.discriminator))


def test_generator_update_leaves_discriminator_bitwise():
    snapshots = {}

    class RecordingGAN(type(_tiny_gan())):
        def update_discriminator(self, real_images, generated_images, update=0):
            d_loss = super().update_discriminator(real_images, generated_images, update)
            snapshots["discriminator"] = _weights(self.discriminator)
            snapshots["generator"] = _weights(self.generator)
            return d_loss

    gan = _tiny_gan()
    gan.__class__ = RecordingGAN

    gan.replica_step(_real_batch())

    assert _bitwise_equal(snapshots["discriminator"], _weights(gan.discriminator))
    assert not _bitwise_equal(snapshots["generator"], _weights(gan.generator))


def _without_dropout(gan):
    # Dropout draws a new mask on every call, so only without it is the expected step below reproducible.
    for layer in gan.discriminator.layers:
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    return gan


def _step_from_one_snapshot(gan, real_images):
    """Return the weights after Adam steps on both networks' gradients at the current weights."""
    copy = _without_dropout(_tiny_gan())
    copy.generator.set_weights(gan.generator.get_weights())
    copy.discriminator.set_weights(gan.discriminator.get_weights())
    with tf.GradientTape(persistent=True) as tape:
        generated_images = copy.generator(copy.sample_latent(8), training=True)
        generated_logits = copy.discriminator(generated_images, training=True)
        real_logits = copy.discriminator(real_images, training=True)
        g_loss = tf.reduce_mean(losses.generator_loss("non_saturating", generated_logits))
        d_loss = tf.reduce_mean(losses.discriminator_loss("non_saturating", real_logits, generated_logits))
    for optimizer, loss, network in ((copy.g_optimizer, g_loss, copy.generator), (copy.d_optimizer, d_loss, copy.discriminator)):
        optimizer.apply_gradients(zip(tape.gradient(loss, network.trainable_variables), network.trainable_variables))
    return _weights(copy.generator), _weights(copy.discriminator)


@pytest.mark.parametrize("update_scheme", ["simultaneous", "alternating"])
def test_update_scheme_against_snapshot_step(update_scheme):
    gan = _without_dropout(_tiny_gan(update_scheme=update_scheme))
    real_images = _real_batch()
    expected_generator, expected_discriminator = _step_from_one_snapshot(gan, real_images)

    gan.replica_step(real_images)

    for expected, actual in zip(expected_discriminator, _weights(gan.discriminator)):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-7)
    generator_matches = all(
        np.allclose(actual, expected, rtol=1e-5, atol=1e-7)
        for expected, actual in zip(expected_generator, _weights(gan.generator))
    )
    # Alternating trains the generator against the updated discriminator, so only simultaneous matches.
    assert generator_matches == (update_scheme == "simultaneous")


def test_simultaneous_wgan_gp_counts_discriminator_updates():
    gan = _tiny_gan(loss="wgan_gp", d_steps_per_g_step=2, update_scheme="simultaneous")

    results = make_step_function(gan)(_real_batch())

    assert int(gan.d_optimizer.iterations) == 2
    assert int(gan.g_optimizer.iterations) == 1
    assert np.isfinite(float(results["d_loss"]))
    assert np.isfinite(float(results["g_loss"]))


@pytest.mark.parametrize(
    "settings",
    [
        {"loss": "hinge"},
        {"loss": "wgan_gp", "d_steps_per_g_step": 2},
        {"mixed_precision": "bfloat16"},
        {"mixed_precision": "float16", "update_scheme": "simultaneous"},
    ],
    ids=["hinge", "wgan_gp_2_d_steps", "bfloat16", "float16_simultaneous"],
)
def test_step_variants_keep_losses_finite(settings):
    gan = _tiny_gan(**settings)
    step = make_step_function(gan)

    results = step(_real_batch())

    assert np.isfinite(float(results["d_loss"]))
    assert np.isfinite(float(results["g_loss"]))
    assert bool(results["generator_finite"])


def test_wgan_gp_counts_discriminator_updates():
    gan = _tiny_gan(loss="wgan_gp", d_steps_per_g_step=3)

    make_step_function(gan)(_real_batch())

    assert int(gan.d_optimizer.iterations) == 3
    assert int(gan.g_optimizer.iterations) == 1


def test_float16_three_steps_stay_finite():
    gan = _tiny_gan(mixed_precision="float16")
    step = make_step_function(gan)
    generator_before = _weights(gan.generator)

    for seed in range(3):
        real_images = _real_batch(seed)
        with tf.GradientTape() as tape:
            logits = gan.discriminator(gan.generator(gan.sample_latent(8), training=True), training=True)
            g_loss = tf.reduce_mean(losses.generator_loss("non_saturating", logits))
        gradients = tape.gradient(g_loss, gan.generator.trainable_variables)
        results = step(real_images)

        assert all(bool(tf.reduce_all(tf.math.is_finite(gradient))) for gradient in gradients)
        assert np.isfinite(float(results["d_loss"]))
        assert np.isfinite(float(results["g_loss"]))

    assert isinstance(gan.g_optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(gan.d_optimizer, keras.optimizers.LossScaleOptimizer)
    assert gan.generator.get_layer("upsample_0").compute_dtype == "float16"
    assert not _bitwise_equal(generator_before, _weights(gan.generator))


def test_xla_step_runs_one_update():
    gan = _tiny_gan()
    step = make_step_function(gan, jit_compile=True)

    results = step(_real_batch())

    assert np.isfinite(float(results["d_loss"]))
    assert int(gan.g_optimizer.iterations) == 1


def test_build_gan_restores_dtype_policy():
    _tiny_gan(mixed_precision="bfloat16")

    assert keras.config.dtype_policy().name == "float32"


@pytest.mark.parametrize(("size", "channels"), [(28, 1), (32, 3), (64, 3), (128, 3)])
def test_builders_derive_stages_from_size(size, channels):
    generator = build_generator(8, size, size, channels)
    discriminator = build_discriminator(size, size, channels)

    assert generator.output_shape == (None, size, size, channels)
    assert discriminator.output_shape == (None, 1)


def test_worker_count_reads_tf_config(monkeypatch):
    cluster = {"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]}, "task": {"type": "chief", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(cluster))

    assert worker_count() == 3


def test_worker_count_without_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)

    assert worker_count() == 1


def test_worker_count_rejects_bad_tf_config(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{not json")

    with pytest.raises(ConfigError, match="TF_CONFIG"):
        worker_count()


def test_auto_strategy_on_one_cpu_is_default(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)

    strategy = choose_strategy("auto")

    assert strategy.num_replicas_in_sync == 1


def test_replica_batch_size_rejects_uneven_split():
    strategy = tf.distribute.get_strategy()

    assert replica_batch_size(64, strategy) == 64
    with pytest.raises(ConfigError, match="batch_size"):
        replica_batch_size(65, type("TwoReplicas", (), {"num_replicas_in_sync": 2})())


class _NoCheckpoints:
    last_saved_step = 4


def test_guard_names_network_with_non_finite_weights():
    from pipeline.errors import TrainingError
    from pipeline.training.callbacks import NonFiniteGuard

    logs = {"d_loss": 1.3, "g_loss": 0.7, "generator_finite": False, "discriminator_finite": True}

    with pytest.raises(TrainingError, match="generator's weights contain NaN or infinity at step 6") as raised:
        NonFiniteGuard("guarded", _NoCheckpoints()).on_step_end(6, logs)
    assert "latest checkpoint is at step 4" in str(raised.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [("loss", "lsgan"), ("mixed_precision", "float8"), ("distribution", "tpu"), ("ema_decay", 1.0), ("d_steps_per_g_step", 0),
     ("update_scheme", "sequential")],
)
def test_config_rejects_bad_training_option(key, value):
    from pipeline.config import PipelineConfig

    with pytest.raises(ConfigError, match=key):
        PipelineConfig.from_mapping({key: value})


def test_config_reads_training_options():
    from pipeline.config import PipelineConfig

    config = PipelineConfig.from_mapping({"loss": "wgan_gp", "jit_compile": "true", "keep_checkpoints": "3"})

    assert config.train.loss == "wgan_gp"
    assert config.train.jit_compile is True
    assert config.train.keep_checkpoints == 3
