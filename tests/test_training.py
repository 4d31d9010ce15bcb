"""The train step end to end on a 256-image Fashion-MNIST slice: outputs, reuse, resume, non-finite loss."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from pipeline.config import PipelineConfig, TrainConfig  # noqa: E402
from pipeline.data.prepare import prepare_dataset  # noqa: E402
from pipeline.errors import TrainingError  # noqa: E402
from pipeline.layout import run_key  # noqa: E402
from pipeline.storage.local import LocalStore  # noqa: E402
from pipeline.training import train as train_module  # noqa: E402
from pipeline.training.callbacks import TrainingCallback  # noqa: E402
from pipeline.training.samples import image_grid, make_fixed_latents  # noqa: E402
from pipeline.training.train import plan_training, train_gan  # noqa: E402

# Checkpoint key of a Keras 3 optimizer's update counter, below the optimizer's name.
ITERATIONS_KEY = "_iterations/.ATTRIBUTES/VARIABLE_VALUE"

# 256 training images in batches of 64: 4 steps per epoch.
BASE_SETTINGS = {
    "max_train_examples": 256,
    "max_test_examples": 64,
    "records_per_shard": 100,
    "batch_size": 64,
    "latent_dim": 32,
    "checkpoint_every": 2,
    "log_every": 2,
}


@dataclass
class Dataset:
    root: Path
    store: LocalStore
    fingerprint: str

    def config(self, **overrides) -> PipelineConfig:
        values = {
            **BASE_SETTINGS,
            # Debian's IDX files, which the fashion_mnist_dir fixture requires.
            "source": "fashion_mnist",
            "store_uri": str(self.root / "store"),
            "cache_dir": str(self.root / "cache"),
            **overrides,
        }
        return PipelineConfig.from_mapping(values)


class Interrupt(Exception):
    """Raised by a test callback to stop training as a killed worker would."""


class RaiseAfterStep(TrainingCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, step, logs):
        if step == self.step:
            raise Interrupt(f"interrupted after step {step}")


class PoisonDiscriminatorAfterStep(TrainingCallback):
    """Fill the discriminator's output kernel with NaN after `step`, so the next d_loss is NaN."""

    def __init__(self, step: int):
        self.step = step
        self.gan = None

    def on_train_begin(self, gan, step):
        self.gan = gan

    def on_step_end(self, step, logs):
        if step == self.step:
            kernel = self.gan.discriminator.get_layer("logits").kernel
            kernel.assign(np.full(kernel.shape, np.nan, dtype=np.float32))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, fashion_mnist_dir) -> Dataset:
    root = tmp_path_factory.mktemp("training")
    store = LocalStore(root / "store")
    dataset = Dataset(root, store, fingerprint="")
    dataset.fingerprint = prepare_dataset(dataset.config(), store)["fingerprint"]
    return dataset


@pytest.fixture(scope="module")
def finished(dataset):
    """One complete run of 1 epoch (4 steps)."""
    return train_gan(dataset.config(epochs=1), dataset.store, dataset.fingerprint, "finished")


@pytest.fixture(scope="module")
def resumed(dataset):
    """A 4-step run interrupted after step 3 (its checkpoint is at step 2), then run again to the end."""
    config = dataset.config(steps=4, log_every=1)
    with pytest.raises(Interrupt):
        train_gan(config, dataset.store, dataset.fingerprint, "resumed", callbacks=[RaiseAfterStep(3)])
    interrupted_latest = dataset.store.get_json(run_key("resumed", "checkpoints/latest.json"))
    result = train_gan(config, dataset.store, dataset.fingerprint, "resumed")
    return interrupted_latest, result


@pytest.fixture(scope="module")
def poisoned(dataset):
    """A run whose discriminator is poisoned after step 2; returns the TrainingError it raised."""
    with pytest.raises(TrainingError) as raised:
        train_gan(
            dataset.config(steps=4),
            dataset.store,
            dataset.fingerprint,
            "poisoned",
            callbacks=[PoisonDiscriminatorAfterStep(2)],
        )
    return raised.value


