"""Compare training speed: this project's train step vs a Keras fit() loop vs train_on_batch calls.

All loops train the same DCGAN (pipeline.models.dcgan, 28x28x1, latent_dim 100) with the same
Adam settings on the same in-memory Fashion-MNIST batches of 128 images:

    trainer         pipeline.training.train.make_step_function with the default
                    update_scheme=alternating: one compiled step, one generator pass shared by
                    both updates, no per-step Python besides the loop
    trainer_simultaneous
                    the same step with update_scheme=simultaneous: both networks' gradients from
                    one forward pass
    trainer_xla     the same with jit_compile=True (only with --xla: on a 2-core CPU it ran at
                    about 40 images/s, so it would dominate the run time)
    fit             a keras.Model subclass with an overridden train_step, written the way the Keras
                    DCGAN example does it (a second generator pass for the generator update,
                    label noise), trained with fit(). The networks are called with training=True:
                    the example leaves it unset, which in Keras 3 runs batch normalization and
                    dropout in inference mode and so would compare less work
    train_on_batch  discriminator.train_on_batch on real and generated images, then train_on_batch
                    of a combined model with a frozen discriminator, as older tutorials do

Each loop is traced and warmed up first, then timed over `--steps` steps, in `--rounds` rounds that
alternate the loops, so load from other processes hits each loop alike. The median rate is
reported. A profile then times the parts of one step as separate compiled functions.

`--threads 1` runs TensorFlow with one intra-op and one inter-op thread. Each op then runs alone
on one core, so the rates measure the work of each loop with far less noise from the other core
and from other processes; the default (0) lets TensorFlow use every core.

`--mixed-precision bfloat16` builds every loop's networks under Keras's mixed_bfloat16 policy.

Run: python benchmarks/bench_training.py [--steps 30] [--rounds 2] [--threads 0] [--mixed-precision none]
     [--output results.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("bench_training")

FASHION_MNIST_TRAIN = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
BATCH_SIZE = 128
LATENT_DIM = 100
WARMUP_STEPS = 3


def load_batches(count: int):
    """Return a repeating tf.data.Dataset of float32 (128, 28, 28, 1) batches in [-1, 1]."""
    import tensorflow as tf

    from pipeline.data.idx import read_idx
    from pipeline.data.pixels import to_model_range

    images = read_idx(FASHION_MNIST_TRAIN)[: count * BATCH_SIZE, :, :, None]
    real_images = to_model_range(images)
    return tf.data.Dataset.from_tensor_slices(real_images).batch(BATCH_SIZE, drop_remainder=True).cache().repeat()


# The mixed_precision setting of every loop: "none" (float32) or "bfloat16" (--mixed-precision).
MIXED_PRECISION = {"value": "none"}


def build_networks():
    """Build the generator and discriminator under the dtype policy of MIXED_PRECISION."""
    import keras

    from pipeline.models.dcgan import build_discriminator, build_generator

    keras.utils.set_random_seed(0)
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16" if MIXED_PRECISION["value"] == "bfloat16" else "float32")
    try:
        return build_generator(LATENT_DIM, 28, 28, 1), build_discriminator(28, 28, 1)
    finally:
        keras.config.set_dtype_policy(previous_policy)


def train_settings(update_scheme: str):
    """Return the TrainConfig of the trainer loops: batch, latent size and precision of every loop."""
    from pipeline.config import TrainConfig

    return TrainConfig(
        batch_size=BATCH_SIZE,
        latent_dim=LATENT_DIM,
        update_scheme=update_scheme,
        mixed_precision=MIXED_PRECISION["value"],
    )


def adam():
    import keras

    return keras.optimizers.Adam(learning_rate=2e-4, beta_1=0.5)


class Timer:
    """A stopwatch that turns a timed window of steps into images per second."""

    def __init__(self):
        self.started = None

    def start(self):
        self.started = time.perf_counter()

    def rate(self, steps: int) -> float:
        return steps * BATCH_SIZE / (time.perf_counter() - self.started)


def make_trainer(dataset, jit_compile: bool = False, update_scheme: str = "alternating"):
    """Return run(steps) -> images/s for this project's compiled step."""
    from pipeline.training.train import build_gan, make_step_function

    import keras

    keras.utils.set_random_seed(0)
    gan = build_gan(train_settings(update_scheme), 28, 28, 1)
    step = make_step_function(gan, jit_compile=jit_compile)
    batches = iter(dataset)

    def run(steps: int) -> float:
        for _ in range(WARMUP_STEPS):
            float(step(next(batches))["d_loss"])
        timer = Timer()
        timer.start()
        for _ in range(steps):
            # Reading the loss each step, as the trainer's hooks do, syncs like the real loop.
            float(step(next(batches))["d_loss"])
        return timer.rate(steps)

    return run


