"""GAN losses on discriminator logits, per example, for averaging over the global batch.

Every function returns a float32 tensor of shape (batch,). The train step averages it with
tf.nn.compute_average_loss over the global batch, so the sum over replicas is the batch mean.
With r the logits of real_images and f those of generated_images:

    non_saturating   d = softplus(-r) + softplus(f)      g = softplus(-f)
    hinge            d = relu(1 - r) + relu(1 + f)       g = -f
    wgan_gp          d = f - r (+ gradient penalty)      g = -f

softplus(-r) is the binary cross-entropy of label 1 on logit r, so non_saturating is the DCGAN
loss with the generator maximising log D(G(z)) (Goodfellow et al. 2014). Hinge is the loss of
Lim and Ye 2017 (Geometric GAN); wgan_gp is the critic loss of Gulrajani et al. 2017 (Improved
Training of Wasserstein GANs), whose penalty `gradient_penalty` computes.
"""

from __future__ import annotations

import tensorflow as tf


def _flat(logits):
    return tf.reshape(tf.cast(logits, tf.float32), [-1])


def discriminator_loss(loss: str, real_logits, generated_logits):
    """Return the per-example discriminator loss of `loss` (without the WGAN-GP penalty)."""
    real, generated = _flat(real_logits), _flat(generated_logits)
    if loss == "non_saturating":
        return tf.nn.softplus(-real) + tf.nn.softplus(generated)
    if loss == "hinge":
        return tf.nn.relu(1.0 - real) + tf.nn.relu(1.0 + generated)
    if loss == "wgan_gp":
        return generated - real
    raise ValueError(f"unknown loss {loss!r}: expected non_saturating, hinge or wgan_gp")


def generator_loss(loss: str, generated_logits):
    """Return the per-example generator loss of `loss`."""
    generated = _flat(generated_logits)
    if loss == "non_saturating":
        return tf.nn.softplus(-generated)
    if loss in ("hinge", "wgan_gp"):
        return -generated
    raise ValueError(f"unknown loss {loss!r}: expected non_saturating, hinge or wgan_gp")


def gradient_penalty(discriminator, real_images, generated_images, seed):
    """Return the per-example penalty (||grad_x D(x)||_2 - 1)**2 at x = e * real + (1 - e) * generated.

    e is drawn per example from U[0, 1) with the stateless seed `seed` (shape (2,), int32), so the
    interpolation weights are part of the run's reproducible random state.
    """
    batch_size = tf.shape(real_images)[0]
    weights = tf.random.stateless_uniform([batch_size, 1, 1, 1], seed=seed, dtype=real_images.dtype)
    interpolated = weights * real_images + (1.0 - weights) * tf.cast(generated_images, real_images.dtype)

    with tf.GradientTape() as tape:
        tape.watch(interpolated)
        logits = discriminator(interpolated, training=True)
    gradients = tf.cast(tape.gradient(logits, interpolated), tf.float32)

    norms = tf.sqrt(tf.reduce_sum(tf.square(gradients), axis=[1, 2, 3]) + 1e-12)
    return tf.square(norms - 1.0)