def _metrics_rows(store: LocalStore, run_id: str) -> list[dict]:
    return [json.loads(line) for line in store.get_bytes(run_key(run_id, "metrics.jsonl")).decode().splitlines()]


def _load_generator(store: LocalStore, run_id: str, directory: Path):
    path = store.get_file(run_key(run_id, "generator.keras"), directory / f"{run_id}.keras")
    return keras.models.load_model(path)


def _checkpoint_value(store: LocalStore, run_id: str, name: str, directory: Path):
    """Read variable `name` (a tf.train.Checkpoint key) from the run's latest checkpoint."""
    latest = store.get_json(run_key(run_id, "checkpoints/latest.json"))
    for file_name in latest["files"]:
        store.get_file(run_key(run_id, f"checkpoints/{file_name}"), directory / file_name)
    return tf.train.load_checkpoint(str(directory / latest["prefix"])).get_tensor(name)


# Plan and helpers


def test_plan_training_by_epochs():
    plan = plan_training(TrainConfig(epochs=3, batch_size=64), steps_per_epoch=4)

    assert plan.total_steps == 12
    assert plan.num_epochs == 3
    assert not plan.by_steps


def test_plan_training_by_steps_overrides_epochs():
    plan = plan_training(TrainConfig(epochs=3, steps=6, batch_size=64), steps_per_epoch=4)

    assert plan.total_steps == 6
    assert plan.num_epochs == 2
    assert plan.by_steps


def test_plan_epoch_of_step():
    plan = plan_training(TrainConfig(epochs=3), steps_per_epoch=4)

    assert [plan.epoch_of(step) for step in (0, 1, 4, 5, 8, 9)] == [1, 1, 1, 2, 2, 3]


def test_image_grid_tiles_rows_of_columns():
    images = np.arange(5 * 2 * 3 * 1, dtype=np.uint8).reshape(5, 2, 3, 1)

    grid = image_grid(images)

    assert grid.shape == (2 * 2, 3 * 3, 1)
    assert np.array_equal(grid[2:4, 0:3], images[3])
    assert not grid[2:4, 6:9].any()


def test_make_fixed_latents_repeat_for_seed():
    assert np.array_equal(make_fixed_latents(7, 4), make_fixed_latents(7, 4))
    assert make_fixed_latents(7, 4).shape == (64, 4)


# A complete run


def test_train_gan_returns_small_result(finished):
    assert sorted(finished) == ["d_loss", "g_loss", "generator_key", "images_per_second", "run_id", "steps"]
    assert finished["steps"] == 4
    assert finished["generator_key"] == "runs/finished/generator.keras"
    assert np.isfinite(finished["d_loss"])
    assert np.isfinite(finished["g_loss"])
    assert finished["images_per_second"] > 0


def test_train_gan_writes_summary(dataset, finished):
    summary = dataset.store.get_json(run_key("finished", "train.json"))

    assert summary["steps"] == 4
    assert summary["epochs"] == 1
    assert summary["image_shape"] == [28, 28, 1]
    assert summary["fingerprint"] == dataset.fingerprint
    assert summary["resumed_from_step"] == 0
    assert summary["d_loss"] == finished["d_loss"]


def test_train_gan_writes_metrics_per_log_interval(dataset, finished):
    rows = _metrics_rows(dataset.store, "finished")

    assert [row["step"] for row in rows] == [2, 4]
    assert [row["epoch"] for row in rows] == [1, 1]
    assert sorted(rows[0]) == ["d_loss", "epoch", "g_loss", "images_per_second", "step"]


def test_train_gan_writes_sample_grid(dataset, finished, tmp_path):
    path = dataset.store.get_file(run_key("finished", "samples/epoch-0001.png"), tmp_path / "grid.png")

    with Image.open(path) as grid:
        assert grid.format == "PNG"
        assert grid.size == (8 * 28, 8 * 28)
        assert grid.mode == "L"


def test_train_gan_writes_fixed_latents_once(dataset, finished):
    assert dataset.store.exists(run_key("finished", "fixed_latents.npy"))


