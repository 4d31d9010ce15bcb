"""Hooks of the training loop: loss guard, progress log and metrics, checkpoints, sample grids.

Steps are counted from 1 over the whole run (a resumed attempt continues the count) and epochs
from 1. `logs` contains the running means `d_loss` and `g_loss` since the last progress line, as
Python floats.
"""

from __future__ import annotations

import json
import logging
import math
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import TrainingError
from pipeline.layout import run_key
from pipeline.storage.base import ArtifactStore
from pipeline.training.checkpoints import RunCheckpoints
from pipeline.training.samples import write_sample_grid

if TYPE_CHECKING:
    from pipeline.training.tensorboard import TensorBoardWriter
    from pipeline.training.gan import GAN
    from pipeline.training.train import TrainingPlan

log = logging.getLogger(__name__)

LOSS_NAMES = ("d_loss", "g_loss")

# Flags in `logs`: whether every trainable weight of that network is finite after the step.
FLAG_NAMES = ("generator_finite", "discriminator_finite")


class TrainingCallback:
    """Base class: every hook does nothing until a subclass overrides it."""

    def on_train_begin(self, gan: GAN, step: int) -> None:
        """Called once before the first step of this attempt; `step` steps are already done."""

    def on_step_end(self, step: int, logs: dict[str, float]) -> None:
        """Called after each optimizer update of both networks."""

    def on_epoch_end(self, epoch: int, step: int, logs: dict[str, float]) -> None:
        """Called after the last step of each complete epoch."""

    def on_train_end(self, step: int, logs: dict[str, float]) -> None:
        """Called once after the last step, also when this attempt ran no step."""


class NonFiniteGuard(TrainingCallback):
    """Raise TrainingError at the first step with a NaN or infinite d_loss, g_loss or weight.

    The running means are finite up to the step before, so the first non-finite mean names the
    step whose loss broke. It runs before the checkpoint callback, so that step is never saved
    and the latest checkpoint stays the last good one.
    """

    def __init__(self, run_id: str, checkpoints: RunCheckpoints):
        self.run_id = run_id
        self.checkpoints = checkpoints

    def on_step_end(self, step: int, logs: dict[str, float]) -> None:
        for name in LOSS_NAMES:
            if not math.isfinite(logs[name]):
                self._raise(f"{name} is {logs[name]} at step {step}")
        for name in FLAG_NAMES:
            if not logs.get(name, True):
                network = name.removesuffix("_finite")
                self._raise(f"the {network}'s weights contain NaN or infinity at step {step} (d_loss "
                            f"{logs['d_loss']}, g_loss {logs['g_loss']})")

    def _raise(self, problem: str) -> None:
        last_step = self.checkpoints.last_saved_step
        if last_step is None:
            checkpoint_state = "no checkpoint was written yet"
        else:
            checkpoint_state = f"the latest checkpoint is at step {last_step}"
        raise TrainingError(
            f"run {self.run_id}: {problem}, so training stopped and {checkpoint_state}. Lower "
            "generator_learning_rate or discriminator_learning_rate and train again with a new run_id"
        )


class MetricsLog:
    """The run's metrics.jsonl: one JSON object per line, kept locally and uploaded after each append."""

    def __init__(self, store: ArtifactStore, key: str, path: Path):
        self.store = store
        self.key = key
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []

    def load(self, up_to_step: int) -> None:
        """Read the stored rows with step <= `up_to_step`; later rows came from an attempt that was lost."""
        self.rows = []
        if self.store.exists(self.key):
            lines = self.store.get_bytes(self.key).decode().splitlines()
            self.rows = [row for row in map(json.loads, filter(None, lines)) if row["step"] <= up_to_step]
        self._write()

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self._write()
        self.store.put_file(self.key, self.path)

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in self.rows))


