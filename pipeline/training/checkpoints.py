"""Checkpoints of one training run in the artifact store: write, upload, find the latest, restore.

Layout under runs/<run_id>/checkpoints/:

    ckpt-00000500.index, ckpt-00000500.data-00000-of-00001   tf.train.Checkpoint files
    latest.json   {"step", "prefix", "files": {name: sha256}, identity and losses}

`latest.json` is written after the files it names, so a reader never follows it to a partial
checkpoint. A checkpoint contains both networks with their batch-normalization statistics, the EMA
generator, both optimizers' slots and iteration counters (and loss scales, for float16), and the
loop's step counter. It also contains the GAN's own step counter, which seeds its stateless
random draws, and the seed states of the dropout layers, so a resumed run draws the same random numbers as one
that never stopped.

Writing is atomic per checkpoint: the files are uploaded under a new prefix first, and only then
does latest.json move to it. A process killed at any point leaves latest.json naming a complete
checkpoint, or no latest.json at all.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import tensorflow as tf

from pipeline.errors import TrainingError
from pipeline.layout import run_key
from pipeline.storage.base import ArtifactStore, sha256_file
from pipeline.training.gan import GAN

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
LATEST_NAME = "latest.json"

# Default number of checkpoints kept in the store; older ones are deleted after latest.json moves on.
KEEP_CHECKPOINTS = 2


def make_checkpoint(gan: GAN) -> tf.train.Checkpoint:
    """Build a tf.train.Checkpoint over the whole training state of `gan`, step counter at 0.

    The optimizers are built first, so their slots exist before a restore and every saved value
    finds its variable.
    """
    gan.d_optimizer.build(gan.discriminator.trainable_variables)
    gan.g_optimizer.build(gan.generator.trainable_variables)
    return tf.train.Checkpoint(
        step=tf.Variable(0, dtype=tf.int64, trainable=False),
        generator=gan.generator,
        discriminator=gan.discriminator,
        ema_generator=gan.ema_generator,
        g_optimizer=gan.g_optimizer,
        d_optimizer=gan.d_optimizer,
        step_counter=gan.step_counter,
        # Dropout seed states are Keras variables that tf.train.Checkpoint does not reach through
        # the layers; listing every non-trainable variable tracks them (and the BN statistics again).
        non_trainable=(
            gan.generator.non_trainable_variables
            + gan.discriminator.non_trainable_variables
            + gan.ema_generator.non_trainable_variables
        ),
    )


class RunCheckpoints:
    """Save and restore the checkpoints of run `run_id`, staging files in `work_dir`, keeping the `keep` newest.

    `identity` (dataset fingerprint, shapes, batch size) is stored with every checkpoint, and a
    restore raises TrainingError when the current run's identity differs, because the step
    counter and the weights would not mean the same thing.
    """

    def __init__(
        self,
        store: ArtifactStore,
        run_id: str,
        checkpoint: tf.train.Checkpoint,
        work_dir: Path,
        identity: dict[str, Any],
        keep: int = KEEP_CHECKPOINTS,
    ):
        self.store = store
        self.keep = keep
        self.run_id = run_id
        self.checkpoint = checkpoint
        self.work_dir = Path(work_dir) / CHECKPOINTS_DIR
        self.identity = identity
        self.last_saved_step: int | None = None

    @property
    def latest_key(self) -> str:
        return run_key(self.run_id, f"{CHECKPOINTS_DIR}/{LATEST_NAME}")

    def latest(self) -> dict[str, Any] | None:
        """Return the content of latest.json, or None when the run has no checkpoint yet."""
        if not self.store.exists(self.latest_key):
            return None
        return self.store.get_json(self.latest_key)

    def save(self, step: int, losses: dict[str, float]) -> None:
        """Write the checkpoint of `step`, upload its files, then point latest.json at it.

        Raises TrainingError, writing nothing, when a variable contains NaN or infinity, so the
        previous checkpoint stays the latest.
        """
        self._check_finite(step)
        self.checkpoint.step.assign(step)
        prefix = f"ckpt-{step:08d}"
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint.write(str(self.work_dir / prefix))

        files = {}
        for path in sorted(self.work_dir.glob(f"{prefix}.*")):
            files[path.name] = sha256_file(path)
            self.store.put_file(self._file_key(path.name), path)
            path.unlink()

        latest = {"run_id": self.run_id, "step": step, "prefix": prefix, "files": files, **self.identity, **losses}
        self.store.put_json(self.latest_key, latest)
        self.last_saved_step = step
        location = self.store.location(self._file_key(prefix))
        log.info("run %s: saved checkpoint %s at step %d", self.run_id, location, step)
        self._delete_old(keep_from=step)

    def restore_latest(self) -> dict[str, Any] | None:
        """Restore the latest checkpoint into the tracked objects; return its latest.json, or None.

        Raises TrainingError when the checkpoint belongs to another dataset or model shape, when a
        downloaded file's sha256 differs from latest.json, or when it does not fill every variable.
        """
        latest = self.latest()
        if latest is None:
            return None
        self._check_identity(latest)

        restore_dir = self.work_dir / "restore"
        for name, expected_sha256 in latest["files"].items():
            path = self.store.get_file(self._file_key(name), restore_dir / name)
            if sha256_file(path) != expected_sha256:
                raise TrainingError(
                    f"checkpoint file {self.store.location(self._file_key(name))} of run {self.run_id} does not match "
                    f"the sha256 in {LATEST_NAME}: delete {CHECKPOINTS_DIR}/ of this run to start over"
                )

        status = self.checkpoint.read(str(restore_dir / latest["prefix"]))
        try:
            status.assert_existing_objects_matched()
        except AssertionError as error:
            raise TrainingError(
                f"checkpoint {latest['prefix']} of run {self.run_id} does not match the current models ({error}): "
                "use a new run_id, or delete the checkpoints of this run to start over"
            ) from error

        self.last_saved_step = int(self.checkpoint.step.numpy())
        log.info("run %s: restored checkpoint %s at step %d", self.run_id, latest["prefix"], self.last_saved_step)
        return latest

    def _check_identity(self, latest: dict[str, Any]) -> None:
        for name, expected in self.identity.items():
            if latest.get(name) != expected:
                raise TrainingError(
                    f"the latest checkpoint of run {self.run_id} was written with {name}={latest.get(name)!r}, but "
                    f"this run has {name}={expected!r}: use a new run_id, or keep the settings of the first attempt"
                )

    def _check_finite(self, step: int) -> None:
        networks = (self.checkpoint.generator, self.checkpoint.discriminator, self.checkpoint.ema_generator)
        for variable in [variable for network in networks for variable in network.variables]:
            if tf.as_dtype(variable.dtype).is_floating and not bool(tf.reduce_all(tf.math.is_finite(variable))):
                raise TrainingError(
                    f"run {self.run_id}: variable {variable.path} contains NaN or infinity at step {step}, so no "
                    f"checkpoint was written. The latest good checkpoint is at step {self.last_saved_step}: lower "
                    "generator_learning_rate or discriminator_learning_rate and train again with a new run_id"
                )

    def _delete_old(self, keep_from: int) -> None:
        """Delete checkpoint files older than the `keep` newest, which end at `keep_from`."""
        prefixes = {}
        for info in self.store.list(run_key(self.run_id, f"{CHECKPOINTS_DIR}/ckpt-")):
            name = info.key.rsplit("/", 1)[-1]
            prefixes.setdefault(name.split(".", 1)[0], []).append(info.key)

        candidates = [prefix for prefix in prefixes if int(prefix.removeprefix("ckpt-")) <= keep_from]
        newest = sorted(candidates, reverse=True)[: self.keep]
        for prefix, keys in prefixes.items():
            if prefix not in newest:
                for key in keys:
                    self.store.delete(key)

    def _file_key(self, name: str) -> str:
        return run_key(self.run_id, f"{CHECKPOINTS_DIR}/{name}")