def make_fit_loop(dataset):
    """Return run(steps) -> images/s for a Keras-example-style GAN trained with fit()."""
    import keras
    import tensorflow as tf

    generator, discriminator = build_networks()

    class ExampleGAN(keras.Model):
        def __init__(self):
            super().__init__()
            self.generator = generator
            self.discriminator = discriminator
            self.loss_fn = keras.losses.BinaryCrossentropy(from_logits=True)
            self.seed_generator = keras.random.SeedGenerator(1)

        def compile(self, **kwargs):
            super().compile(**kwargs)
            self.d_optimizer = adam()
            self.g_optimizer = adam()

        def train_step(self, real_images):
            batch_size = tf.shape(real_images)[0]

            # Discriminator: generated images labelled 1, real ones 0, with a little label noise.
            latent = keras.random.normal((batch_size, LATENT_DIM), seed=self.seed_generator)
            generated_images = self.generator(latent, training=True)
            images = tf.concat([generated_images, real_images], axis=0)
            labels = tf.concat([tf.ones((batch_size, 1)), tf.zeros((batch_size, 1))], axis=0)
            labels += 0.05 * keras.random.uniform(tf.shape(labels), seed=self.seed_generator)
            with tf.GradientTape() as tape:
                d_loss = self.loss_fn(labels, self.discriminator(images, training=True))
            gradients = tape.gradient(d_loss, self.discriminator.trainable_weights)
            self.d_optimizer.apply_gradients(zip(gradients, self.discriminator.trainable_weights))

            # Generator: a fresh latent batch and a second generator pass, labelled "real" (0).
            latent = keras.random.normal((batch_size, LATENT_DIM), seed=self.seed_generator)
            with tf.GradientTape() as tape:
                generated_images = self.generator(latent, training=True)
                g_loss = self.loss_fn(tf.zeros((batch_size, 1)), self.discriminator(generated_images, training=True))
            gradients = tape.gradient(g_loss, self.generator.trainable_weights)
            self.g_optimizer.apply_gradients(zip(gradients, self.generator.trainable_weights))
            return {"d_loss": d_loss, "g_loss": g_loss}

    gan = ExampleGAN()
    gan.compile()

    class StepTimes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter())

    def run(steps: int) -> float:
        times = StepTimes()
        gan.fit(dataset, steps_per_epoch=WARMUP_STEPS + steps, epochs=1, verbose=0, callbacks=[times])
        window = times.times[WARMUP_STEPS - 1 :]
        return steps * BATCH_SIZE / (window[-1] - window[0])

    return run


