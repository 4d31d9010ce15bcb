"""The train step: train the GAN of one run on a prepared dataset, or resume it, and store the results.

Objects written under runs/<run_id>/ in the artifact store:

    checkpoints/...          every checkpoint_every steps and after the last step (see checkpoints.py)
    fixed_latents.npy        the 64 latents of every sample grid, written once
    samples/epoch-NNNN.png   a grid of the EMA generator after each epoch, or only after the last step
                             when training by steps
    metrics.jsonl            one row per progress line: step, epoch, d_loss, g_loss, images_per_second
    tensorboard/...          TensorBoard event files with the same scalars and the sample grids
    generator.keras          the EMA generator (Keras 3 format); generator_raw.keras, generator_savedmodel/
                             and generator_reference.npz are described in export.py
    train.json               the summary, written last: its presence means training finished

TensorFlow and Keras are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from pipeline.config import PipelineConfig, TrainConfig
from pipeline.errors import DataError, TrainingError
from pipeline.layout import FIXED_LATENTS_FILE, METRICS_FILE, TRAIN_JSON, run_key, safe_run_id
from pipeline.storage.base import ArtifactStore

if TYPE_CHECKING:
    from pipeline.training.callbacks import TrainingCallback

log = logging.getLogger(__name__)

TRAIN_SPLIT = "train"

# Keys of the dict that train_gan returns as an Airflow XCom. train.json contains them and more.
RESULT_KEYS = ("run_id", "steps", "generator_key", "d_loss", "g_loss", "images_per_second")


@dataclass(frozen=True)
class TrainingPlan:
    """The length of a run: `total_steps` updates on batches of `batch_size`, `steps_per_epoch` per epoch."""

    batch_size: int
    steps_per_epoch: int
    total_steps: int
    by_steps: bool  # whether `steps` set the length rather than `epochs`

    @property
    def num_epochs(self) -> int:
        """Epochs that the run reaches; the last one is partial when total_steps is not a multiple."""
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def epoch_of(self, step: int) -> int:
        """Return the 1-based epoch that the 1-based `step` belongs to (step 0 belongs to epoch 1)."""
        return max(step - 1, 0) // self.steps_per_epoch + 1


def plan_training(train: TrainConfig, steps_per_epoch: int) -> TrainingPlan:
    """Return `train.steps` steps when set, otherwise `train.epochs` * `steps_per_epoch`."""
    if train.steps is not None:
        return TrainingPlan(train.batch_size, steps_per_epoch, train.steps, by_steps=True)
    return TrainingPlan(train.batch_size, steps_per_epoch, train.epochs * steps_per_epoch, by_steps=False)


def train_gan(
    config: PipelineConfig,
    store: ArtifactStore,
    fingerprint: str,
    run_id: str,
    *,
    callbacks: Sequence[TrainingCallback] = (),
) -> dict[str, Any]:
    """Train the GAN of `run_id` on dataset `fingerprint`, resuming from its latest checkpoint.

    When runs/<run_id>/train.json exists, training is complete and its summary is returned
    without training. Otherwise the dataset is fetched into `config.cache_dir`, the latest
    checkpoint of the run (if any) is restored, and training continues to the planned step count
    with the same data order and random draws as an uninterrupted run. `callbacks` are extra
    TrainingCallback objects called after the built-in ones.

    Returns {"run_id", "steps", "generator_key", "d_loss", "g_loss", "images_per_second"}.
    Raises TrainingError when a loss becomes non-finite (the last good checkpoint is kept) or when
    the stored checkpoint or summary belongs to other settings.
    """
    run_id = safe_run_id(run_id)
    summary_key = run_key(run_id, TRAIN_JSON)
    if store.exists(summary_key):
        return _finished_result(store, summary_key, run_id, fingerprint)

    import keras

    from pipeline.data.fetch import fetch_dataset
    from pipeline.data.reader import steps_per_epoch
    from pipeline.training.distribute import choose_strategy, replica_batch_size
    from pipeline.training.samples import check_sample_channels

    started = time.monotonic()
    directory, manifest = fetch_dataset(store, fingerprint, config.cache_dir)
    check_sample_channels(manifest.channels)
    plan = plan_training(config.train, steps_per_epoch(manifest, TRAIN_SPLIT, config.train.batch_size))
    keras.utils.set_random_seed(config.train.seed)
    strategy = choose_strategy(config.train.distribution)
    replica_batch_size(config.train.batch_size, strategy)
    gan = build_gan(config.train, manifest.height, manifest.width, manifest.channels, strategy)

    cache_dir = Path(config.cache_dir).expanduser()
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=f"train-{run_id}-") as scratch:
        epoch_batches = _epoch_batches(directory, manifest, config.train, flip=config.data.flip)
        summary = _train_run(
            config, store, fingerprint, run_id, gan, plan, epoch_batches, Path(scratch), callbacks, strategy
        )

    summary["wall_seconds"] = round(time.monotonic() - started, 1)
    store.put_json(summary_key, summary)
    log.info(
        "run %s: training finished at step %d in %.0f s; generator %s",
        run_id, summary["steps"], summary["wall_seconds"], store.location(summary["generator_key"]),
    )
    return _result(summary)


def build_gan(train: TrainConfig, height: int, width: int, channels: int, strategy=None):
    """Build and compile the GAN for images of height x width x channels with Adam optimizers.

    The networks, the EMA generator and the optimizers with their slots are created in `strategy`'s scope (the
    default strategy when None), under the dtype policy of `train.mixed_precision`: float32,
    mixed_bfloat16, or mixed_float16 with a keras.optimizers.LossScaleOptimizer around both
    optimizers. The global dtype policy is restored afterwards.
    """
    import keras
    import tensorflow as tf

    from pipeline.models.dcgan import build_discriminator, build_generator
    from pipeline.training.gan import GAN

    strategy = strategy or tf.distribute.get_strategy()
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(_DTYPE_POLICIES[train.mixed_precision])
    try:
        with strategy.scope():
            generator = build_generator(train.latent_dim, height, width, channels)
            discriminator = build_discriminator(height, width, channels)
            gan = GAN(
                generator,
                discriminator,
                train.latent_dim,
                seed=train.seed,
                loss=train.loss,
                gp_weight=train.gp_weight,
                d_steps_per_g_step=train.d_steps_per_g_step,
                update_scheme=train.update_scheme,
                ema_decay=train.ema_decay,
                global_batch_size=train.batch_size,
            )
            gan.compile(
                d_optimizer=_make_optimizer(train, train.discriminator_learning_rate),
                g_optimizer=_make_optimizer(train, train.generator_learning_rate),
            )
            # Slots are created here, in the strategy's scope, not lazily inside the compiled step.
            gan.d_optimizer.build(discriminator.trainable_variables)
            gan.g_optimizer.build(generator.trainable_variables)
    finally:
        keras.config.set_dtype_policy(previous_policy)
    return gan


_DTYPE_POLICIES = {"none": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def _make_optimizer(train: TrainConfig, learning_rate: float):
    import keras

    # beta_1 (0.5 by default, the DCGAN setting of Radford et al. 2015) damps Adam's momentum, which
    # at the usual 0.9 keeps pushing one network after the other has moved and makes the game oscillate.
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate, beta_1=train.beta_1)
    if train.mixed_precision == "float16":
        # Dynamic loss scaling keeps small float16 gradients from flushing to zero; a step whose
        # scaled gradients overflow is skipped and the scale halves.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def make_step_function(gan, strategy=None, jit_compile: bool = False):
    """Return a compiled function: global batch of real_images -> running losses and finiteness flags.

    Each replica runs gan.replica_step on its share of the batch; the losses are summed over
    replicas (each share is already divided by the global batch size), then gan.finish_step
    updates the EMA generator once. With `jit_compile`, the replica step is compiled with XLA.
    """
    import tensorflow as tf

    strategy = strategy or tf.distribute.get_strategy()
    # NOTE: XLA compiles the per-replica step only, and jit_compile is tested with one replica on CPU.
    # Whether the optimizers' cross-replica merge_call works inside it under MirroredStrategy is untested.
    replica_step = tf.function(gan.replica_step, jit_compile=True) if jit_compile else gan.replica_step

    @tf.function
    def step(real_images):
        replica_losses = strategy.run(replica_step, args=(real_images,))
        d_loss = strategy.reduce(tf.distribute.ReduceOp.SUM, replica_losses["d_loss"], axis=None)
        g_loss = strategy.reduce(tf.distribute.ReduceOp.SUM, replica_losses["g_loss"], axis=None)
        return gan.finish_step(d_loss, g_loss)

    return step


def run_steps(
    gan,
    epoch_batches: Callable[[int], Any],
    plan: TrainingPlan,
    start_step: int,
    callbacks: Sequence[TrainingCallback],
    logs: dict[str, float],
    strategy=None,
    jit_compile: bool = False,
) -> tuple[dict[str, float], float | None]:
    """Run steps start_step + 1 .. plan.total_steps with a compiled train step, calling the hooks.

    `epoch_batches(epoch)` returns the tf.data.Dataset of one whole epoch; a resumed epoch skips
    the batches that its checkpoint covers. Returns (logs of the last step, images per second);
    the given `logs` come back when no step runs. The rate is timed from the end of the first step,
    which excludes tracing, to the end of the last, per-step hooks included. It is None when fewer
    than 2 steps ran. Raises DataError when an epoch yields fewer batches than the manifest implies.
    """
    import tensorflow as tf

    from pipeline.training.callbacks import FLAG_NAMES, LOSS_NAMES

    strategy = strategy or tf.distribute.get_strategy()
    train_step = make_step_function(gan, strategy, jit_compile)
    step = start_step
    timed_from = None
    for hook in callbacks:
        hook.on_train_begin(gan, step)

    while step < plan.total_steps:
        epoch = plan.epoch_of(step + 1)
        done_in_epoch = step - (epoch - 1) * plan.steps_per_epoch
        count = min(plan.steps_per_epoch - done_in_epoch, plan.total_steps - step)
        expected_step = step + count

        batches = epoch_batches(epoch).skip(done_in_epoch).take(count)
        if strategy.num_replicas_in_sync > 1:
            batches = strategy.experimental_distribute_dataset(batches)
        for real_images in batches:
            results = train_step(real_images)
            step += 1
            logs = {name: float(results[name]) for name in LOSS_NAMES}
            logs.update({name: bool(results[name]) for name in FLAG_NAMES})
            timed_from = timed_from or (step, time.monotonic())
            for hook in callbacks:
                hook.on_step_end(step, logs)

        if step != expected_step:
            raise DataError(
                f"epoch {epoch} of the {TRAIN_SPLIT} split ended at step {step}, expected step {expected_step}: "
                "the shards hold fewer records than the manifest lists; prepare the dataset again"
            )
        if step == epoch * plan.steps_per_epoch:
            for hook in callbacks:
                hook.on_epoch_end(epoch, step, logs)

    images_per_second = None
    if timed_from is not None and step > timed_from[0]:
        images_per_second = (step - timed_from[0]) * plan.batch_size / (time.monotonic() - timed_from[1])

    for hook in callbacks:
        hook.on_train_end(step, logs)
    return logs, images_per_second


def _train_run(
    config: PipelineConfig,
    store: ArtifactStore,
    fingerprint: str,
    run_id: str,
    gan,
    plan: TrainingPlan,
    epoch_batches: Callable[[int], Any],
    work_dir: Path,
    extra_callbacks: Sequence[TrainingCallback],
    strategy,
) -> dict[str, Any]:
    """Restore, train and export the generators inside `work_dir`; return the summary for train.json."""
    from pipeline.training import callbacks as hooks
    from pipeline.training.checkpoints import RunCheckpoints, make_checkpoint
    from pipeline.training.export import export_generators
    from pipeline.training.samples import load_or_create_fixed_latents
    from pipeline.training.tensorboard import TensorBoardWriter

    image_shape = [int(size) for size in gan.generator.output_shape[1:]]
    identity = {
        "fingerprint": fingerprint,
        "image_shape": image_shape,
        "latent_dim": config.train.latent_dim,
        "batch_size": plan.batch_size,
    }
    with strategy.scope():
        checkpoint = make_checkpoint(gan)
    checkpoints = RunCheckpoints(store, run_id, checkpoint, work_dir, identity, keep=config.train.keep_checkpoints)
    latest = checkpoints.restore_latest() or {"step": 0}
    start_step = latest["step"]
    if start_step > plan.total_steps:
        raise TrainingError(
            f"run {run_id} has a checkpoint at step {start_step}, past the {plan.total_steps} steps requested: "
            f"set steps to at least {start_step}, or use a new run_id"
        )

    metrics = hooks.MetricsLog(store, run_key(run_id, METRICS_FILE), work_dir / METRICS_FILE)
    metrics.load(up_to_step=start_step)
    latents_key = run_key(run_id, FIXED_LATENTS_FILE)
    latents = load_or_create_fixed_latents(store, latents_key, config.train.seed, config.train.latent_dim)

    tensorboard = TensorBoardWriter(store, run_id, work_dir)
    tensorboard.drop_events_after(start_step)

    # The guard runs first, so a step with a non-finite loss or weight is never checkpointed.
    callbacks = [
        hooks.NonFiniteGuard(run_id, checkpoints),
        hooks.ProgressLogger(run_id, plan, config.train.log_every, metrics, tensorboard),
        hooks.PeriodicCheckpoint(checkpoints, config.train.checkpoint_every),
        hooks.SampleGrids(store, run_id, plan, latents, work_dir, tensorboard),
        *extra_callbacks,
    ]

    log.info(
        "run %s: training %d steps (%d epoch(s) of %d steps, batch %d) on dataset %s, starting at step %d",
        run_id, plan.total_steps, plan.num_epochs, plan.steps_per_epoch, plan.batch_size, fingerprint, start_step,
    )
    initial_logs = {name: latest.get(name, math.nan) for name in hooks.LOSS_NAMES}
    try:
        logs, images_per_second = run_steps(
            gan, epoch_batches, plan, start_step, callbacks, initial_logs, strategy, config.train.jit_compile
        )
    finally:
        tensorboard.close()
    if images_per_second is None:
        images_per_second = _last_rate(metrics.rows)

    exported = export_generators(gan, store, run_id, latents, work_dir)

    return {
        "run_id": run_id,
        "fingerprint": fingerprint,
        **_plan_summary(plan),
        "latent_dim": config.train.latent_dim,
        "image_shape": image_shape,
        "d_loss": logs["d_loss"],
        "g_loss": logs["g_loss"],
        "images_per_second": None if images_per_second is None else round(images_per_second, 1),
        "resumed_from_step": start_step,
        "replicas": strategy.num_replicas_in_sync,
        **exported,
        "train_settings": asdict(config.train),
    }


def _plan_summary(plan: TrainingPlan) -> dict[str, Any]:
    """Return the run length for train.json; `epochs` is fractional when `steps` cuts an epoch short."""
    return {
        "steps": plan.total_steps,
        "epochs": round(plan.total_steps / plan.steps_per_epoch, 4),
        "steps_per_epoch": plan.steps_per_epoch,
        "batch_size": plan.batch_size,
    }


def _epoch_batches(directory: Path, manifest, train: TrainConfig, flip: bool = False) -> Callable[[int], Any]:
    """Return epoch -> shuffled batches of that epoch, in an order (and flips) fixed by (train.seed, epoch)."""
    import tensorflow as tf

    from pipeline.data.reader import make_dataset

    # With autotuning on, destroying each epoch's iterator waited for tf.data's autotuning thread
    # (TensorFlow 2.21), which stalled training for 20 to 56 s at epoch ends on a 2-core CPU. Untuned,
    # the input pipeline still reads about 9,000 Fashion-MNIST images/s there, far above training.
    options = tf.data.Options()
    options.autotune.enabled = False

    def batches(epoch: int):
        seed = int(np.random.SeedSequence([train.seed, epoch]).generate_state(1)[0])
        dataset = make_dataset(
            directory, manifest, TRAIN_SPLIT, train.batch_size, shuffle=True, seed=seed, drop_remainder=True, flip=flip
        )
        return dataset.with_options(options)

    return batches


def _last_rate(rows: list[dict[str, Any]]) -> float | None:
    rates = [row["images_per_second"] for row in rows if row.get("images_per_second") is not None]
    return rates[-1] if rates else None


def _finished_result(store: ArtifactStore, summary_key: str, run_id: str, fingerprint: str) -> dict[str, Any]:
    summary = store.get_json(summary_key)
    if summary.get("fingerprint") != fingerprint:
        raise TrainingError(
            f"run {run_id} was trained on dataset {summary.get('fingerprint')}, not {fingerprint} "
            f"({store.location(summary_key)}): use a new run_id to train on another dataset"
        )
    log.info("run %s: training is already complete (%s exists); skipping it", run_id, store.location(summary_key))
    return _result(summary)


def _result(summary: dict[str, Any]) -> dict[str, Any]:
    return {name: summary[name] for name in RESULT_KEYS}
