"""The GAN as one Keras model whose train step updates the discriminator, then the generator."""

from __future__ import annotations

import keras
import tensorflow as tf

from pipeline.config import UPDATE_SCHEMES
from pipeline.training import losses
from pipeline.training.ema import ema_decay_at, make_ema_generator, update_ema

# Stream ids folded into the random seed, so each random draw of a step has its own stream.
_LATENT_STREAM = 0
_PENALTY_STREAM = 1


class GAN(keras.Model):
    """A generator and a discriminator trained against each other, plus an EMA of the generator.

    One step makes `d_steps_per_g_step` discriminator updates and one generator update, in the
    order of `update_scheme`:

        alternating    the last discriminator update, then the generator update against the
                       just-updated discriminator D' (as in Goodfellow et al. 2014). Both updates
                       share one generator pass.
        simultaneous   the last discriminator update and the generator update both take their
                       gradients from one forward pass, at the same weights, then both apply them
                       (as the TensorFlow DCGAN tutorial does). It saves the discriminator pass
                       on the generated images that the alternating generator update repeats.

    With D the discriminator's logits, G the generator, x real_images and z standard normal
    latents, the default `non_saturating` loss is

        d_loss = mean(softplus(-D(x)) + softplus(D(G(z))))      (binary cross-entropy, labels 1 and 0)
        g_loss = mean(softplus(-D'(G(z))))                      (D' = D when simultaneous)

    At the equilibrium where D outputs 1/2 everywhere, d_loss = 2 ln 2 = 1.386 and
    g_loss = ln 2 = 0.693. `hinge` and `wgan_gp` are described in pipeline.training.losses.

    Losses are averaged over `global_batch_size` examples (the batch of all replicas together)
    with tf.nn.compute_average_loss, so under tf.distribute each replica's gradients sum to the
    gradient of the global batch mean. Random draws (latents, penalty interpolation weights)
    are stateless, seeded by (seed, step, stream, replica), so they depend only on the step
    counter, which the checkpoint restores.
    """

    def __init__(
        self,
        generator: keras.Model,
        discriminator: keras.Model,
        latent_dim: int,
        seed: int | None = None,
        loss: str = "non_saturating",
        gp_weight: float = 10.0,
        d_steps_per_g_step: int = 1,
        update_scheme: str = "alternating",
        ema_decay: float = 0.999,
        global_batch_size: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.generator = generator
        self.discriminator = discriminator
        self.ema_generator = make_ema_generator(generator)
        self.latent_dim = latent_dim
        self.seed = 0 if seed is None else int(seed)
        self.loss_name = loss
        self.gp_weight = float(gp_weight)
        self.d_steps_per_g_step = int(d_steps_per_g_step)
        if update_scheme not in UPDATE_SCHEMES:
            raise ValueError(f"invalid update_scheme {update_scheme!r}: use one of {', '.join(UPDATE_SCHEMES)}")
        self.update_scheme = update_scheme
        self.ema_decay = float(ema_decay)
        self.global_batch_size = global_batch_size
        # Steps finished so far: the seed of the random draws and the EMA warm-up count.
        self.step_counter = keras.Variable(0, dtype="int64", trainable=False, name="step_counter")
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")

    def compile(self, d_optimizer: keras.optimizers.Optimizer, g_optimizer: keras.optimizers.Optimizer, **kwargs):
        """Set the two optimizers; other keyword arguments go to keras.Model.compile."""
        super().compile(**kwargs)
        self.d_optimizer = d_optimizer
        self.g_optimizer = g_optimizer

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        """d_loss and g_loss, each averaged since the last reset_metrics()."""
        return [self.d_loss_tracker, self.g_loss_tracker]

    def call(self, latent, training=False):
        return self.generator(latent, training=training)

    def train_step(self, real_images):
        """Run one step on one device (keras.Model.fit calls this); return the running d_loss and g_loss."""
        if isinstance(real_images, tuple):
            real_images = real_images[0]
        step_losses = self.replica_step(real_images)
        results = self.finish_step(step_losses["d_loss"], step_losses["g_loss"])
        return {"d_loss": results["d_loss"], "g_loss": results["g_loss"]}

    def replica_step(self, real_images) -> dict[str, tf.Tensor]:
        """Update both networks on this replica's share of the batch; return its share of d_loss and g_loss.

        Call it once per replica (tf.distribute.Strategy.run); the sum over replicas of each
        returned loss is the mean over the global batch. Then call finish_step once.
        """
        batch_size = tf.shape(real_images)[0]
        for update in range(self.d_steps_per_g_step - 1):
            generated_images = self.generator(self.sample_latent(batch_size, update), training=True)
            self.update_discriminator(real_images, generated_images, update)

        last_update = self.d_steps_per_g_step - 1
        # NOTE: against a goal of 1.3x the Keras fit() loop, a 2-core CPU measured 1.16x to 1.22x for alternating,
        # which saves only one generator pass, and 1.27x to 1.30x for simultaneous (docs/benchmarks.md).
        if self.update_scheme == "simultaneous":
            return self._simultaneous_updates(real_images, last_update)

        with tf.GradientTape() as g_tape:
            generated_images = self.generator(self.sample_latent(batch_size, last_update), training=True)

            # The discriminator update stays off the generator's tape.
            with g_tape.stop_recording():
                d_loss = self.update_discriminator(real_images, generated_images, last_update)

            generated_logits = self.discriminator(generated_images, training=True)
            g_loss = self._average(losses.generator_loss(self.loss_name, generated_logits), real_images)
            scaled_g_loss = self.g_optimizer.scale_loss(g_loss)

        self._apply(self.g_optimizer, g_tape, scaled_g_loss, self.generator.trainable_variables)
        return {"d_loss": d_loss, "g_loss": g_loss}

    def finish_step(self, d_loss, g_loss) -> dict[str, tf.Tensor]:
        """Update the EMA generator, the step counter and the running means, in cross-replica context.

        Returns the running d_loss and g_loss, plus `generator_finite` and `discriminator_finite`:
        whether every weight of that network is finite after this step.
        """
        update_ema(self.ema_generator, self.generator, ema_decay_at(self.ema_decay, self.step_counter))
        self.step_counter.assign_add(1)

        # Running means since the last reset, so a loop can log one value per interval.
        self.d_loss_tracker.update_state(d_loss)
        self.g_loss_tracker.update_state(g_loss)
        return {
            "d_loss": self.d_loss_tracker.result(),
            "g_loss": self.g_loss_tracker.result(),
            "generator_finite": _all_finite(self.generator.trainable_variables),
            "discriminator_finite": _all_finite(self.discriminator.trainable_variables),
        }

    def sample_latent(self, batch_size, stream: int = 0):
        """Draw (batch_size, latent_dim) standard normal latents for discriminator update `stream` of this step."""
        seed = self._step_seed(_LATENT_STREAM, stream)
        return tf.random.stateless_normal((batch_size, self.latent_dim), seed=seed)

    def _simultaneous_updates(self, real_images, update: int) -> dict[str, tf.Tensor]:
        batch_size = tf.shape(real_images)[0]
        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            generated_images = self.generator(self.sample_latent(batch_size, update), training=True)
            # Two discriminator calls, not one on the concatenated batch, so that the generator's
            # gradient flows back through the generated half alone.
            generated_logits = self.discriminator(generated_images, training=True)
            g_loss = self._average(losses.generator_loss(self.loss_name, generated_logits), real_images)
            scaled_g_loss = self.g_optimizer.scale_loss(g_loss)

            with g_tape.stop_recording():
                real_logits = self.discriminator(real_images, training=True)
                d_loss = self._discriminator_objective(
                    real_images, generated_images, real_logits, generated_logits, update
                )
                scaled_d_loss = self.d_optimizer.scale_loss(d_loss)

        # Both gradients are taken before either network changes.
        g_gradients = g_tape.gradient(scaled_g_loss, self.generator.trainable_variables)
        d_gradients = d_tape.gradient(scaled_d_loss, self.discriminator.trainable_variables)
        self.d_optimizer.apply_gradients(zip(d_gradients, self.discriminator.trainable_variables))
        self.g_optimizer.apply_gradients(zip(g_gradients, self.generator.trainable_variables))
        return {"d_loss": d_loss, "g_loss": g_loss}

    def update_discriminator(self, real_images, generated_images, update: int = 0):
        """Apply one discriminator update with real_images as real and generated_images as generated; return d_loss.

        One call on the concatenated batch is cheaper than two. It gives the same logits only for a
        discriminator without batch normalization, such as the one build_discriminator returns.
        """
        batch_size = tf.shape(real_images)[0]
        generated_images = tf.cast(generated_images, real_images.dtype)
        with tf.GradientTape() as tape:
            logits = self.discriminator(tf.concat([real_images, generated_images], axis=0), training=True)
            d_loss = self._discriminator_objective(
                real_images, generated_images, logits[:batch_size], logits[batch_size:], update
            )
            scaled_d_loss = self.d_optimizer.scale_loss(d_loss)

        self._apply(self.d_optimizer, tape, scaled_d_loss, self.discriminator.trainable_variables)
        return d_loss

    def _discriminator_objective(self, real_images, generated_images, real_logits, generated_logits, update: int):
        # The discriminator's loss averaged over the global batch, with the WGAN-GP penalty when set.
        per_example = losses.discriminator_loss(self.loss_name, real_logits, generated_logits)
        if self.loss_name == "wgan_gp":
            seed = self._step_seed(_PENALTY_STREAM, update)
            generated_images = tf.cast(generated_images, real_images.dtype)
            penalty = losses.gradient_penalty(self.discriminator, real_images, generated_images, seed)
            per_example += self.gp_weight * penalty
        return self._average(per_example, real_images)

    def _apply(self, optimizer, tape, scaled_loss, variables) -> None:
        # scaled_loss is optimizer.scale_loss(loss), recorded on the tape: a LossScaleOptimizer (float16)
        # multiplies by its loss scale, divides the gradients by it again in apply_gradients and skips a
        # step whose gradients overflowed. Other optimizers return the loss unchanged.
        gradients = tape.gradient(scaled_loss, variables)
        optimizer.apply_gradients(zip(gradients, variables))

    def _average(self, per_example_loss, real_images):
        global_batch_size = self.global_batch_size
        if global_batch_size is None:
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            global_batch_size = tf.shape(real_images)[0] * replicas
        return tf.nn.compute_average_loss(per_example_loss, global_batch_size=global_batch_size)

    def _step_seed(self, kind: int, stream: int):
        replica_id = tf.distribute.get_replica_context().replica_id_in_sync_group
        seed = tf.constant([self.seed, 0], dtype=tf.int64)
        for data in (self.step_counter, kind, stream, replica_id):
            seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(data, tf.int64))
        return seed


def _all_finite(variables) -> tf.Tensor:
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(variable)) for variable in variables])
