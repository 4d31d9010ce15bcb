"""An exponential moving average (EMA) of the generator's weights.

After each generator update, every trainable weight w of the EMA generator moves as

    w_ema <- d * w_ema + (1 - d) * w,    d = min(ema_decay, (1 + n) / (10 + n))

where n is the number of generator updates before this one. The warm-up term (the rule of
tf.train.ExponentialMovingAverage with num_updates) lets the average follow the fast early
changes, so a short run does not export a generator close to its random initialisation.
Non-trainable weights (batch-normalization statistics) are copied, not averaged.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def make_ema_generator(generator: keras.Model) -> keras.Model:
    """Return a copy of `generator` with the same architecture, name and current weights."""
    ema_generator = keras.models.clone_model(generator)
    ema_generator.set_weights(generator.get_weights())
    return ema_generator


def ema_decay_at(ema_decay: float, updates) -> tf.Tensor:
    """Return min(ema_decay, (1 + updates) / (10 + updates)) as float32; `updates` counts prior updates."""
    updates = tf.cast(updates, tf.float32)
    return tf.minimum(tf.constant(ema_decay, tf.float32), (1.0 + updates) / (10.0 + updates))


def update_ema(ema_generator: keras.Model, generator: keras.Model, decay) -> None:
    """Move the EMA generator's trainable weights towards `generator`'s and copy its other weights."""
    for ema_weight, weight in zip(ema_generator.trainable_variables, generator.trainable_variables):
        ema_weight.assign(decay * ema_weight + (1.0 - decay) * weight)
    for ema_weight, weight in zip(ema_generator.non_trainable_variables, generator.non_trainable_variables):
        ema_weight.assign(weight)