def test_train_gan_checkpoint_at_last_step(dataset, finished, tmp_path):
    latest = dataset.store.get_json(run_key("finished", "checkpoints/latest.json"))

    assert latest["step"] == 4
    assert _checkpoint_value(dataset.store, "finished", "step/.ATTRIBUTES/VARIABLE_VALUE", tmp_path) == 4


def test_reloaded_generator_makes_dataset_shape(dataset, finished, tmp_path):
    generator = _load_generator(dataset.store, "finished", tmp_path)

    generated_images = generator(np.zeros((2, 32), dtype=np.float32), training=False).numpy()

    assert generated_images.shape == (2, 28, 28, 1)
    assert np.abs(generated_images).max() <= 1.0


def test_train_gan_second_call_skips_training(dataset, finished, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("run_steps called for a finished run")

    monkeypatch.setattr(train_module, "run_steps", fail)

    assert train_gan(dataset.config(epochs=1), dataset.store, dataset.fingerprint, "finished") == finished


def test_train_gan_finished_run_other_dataset(dataset, finished):
    with pytest.raises(TrainingError, match="use a new run_id"):
        train_gan(dataset.config(epochs=1), dataset.store, "0" * 20, "finished")


# Resume after an interruption


def test_interrupted_run_keeps_checkpoint_at_step_2(resumed):
    interrupted_latest, _ = resumed

    assert interrupted_latest["step"] == 2


def test_resumed_run_ends_at_full_step_count(dataset, resumed):
    _, result = resumed
    summary = dataset.store.get_json(run_key("resumed", "train.json"))

    assert result["steps"] == 4
    assert summary["resumed_from_step"] == 2


def test_resumed_run_counters_continue(dataset, resumed, tmp_path):
    step = _checkpoint_value(dataset.store, "resumed", "step/.ATTRIBUTES/VARIABLE_VALUE", tmp_path)
    g_iterations = _checkpoint_value(dataset.store, "resumed", f"g_optimizer/{ITERATIONS_KEY}", tmp_path)
    d_iterations = _checkpoint_value(dataset.store, "resumed", f"d_optimizer/{ITERATIONS_KEY}", tmp_path)

    assert step == 4
    assert g_iterations == 4
    assert d_iterations == 4


def test_resumed_run_metrics_have_no_duplicates(dataset, resumed):
    assert [row["step"] for row in _metrics_rows(dataset.store, "resumed")] == [1, 2, 3, 4]


def test_resumed_run_matches_uninterrupted_run(dataset, resumed, tmp_path):
    train_gan(dataset.config(steps=4, log_every=1), dataset.store, dataset.fingerprint, "uninterrupted")

    resumed_weights = _load_generator(dataset.store, "resumed", tmp_path).get_weights()
    uninterrupted_weights = _load_generator(dataset.store, "uninterrupted", tmp_path).get_weights()

    assert len(resumed_weights) == len(uninterrupted_weights)
    for resumed_weight, uninterrupted_weight in zip(resumed_weights, uninterrupted_weights):
        np.testing.assert_allclose(resumed_weight, uninterrupted_weight, rtol=0, atol=1e-6)


# Non-finite loss


def test_non_finite_loss_names_step_and_loss(poisoned):
    assert "d_loss is nan at step 3" in str(poisoned)


def test_non_finite_loss_keeps_last_good_checkpoint(dataset, poisoned):
    latest = dataset.store.get_json(run_key("poisoned", "checkpoints/latest.json"))

    assert latest["step"] == 2
    assert not dataset.store.exists(run_key("poisoned", "train.json"))


def test_resume_with_other_latent_dim_raises(dataset, poisoned):
    with pytest.raises(TrainingError, match="latent_dim=16"):
        train_gan(dataset.config(steps=4, latent_dim=16), dataset.store, dataset.fingerprint, "poisoned")


# The same step against the loopback S3 server


def test_s3_run_keeps_two_newest_checkpoints(dataset, s3_env):
    from pipeline.storage import open_store

    config = dataset.config(
        steps=6,
        store_uri=f"s3://{s3_env['bucket']}/artifacts",
        store_endpoint_url=s3_env["endpoint_url"],
        store_create_bucket=True,
    )
    store = open_store(config.store)
    fingerprint = prepare_dataset(config, store)["fingerprint"]

    result = train_gan(config, store, fingerprint, "on-s3")

    checkpoint_keys = [info.key for info in store.list("runs/on-s3/checkpoints/")]
    assert result["steps"] == 6
    assert checkpoint_keys == [
        "runs/on-s3/checkpoints/ckpt-00000004.data-00000-of-00001",
        "runs/on-s3/checkpoints/ckpt-00000004.index",
        "runs/on-s3/checkpoints/ckpt-00000006.data-00000-of-00001",
        "runs/on-s3/checkpoints/ckpt-00000006.index",
        "runs/on-s3/checkpoints/latest.json",
    ]
    assert store.exists("runs/on-s3/train.json")


def test_flip_setting_mirrors_training_batches(dataset):
    from pipeline.data.fetch import fetch_dataset
    from pipeline.training.train import _epoch_batches

    config = dataset.config()
    directory, manifest = fetch_dataset(dataset.store, dataset.fingerprint, config.cache_dir)
    plain = next(iter(_epoch_batches(directory, manifest, config.train, flip=False)(1))).numpy()
    flipped = next(iter(_epoch_batches(directory, manifest, config.train, flip=True)(1))).numpy()
    mirrored = [np.array_equal(flipped[i], plain[i][:, ::-1]) for i in range(len(plain))]

    assert flipped.shape == plain.shape
    assert any(mirrored), "flip=True mirrored no image of the batch"
    assert not all(mirrored), "flip=True mirrored every image of the batch"


def test_flip_setting_keeps_fingerprint(dataset):
    from pipeline.data.prepare import preprocessing_settings

    assert preprocessing_settings(dataset.config(flip=True)) == preprocessing_settings(dataset.config())


def _stored_events(store, run_id, tmp_path) -> list[tuple[str, int]]:
    """Return (tag, step) of every summary value in the run's stored event files."""
    events = []
    for info in store.list(run_key(run_id, "tensorboard/")):
        path = store.get_file(info.key, tmp_path / "read" / info.key.rsplit("/", 1)[-1])
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            events.extend((value.tag, event.step) for value in event.summary.value)
    return events


def _write_killed_attempt(tmp_path, steps) -> LocalStore:
    """Return a store holding the TensorBoard events of an attempt that logged d_loss and g_loss at `steps`."""
    from pipeline.training.tensorboard import TensorBoardWriter

    store = LocalStore(tmp_path / "store")
    attempt = TensorBoardWriter(store, "resumed", tmp_path / "attempt-1")
    for step in steps:
        attempt.write_scalars(step, {"d_loss": 1.0, "g_loss": 0.5})
    attempt.close()
    return store


def _resume_at(store, tmp_path, step: int) -> None:
    from pipeline.training.tensorboard import TensorBoardWriter

    TensorBoardWriter(store, "resumed", tmp_path / "attempt-2").drop_events_after(step)


def test_tensorboard_drops_events_after_resume_step(tmp_path):
    store = _write_killed_attempt(tmp_path, (2, 4, 6))

    _resume_at(store, tmp_path, 4)

    events = _stored_events(store, "resumed", tmp_path)
    assert sorted(events) == [("d_loss", 2), ("d_loss", 4), ("g_loss", 2), ("g_loss", 4)]


def test_tensorboard_drop_keeps_unchanged_file(tmp_path):
    store = _write_killed_attempt(tmp_path, (2,))
    [info] = store.list(run_key("resumed", "tensorboard/"))
    before = store.get_bytes(info.key)

    _resume_at(store, tmp_path, 2)

    assert store.get_bytes(info.key) == before


def test_tensorboard_drop_removes_cut_record(tmp_path):
    store = _write_killed_attempt(tmp_path, (2,))
    [info] = store.list(run_key("resumed", "tensorboard/"))
    complete = store.get_bytes(info.key)
    store.put_bytes(info.key, complete + complete[-30:-5])

    _resume_at(store, tmp_path, 2)

    assert store.get_bytes(info.key) == complete