class ProgressLogger(TrainingCallback):
    """Every `log_every` steps and at the end: log a progress line, append a metrics row, reset the means.

    images_per_second covers the steps since the previous line. Timing starts at the end of this
    attempt's first step, so tracing the step function does not count. The rate is None for an
    interval without a timed step. The same values go to `tensorboard` when given.
    """

    def __init__(
        self,
        run_id: str,
        plan: TrainingPlan,
        log_every: int,
        metrics: MetricsLog,
        tensorboard: TensorBoardWriter | None = None,
    ):
        self.run_id = run_id
        self.tensorboard = tensorboard
        self.plan = plan
        self.log_every = log_every
        self.metrics = metrics
        self.gan: GAN | None = None
        self.mark_step: int | None = None
        self.mark_time = 0.0
        self.last_logged_step: int | None = None

    def on_train_begin(self, gan: GAN, step: int) -> None:
        self.gan = gan
        self.last_logged_step = step

    def on_step_end(self, step: int, logs: dict[str, float]) -> None:
        if self.mark_step is None:
            self.mark_step, self.mark_time = step, time.monotonic()
        if step % self.log_every == 0:
            self._log(step, logs)

    def on_train_end(self, step: int, logs: dict[str, float]) -> None:
        if step != self.last_logged_step:
            self._log(step, logs)

    def _log(self, step: int, logs: dict[str, float]) -> None:
        now = time.monotonic()
        images_per_second = None
        eta = "unknown"
        if self.mark_step is not None and step > self.mark_step:
            steps_per_second = (step - self.mark_step) / max(now - self.mark_time, 1e-9)
            images_per_second = steps_per_second * self.plan.batch_size
            eta = str(timedelta(seconds=round((self.plan.total_steps - step) / steps_per_second)))

        epoch = self.plan.epoch_of(step)
        log.info(
            "run %s: step %d/%d, epoch %d/%d, d_loss %.4f, g_loss %.4f, %s images/s, ETA %s",
            self.run_id, step, self.plan.total_steps, epoch, self.plan.num_epochs,
            logs["d_loss"], logs["g_loss"], "-" if images_per_second is None else f"{images_per_second:.0f}", eta,
        )
        row = {
            "step": step,
            "epoch": epoch,
            "d_loss": logs["d_loss"],
            "g_loss": logs["g_loss"],
            "images_per_second": None if images_per_second is None else round(images_per_second, 1),
        }
        self.metrics.append(row)
        if self.tensorboard is not None:
            self.tensorboard.write_scalars(step, {name: row[name] for name in ("d_loss", "g_loss", "images_per_second")})

        self.gan.reset_metrics()
        self.mark_step, self.mark_time = step, now
        self.last_logged_step = step


class PeriodicCheckpoint(TrainingCallback):
    """Save a checkpoint every `every` steps and after the last step, unless that step is saved."""

    def __init__(self, checkpoints: RunCheckpoints, every: int):
        self.checkpoints = checkpoints
        self.every = every

    def on_step_end(self, step: int, logs: dict[str, float]) -> None:
        if step % self.every == 0:
            self.checkpoints.save(step, _losses(logs))

    def on_train_end(self, step: int, logs: dict[str, float]) -> None:
        if self.checkpoints.last_saved_step != step:
            self.checkpoints.save(step, _losses(logs))


class SampleGrids(TrainingCallback):
    """Upload samples/epoch-NNNN.png of the EMA generator after each epoch, or only at the end when training by steps.

    At the end the grid of the last epoch reached is written if it is missing, which also covers
    an attempt that stopped between its last checkpoint and the grid.
    """

    def __init__(
        self,
        store: ArtifactStore,
        run_id: str,
        plan: TrainingPlan,
        latents: np.ndarray,
        work_dir: Path,
        tensorboard: TensorBoardWriter | None = None,
    ):
        self.store = store
        self.tensorboard = tensorboard
        self.run_id = run_id
        self.plan = plan
        self.latents = latents
        self.work_dir = Path(work_dir)
        self.gan: GAN | None = None

    def on_train_begin(self, gan: GAN, step: int) -> None:
        self.gan = gan

    def on_epoch_end(self, epoch: int, step: int, logs: dict[str, float]) -> None:
        if not self.plan.by_steps:
            self._write(epoch, step)

    def on_train_end(self, step: int, logs: dict[str, float]) -> None:
        epoch = self.plan.epoch_of(step)
        if not self.store.exists(sample_key(self.run_id, epoch)):
            self._write(epoch, step)

    def _write(self, epoch: int, step: int) -> None:
        key = sample_key(self.run_id, epoch)
        path = self.work_dir / "samples" / f"epoch-{epoch:04d}.png"
        write_sample_grid(self.gan.ema_generator, self.latents, path)
        self.store.put_file(key, path)
        if self.tensorboard is not None:
            self.tensorboard.write_png(step, "samples", path)
        log.info("run %s: wrote sample grid %s", self.run_id, self.store.location(key))


def sample_key(run_id: str, epoch: int) -> str:
    """Store key of the sample grid drawn after `epoch` (1-based)."""
    return run_key(run_id, f"samples/epoch-{epoch:04d}.png")


def _losses(logs: dict[str, float]) -> dict[str, float]:
    return {name: logs[name] for name in LOSS_NAMES}
