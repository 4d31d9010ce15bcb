"""Training in separate processes: SIGKILL and resume, exports reloaded elsewhere, determinism, MirroredStrategy.

Each subprocess imports this worktree's `pipeline` package (PYTHONPATH), and settings that change
TensorFlow's global state (op determinism, logical CPU devices) stay inside the subprocess.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import pipeline  # noqa: E402
from pipeline.config import PipelineConfig  # noqa: E402
from pipeline.data.prepare import prepare_dataset  # noqa: E402
from pipeline.layout import run_key  # noqa: E402
from pipeline.storage.local import LocalStore  # noqa: E402

PACKAGE_ROOT = Path(pipeline.__file__).resolve().parents[1]

# 256 training images in batches of 64: 4 steps per epoch.
SETTINGS = {
    "source": "fashion_mnist",
    "max_train_examples": 256,
    "max_test_examples": 64,
    "records_per_shard": 100,
    "batch_size": 64,
    "latent_dim": 16,
}

KILLED_RUN_STEPS = 40
SUBPROCESS_TIMEOUT_S = 240


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def _flags(values: dict) -> list[str]:
    flags = []
    for key, value in values.items():
        flags += ["--" + key.replace("_", "-"), str(value)]
    return flags


def _run_script(script: str, *args: str) -> str:
    """Run `script` with python -c in a fresh process; return its last stdout line."""
    completed = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout.strip().splitlines()[-1]


class Workspace:
    def __init__(self, root: Path):
        self.root = root
        self.store = LocalStore(root / "store")
        self.values = {**SETTINGS, "store_uri": str(root / "store"), "cache_dir": str(root / "cache")}
        self.fingerprint = prepare_dataset(PipelineConfig.from_mapping(self.values), self.store)["fingerprint"]

    def train_command(self, run_id: str, **overrides) -> list[str]:
        values = {**self.values, **overrides}
        return [
            sys.executable, "-m", "pipeline", "train", "--fingerprint", self.fingerprint, "--run-id", run_id,
            *_flags(values),
        ]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, fashion_mnist_dir) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("training-process"))


@pytest.fixture(scope="module")
def killed_run(workspace):
    """A CLI training run killed with SIGKILL once its first checkpoint exists, then run again to the end."""
    command = workspace.train_command("killed", steps=KILLED_RUN_STEPS, checkpoint_every=2, log_every=2)
    latest_key = run_key("killed", "checkpoints/latest.json")

    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
    while not workspace.store.exists(latest_key) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    killed = {
        "returncode": process.returncode,
        "latest": workspace.store.get_json(latest_key),
        "finished": workspace.store.exists(run_key("killed", "train.json")),
    }

    completed = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return killed, workspace.store.get_json(run_key("killed", "train.json"))


def test_sigkill_stops_before_finishing(killed_run):
    killed, _ = killed_run

    assert killed["returncode"] == -signal.SIGKILL
    assert not killed["finished"]


def test_sigkill_leaves_complete_checkpoint(killed_run):
    killed, _ = killed_run

    assert killed["latest"]["step"] >= 2
    assert killed["latest"]["step"] < KILLED_RUN_STEPS


def test_restart_after_sigkill_finishes_all_steps(killed_run):
    killed, summary = killed_run

    assert summary["steps"] == KILLED_RUN_STEPS
    assert summary["resumed_from_step"] >= killed["latest"]["step"]


def test_restart_after_sigkill_metrics_reach_last_step(workspace, killed_run):
    lines = workspace.store.get_bytes(run_key("killed", "metrics.jsonl")).decode().splitlines()
    steps = [json.loads(line)["step"] for line in lines]

    assert steps == list(range(2, KILLED_RUN_STEPS + 1, 2))


def test_keras_generator_reloads_pixel_identical(workspace, killed_run, tmp_path):
    reference_path = workspace.store.get_file(run_key("killed", "generator_reference.npz"), tmp_path / "reference.npz")
    generator_path = workspace.store.get_file(run_key("killed", "generator.keras"), tmp_path / "generator.keras")
    output_path = tmp_path / "reloaded.npy"
    script = (
        "import sys, keras, numpy as np\n"
        "from pipeline.training.export import generate_uint8\n"
        "generator = keras.models.load_model(sys.argv[1])\n"
        "np.save(sys.argv[3], generate_uint8(generator, np.load(sys.argv[2])['latents']))\n"
        "print('saved')\n"
    )

    _run_script(script, str(generator_path), str(reference_path), str(output_path))

    reference = np.load(reference_path)
    assert reference["images"].shape == (4, 28, 28, 1)
    np.testing.assert_array_equal(np.load(output_path), reference["images"])


def test_savedmodel_serves_reference_images(workspace, killed_run, tmp_path):
    prefix = run_key("killed", "generator_savedmodel/")
    for info in workspace.store.list(prefix):
        workspace.store.get_file(info.key, tmp_path / "savedmodel" / info.key.removeprefix(prefix))
    reference = np.load(io.BytesIO(workspace.store.get_bytes(run_key("killed", "generator_reference.npz"))))

    savedmodel = tf.saved_model.load(str(tmp_path / "savedmodel"))
    served = savedmodel.serve(tf.constant(reference["latents"]))
    served_uint8 = np.clip(np.round((np.asarray(served) + 1.0) * 127.5), 0, 255).astype(np.int16)

    assert served_uint8.shape == (4, 28, 28, 1)
    assert np.abs(served_uint8 - reference["images"]).max() <= 1


def test_raw_generator_saved_next_to_ema(workspace, killed_run):
    assert workspace.store.exists(run_key("killed", "generator_raw.keras"))


def test_tensorboard_events_in_store(workspace, killed_run, tmp_path):
    tags = set()
    for info in workspace.store.list(run_key("killed", "tensorboard/")):
        path = workspace.store.get_file(info.key, tmp_path / info.key.rsplit("/", 1)[-1])
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(value.tag for value in event.summary.value)

    assert {"d_loss", "g_loss", "images_per_second", "samples"} <= tags


def test_tensorboard_has_one_value_per_step(workspace, killed_run, tmp_path):
    values = []
    for info in workspace.store.list(run_key("killed", "tensorboard/")):
        path = workspace.store.get_file(info.key, tmp_path / info.key.rsplit("/", 1)[-1])
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            values.extend((value.tag, event.step) for value in event.summary.value)

    assert values
    assert len(values) == len(set(values))


DETERMINISM_SCRIPT = """
import json, sys
import keras
import tensorflow as tf
tf.config.experimental.enable_op_determinism()
from pipeline.config import PipelineConfig
from pipeline.data.fetch import fetch_dataset
from pipeline.storage.local import LocalStore
from pipeline.training.train import _epoch_batches, build_gan, make_step_function

