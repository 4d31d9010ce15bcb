"""The GAN as one Keras model whose train step updates the discriminator, then the generator."""

from __future__ import annotations

import keras
import tensorflow as tf


class GAN(keras.Model):
    """A generator and a discriminator trained against each other, one update of each per step.

    With D the discriminator's logits, D' the discriminator after this step's update, G the
    generator, x real_images, z a batch of standard normal latents and BCE the mean binary
    cross-entropy on logits:

        d_loss = BCE(1, D(x)) + BCE(0, D(G(z)))
        g_loss = BCE(1, D'(G(z)))

    g_loss is the non-saturating generator loss: it gives the generator
    strong gradients while the discriminator still wins easily. At the equilibrium where D outputs
    1/2 everywhere, d_loss = 2 ln 2 = 1.386 and g_loss = ln 2 = 0.693.
    """

    def __init__(
        self,
        generator: keras.Model,
        discriminator: keras.Model,
        latent_dim: int,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.generator = generator
        self.discriminator = discriminator
        self.latent_dim = latent_dim
        self.latent_seed = keras.random.SeedGenerator(seed)
        self.bce = keras.losses.BinaryCrossentropy(from_logits=True)
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

    def sample_latent(self, batch_size):
        """Draw a (batch_size, latent_dim) batch of standard normal latents from the model's seed."""
        return keras.random.normal((batch_size, self.latent_dim), seed=self.latent_seed)

    def train_step(self, real_images):
        """Update the discriminator, then the generator, once; return the running d_loss and g_loss."""
        if isinstance(real_images, tuple):
            real_images = real_images[0]
        batch_size = tf.shape(real_images)[0]

        # One generator pass serves both updates, which saves a generator forward pass per step.
        # The outer tape records it for the generator's gradients.
        with tf.GradientTape() as g_tape:
            generated_images = self.generator(self.sample_latent(batch_size), training=True)

            # Discriminator update, kept off the generator's tape.
            with g_tape.stop_recording():
                d_loss = self._update_discriminator(real_images, generated_images)

            # Generator loss: the same generated_images, labelled 1 ("real"), against the updated discriminator.
            generated_logits = self.discriminator(generated_images, training=True)
            g_loss = self.bce(tf.ones_like(generated_logits), generated_logits)

        gradients = g_tape.gradient(g_loss, self.generator.trainable_variables)
        self.g_optimizer.apply_gradients(zip(gradients, self.generator.trainable_variables))

        # Running means since the last reset, so a loop can log one value per interval.
        self.d_loss_tracker.update_state(d_loss)
        self.g_loss_tracker.update_state(g_loss)
        return {"d_loss": self.d_loss_tracker.result(), "g_loss": self.g_loss_tracker.result()}

    def _update_discriminator(self, real_images, generated_images):
        """Apply one discriminator update with real_images labelled 1 and generated_images 0; return d_loss.

        One call on the concatenated batch is cheaper than two. It gives the same logits only for a
        discriminator without batch normalization, such as the one build_discriminator returns.
        """
        batch_size = tf.shape(real_images)[0]
        with tf.GradientTape() as tape:
            logits = self.discriminator(tf.concat([real_images, generated_images], axis=0), training=True)
            real_logits, generated_logits = logits[:batch_size], logits[batch_size:]
            d_loss = self.bce(tf.ones_like(real_logits), real_logits) + self.bce(
                tf.zeros_like(generated_logits), generated_logits
            )

        gradients = tape.gradient(d_loss, self.discriminator.trainable_variables)
        self.d_optimizer.apply_gradients(zip(gradients, self.discriminator.trainable_variables))
        return d_loss