def make_train_on_batch_loop(dataset):
    """Return run(steps) -> images/s for discriminator/combined-model train_on_batch calls."""
    import keras

    generator, discriminator = build_networks()
    discriminator.compile(optimizer=adam(), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    discriminator.trainable = False
    latent = keras.Input((LATENT_DIM,))
    combined = keras.Model(latent, discriminator(generator(latent)))
    combined.compile(optimizer=adam(), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    batches = dataset.as_numpy_iterator()
    rng = np.random.default_rng(0)
    ones = np.ones((BATCH_SIZE, 1), np.float32)
    zeros = np.zeros((BATCH_SIZE, 1), np.float32)

    def one_step():
        real_images = next(batches)
        generated_images = generator.predict_on_batch(rng.standard_normal((BATCH_SIZE, LATENT_DIM), np.float32))
        discriminator.trainable = True
        discriminator.train_on_batch(np.concatenate([real_images, generated_images]), np.concatenate([ones, zeros]))
        discriminator.trainable = False
        combined.train_on_batch(rng.standard_normal((BATCH_SIZE, LATENT_DIM), np.float32), ones)

    def run(steps: int) -> float:
        for _ in range(WARMUP_STEPS):
            one_step()
        timer = Timer()
        timer.start()
        for _ in range(steps):
            one_step()
        return timer.rate(steps)

    return run


def profile_step(dataset, repeats: int) -> dict[str, float]:
    """Return milliseconds per call of the parts of the trainer's step, each compiled on its own."""
    import tensorflow as tf

    from pipeline.training.train import build_gan, make_step_function

    gan = build_gan(train_settings("alternating"), 28, 28, 1)
    real_images = next(iter(dataset))
    generated_images = gan.generator(gan.sample_latent(BATCH_SIZE), training=True)
    pair = tf.concat([real_images, generated_images], axis=0)

    @tf.function
    def generator_forward():
        return gan.generator(gan.sample_latent(BATCH_SIZE), training=True)

    @tf.function
    def discriminator_forward():
        return gan.discriminator(pair, training=True)

    @tf.function
    def discriminator_update():
        return gan.update_discriminator(real_images, generated_images)

    @tf.function
    def generator_update():
        with tf.GradientTape() as tape:
            images = gan.generator(gan.sample_latent(BATCH_SIZE), training=True)
            g_loss = tf.reduce_mean(tf.nn.softplus(-gan.discriminator(images, training=True)))
        gradients = tape.gradient(g_loss, gan.generator.trainable_variables)
        gan.g_optimizer.apply_gradients(zip(gradients, gan.generator.trainable_variables))
        return g_loss

    full_step = make_step_function(gan)
    simultaneous_gan = build_gan(train_settings("simultaneous"), 28, 28, 1)
    simultaneous_step = make_step_function(simultaneous_gan)
    parts = {
        "generator forward (128 latents)": generator_forward,
        "discriminator forward (256 images)": discriminator_forward,
        "discriminator update (forward, backward, Adam)": discriminator_update,
        "generator update (G and D forward, backward, Adam)": generator_update,
        "whole trainer step": lambda: full_step(real_images),
        "whole trainer step, simultaneous": lambda: simultaneous_step(real_images),
    }
    timings = {}
    for name, function in parts.items():
        tf.nest.map_structure(np.asarray, function())
        started = time.perf_counter()
        for _ in range(repeats):
            result = function()
        tf.nest.map_structure(np.asarray, result)
        timings[name] = round((time.perf_counter() - started) / repeats * 1000, 1)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per loop and round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds that alternate the loops")
    parser.add_argument("--profile-repeats", type=int, default=20, help="calls per profiled part")
    parser.add_argument("--output", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--xla", action="store_true", help="also time the trainer with jit_compile=True")
    parser.add_argument(
        "--threads", type=int, default=0, help="TensorFlow intra-op and inter-op threads (0: TensorFlow's default)"
    )
    parser.add_argument(
        "--mixed-precision",
        choices=("none", "bfloat16"),
        default="none",
        help="compute dtype of every loop's networks (bfloat16: the mixed_bfloat16 policy)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    MIXED_PRECISION["value"] = args.mixed_precision

    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    started = time.monotonic()
    dataset = load_batches(args.steps + WARMUP_STEPS + 2)
    loops = {
        "trainer": make_trainer(dataset),
        "trainer_simultaneous": make_trainer(dataset, update_scheme="simultaneous"),
        "fit": make_fit_loop(dataset),
        "train_on_batch": make_train_on_batch_loop(dataset),
    }
    if args.xla:
        loops["trainer_xla"] = make_trainer(dataset, jit_compile=True)
    rates = {name: [] for name in loops}
    for round_index in range(args.rounds):
        for name, run in loops.items():
            rates[name].append(run(args.steps))
            log.info("round %d: %s %.0f images/s", round_index + 1, name, rates[name][-1])

    medians = {name: round(statistics.median(values), 1) for name, values in rates.items()}
    results = {
        "tensorflow": tf.__version__,
        "cpu_count": os.cpu_count(),
        "threads": args.threads or "default",
        "mixed_precision": args.mixed_precision,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "batch_size": BATCH_SIZE,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "images_per_second": medians,
        "all_rates": {name: [round(value, 1) for value in values] for name, values in rates.items()},
        "speedup_vs_fit": {name: round(value / medians["fit"], 2) for name, value in medians.items()},
        "profile_ms": profile_step(dataset, args.profile_repeats),
    }
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    log.info("%s", json.dumps(results, indent=2))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