values, fingerprint = json.loads(sys.argv[1]), sys.argv[2]
config = PipelineConfig.from_mapping(values)
directory, manifest = fetch_dataset(LocalStore(values["store_uri"]), fingerprint, config.cache_dir)
losses = []
for attempt in range(2):
    keras.utils.set_random_seed(config.train.seed)
    gan = build_gan(config.train, manifest.height, manifest.width, manifest.channels)
    step = make_step_function(gan)
    run_losses = []
    for epoch in range(1, 6):
        for real_images in _epoch_batches(directory, manifest, config.train)(epoch):
            results = step(real_images)
            run_losses.append([float(results["d_loss"]), float(results["g_loss"])])
            gan.reset_metrics()
    losses.append(run_losses[:20])
print(json.dumps(losses))
"""


def test_op_determinism_repeats_first_20_losses(workspace):
    values = {**workspace.values, "seed": 7}

    first, second = json.loads(_run_script(DETERMINISM_SCRIPT, json.dumps(values), workspace.fingerprint))

    assert len(first) == 20
    assert first == second


MIRRORED_SCRIPT = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from pipeline.config import PipelineConfig
from pipeline.storage.local import LocalStore
from pipeline.training.train import train_gan

values, fingerprint = json.loads(sys.argv[1]), sys.argv[2]
store = LocalStore(values["store_uri"])
result = train_gan(PipelineConfig.from_mapping(values), store, fingerprint, "mirrored")
latest = store.get_json("runs/mirrored/checkpoints/latest.json")
summary = store.get_json("runs/mirrored/train.json")
print(json.dumps({**result, "replicas": summary["replicas"], "checkpoint": latest["step"]}))
"""


def test_mirrored_strategy_over_two_cpus(workspace):
    values = {**workspace.values, "steps": 3, "log_every": 1, "checkpoint_every": 2, "distribution": "mirrored"}

    result = json.loads(_run_script(MIRRORED_SCRIPT, json.dumps(values), workspace.fingerprint))

    assert result["replicas"] == 2
    assert result["steps"] == 3
    assert result["checkpoint"] == 3
    assert np.isfinite(result["d_loss"])
    assert np.isfinite(result["g_loss"])
