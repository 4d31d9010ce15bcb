"""The evaluate step on a real Fashion-MNIST slice, with a small untrained generator in a local store."""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import PipelineConfig
from pipeline.data.fetch import fetch_dataset
from pipeline.data.prepare import prepare_dataset
from pipeline.errors import EvaluationError
from pipeline.evaluation import classifier as classifier_module
from pipeline.evaluation.evaluate import evaluate_run
from pipeline.evaluation.report import loss_curve_png, render_report_html
from pipeline.layout import evaluator_prefix, run_key
from pipeline.storage.local import LocalStore

RUN_ID = "manual-run-1"
LATENT_DIM = 16
SETTINGS = {
    "max_train_examples": 512,
    "max_test_examples": 256,
    "latent_dim": LATENT_DIM,
    "num_samples": 128,
    "classifier_epochs": 1,
    "kid_subset_size": 64,
    "kid_subsets": 4,
}
METRICS_ROWS = [
    {"step": 10, "epoch": 1, "d_loss": 1.3, "g_loss": 0.8, "images_per_second": 650.0},
    {"step": 20, "epoch": 1, "d_loss": 1.2, "g_loss": 0.9, "images_per_second": 700.0},
    {"step": 30, "epoch": 2, "d_loss": 1.1, "g_loss": 1.0, "images_per_second": 710.0},
]


CHROMIUM = "/usr/bin/chromium"


def render_in_chromium(page: Path, directory: Path) -> tuple[np.ndarray, list[str]]:
    """Render `page` in headless Chromium; return the screenshot, uint8 (H, W, 3), and the console lines.

    Chromium logs every console message and uncaught exception at INFO level as a ":CONSOLE" line,
    whatever its console level, so all of them are returned. Skips the test without Chromium.
    """
    binary = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if binary is None:
        pytest.skip("chromium not found: install the Debian package chromium to render the report")

    screenshot = directory / "report.png"
    command = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--enable-logging=stderr", "--v=0", f"--user-data-dir={directory / 'profile'}",
        "--window-size=1200,2400", f"--screenshot={screenshot}", page.resolve().as_uri(),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert screenshot.is_file(), f"chromium wrote no screenshot (exit {completed.returncode}): {completed.stderr[-2000:]}"

    console = [line for line in completed.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    return np.asarray(Image.open(screenshot).convert("RGB")), console


@dataclass
class Evaluated:
    config: PipelineConfig
    store: LocalStore
    fingerprint: str
    result: dict
    root: Path


def build_generator(latent_dim: int, size: int = 28):
    """A small untrained generator: latent (B, latent_dim) -> images (B, size, size, 1) in [-1, 1]."""
    import keras

    quarter = size // 4
    latent = keras.Input(shape=(latent_dim,))
    x = keras.layers.Dense(quarter * quarter * 8, activation="relu")(latent)
    x = keras.layers.Reshape((quarter, quarter, 8))(x)
    x = keras.layers.Conv2DTranspose(8, 4, strides=2, padding="same", activation="relu")(x)
    generated_images = keras.layers.Conv2DTranspose(1, 4, strides=2, padding="same", activation="tanh")(x)
    return keras.Model(latent, generated_images)


def put_run(store: LocalStore, root: Path, run_id: str, fingerprint: str, generator) -> None:
    """Write the objects that the train step leaves under runs/<run_id>/."""
    path = root / f"{run_id}-generator.keras"
    generator.save(path)
    store.put_file(run_key(run_id, "generator.keras"), path)

    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(0).standard_normal((64, LATENT_DIM)).astype(np.float32))
    store.put_bytes(run_key(run_id, "fixed_latents.npy"), buffer.getvalue())
    lines = "".join(json.dumps(row) + "\n" for row in METRICS_ROWS)
    store.put_bytes(run_key(run_id, "metrics.jsonl"), lines.encode())
    store.put_json(
        run_key(run_id, "train.json"),
        {
            "run_id": run_id,
            "fingerprint": fingerprint,
            "latent_dim": LATENT_DIM,
            "steps": 30,
            "d_loss": 1.1,
            "g_loss": 1.0,
            "train_settings": {"loss": "hinge", "update_scheme": "simultaneous", "checkpoint_every": 500},
        },
    )


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, fashion_mnist_dir) -> Evaluated:
    import keras

    root = tmp_path_factory.mktemp("evaluate")
    config = PipelineConfig.from_mapping({**SETTINGS, "cache_dir": str(root / "cache")})
    store = LocalStore(root / "store")
    fingerprint = prepare_dataset(config, store)["fingerprint"]

    keras.utils.set_random_seed(1)
    put_run(store, root, RUN_ID, fingerprint, build_generator(LATENT_DIM))
    result = evaluate_run(config, store, fingerprint, RUN_ID)
    return Evaluated(config, store, fingerprint, result, root)


def test_evaluate_report_json_parses(evaluated):
    report = json.loads(Path(evaluated.store.location(evaluated.result["report_key"])).read_text())

    assert report["schema_version"] == 2
    assert report["run_id"] == RUN_ID
    assert report["fingerprint"] == evaluated.fingerprint


def test_evaluate_metrics_are_finite(evaluated):
    for name in ("fid", "kid_mean", "kid_std", "classifier_test_accuracy"):
        assert math.isfinite(evaluated.result[name]), name


def test_evaluate_fid_is_positive_for_untrained_generator(evaluated):
    assert evaluated.result["fid"] > 0.0


def test_evaluate_states_sample_counts(evaluated):
    assert evaluated.result["num_generated"] == 128
    assert evaluated.result["num_real"] == 128


def test_evaluate_report_records_counts_and_extractor(evaluated):
    report = evaluated.store.get_json(evaluated.result["report_key"])

    assert report["real"] == {"split": "test", "num_real": 128, "num_available": 256}
    assert report["metrics"]["kid"]["subset_size"] == 64
    assert report["metrics"]["kid"]["num_subsets"] == 4
    assert report["extractor"]["name"] == classifier_module.EXTRACTOR_NAME
    assert report["classifier"]["test_accuracy"] == evaluated.result["classifier_test_accuracy"]


def test_evaluate_report_records_final_losses(evaluated):
    report = evaluated.store.get_json(evaluated.result["report_key"])

    assert report["final_losses"] == {"steps": 30, "d_loss": 1.1, "g_loss": 1.0}


def test_evaluate_caches_classifier_with_accuracy(evaluated):
    info = evaluated.store.get_json(evaluator_prefix(evaluated.fingerprint) + "classifier.json")

    assert info["test_accuracy"] == evaluated.result["classifier_test_accuracy"]
    assert info["epochs"] == 1
    assert info["feature_dim"] == classifier_module.FEATURE_DIM
    assert info["num_test"] == 256


def test_evaluate_html_embeds_images(evaluated):
    page = Path(evaluated.store.location(evaluated.result["report_html_key"])).read_text()

    assert page.count('src="data:image/png;base64,') == 5


def test_evaluate_html_has_no_external_references(evaluated):
    page = Path(evaluated.store.location(evaluated.result["report_html_key"])).read_text()

    assert "http://" not in page
    assert "https://" not in page


def test_evaluate_html_states_counts_and_accuracy(evaluated):
    page = Path(evaluated.store.location(evaluated.result["report_html_key"])).read_text()

    assert "128 generated vs 128 real" in page
    assert f"{evaluated.result['classifier_test_accuracy']:.4f}" in page


def test_report_records_training_settings(evaluated):
    report = evaluated.store.get_json(evaluated.result["report_key"])
    page = Path(evaluated.store.location(evaluated.result["report_html_key"])).read_text()

    assert report["training_settings"] == {"loss": "hinge", "update_scheme": "simultaneous"}
    assert "<td>update_scheme</td><td>simultaneous</td>" in page


def test_first_run_html_says_nothing_promoted_yet(evaluated):
    page = Path(evaluated.store.location(evaluated.result["report_html_key"])).read_text()

    assert "No model was promoted when this run was evaluated" in page
    assert "<code>promotion</code> in its run.json" in page


def test_evaluate_second_call_reuses_report(evaluated):
    report_path = Path(evaluated.store.location(evaluated.result["report_key"]))
    before = (report_path.read_bytes(), report_path.stat().st_mtime_ns)

    again = evaluate_run(evaluated.config, evaluated.store, evaluated.fingerprint, RUN_ID)

    assert again == evaluated.result
    assert (report_path.read_bytes(), report_path.stat().st_mtime_ns) == before


def test_evaluate_reuses_cached_classifier(evaluated, monkeypatch):
    import keras

    def fail_if_called(*args, **kwargs):
        raise AssertionError("train_classifier was called although a cached classifier exists")

    monkeypatch.setattr(classifier_module, "train_classifier", fail_if_called)
    info_path = Path(evaluated.store.location(evaluator_prefix(evaluated.fingerprint) + "classifier.json"))
    info_before = info_path.read_bytes()
    generator = keras.models.load_model(
        evaluated.store.location(run_key(RUN_ID, "generator.keras")), compile=False
    )
    put_run(evaluated.store, evaluated.root, "manual-run-2", evaluated.fingerprint, generator)

    result = evaluate_run(evaluated.config, evaluated.store, evaluated.fingerprint, "manual-run-2")

    assert info_path.read_bytes() == info_before
    assert result["fid"] == pytest.approx(evaluated.result["fid"], rel=1e-6)
    assert result["kid_mean"] == pytest.approx(evaluated.result["kid_mean"], rel=1e-6, abs=1e-9)


def test_load_or_train_classifier_reports_reuse(evaluated):
    directory, manifest = fetch_dataset(evaluated.store, evaluated.fingerprint, evaluated.config.cache_dir)

    _, info = classifier_module.load_or_train_classifier(
        evaluated.store, evaluated.fingerprint, directory, manifest, epochs=1, seed=0
    )

    assert info["reused"] is True


def test_extract_features_shape_and_dtype(evaluated):
    directory, manifest = fetch_dataset(evaluated.store, evaluated.fingerprint, evaluated.config.cache_dir)
    model, _ = classifier_module.load_or_train_classifier(
        evaluated.store, evaluated.fingerprint, directory, manifest, epochs=1, seed=0
    )
    images = np.random.default_rng(0).uniform(-1, 1, size=(10, 28, 28, 1)).astype(np.float32)

    features = classifier_module.extract_features(model, images, batch_size=4)

    assert features.shape == (10, classifier_module.FEATURE_DIM)
    assert features.dtype == np.float64


def test_extract_features_rejects_wrong_shape(evaluated):
    directory, manifest = fetch_dataset(evaluated.store, evaluated.fingerprint, evaluated.config.cache_dir)
    model, _ = classifier_module.load_or_train_classifier(
        evaluated.store, evaluated.fingerprint, directory, manifest, epochs=1, seed=0
    )

    with pytest.raises(EvaluationError, match="do not fit the feature classifier"):
        classifier_module.extract_features(model, np.zeros((2, 32, 32, 1), np.float32))


def test_evaluate_report_of_other_fingerprint(evaluated):
    with pytest.raises(EvaluationError, match="delete that report"):
        evaluate_run(evaluated.config, evaluated.store, "0" * 20, RUN_ID)


def test_evaluate_rejects_unfinished_training(evaluated):
    with pytest.raises(EvaluationError, match="run the train step first"):
        evaluate_run(evaluated.config, evaluated.store, evaluated.fingerprint, "never-trained")


def test_evaluate_rejects_generator_of_other_size(evaluated):
    put_run(evaluated.store, evaluated.root, "wrong-size", evaluated.fingerprint, build_generator(LATENT_DIM, size=32))

    with pytest.raises(EvaluationError, match=r"outputs images of shape \(32, 32, 1\)"):
        evaluate_run(evaluated.config, evaluated.store, evaluated.fingerprint, "wrong-size")


def test_evaluate_skips_malformed_metrics_lines(evaluated, caplog):
    run_id = "bad-metrics"
    generator = build_generator(LATENT_DIM)
    put_run(evaluated.store, evaluated.root, run_id, evaluated.fingerprint, generator)
    lines = b'{"step": 1, "d_loss": 1.0, "g_loss": 1.0}\nnot json\n[1]\n'
    evaluated.store.put_bytes(run_key(run_id, "metrics.jsonl"), lines)

    with caplog.at_level("WARNING", logger="pipeline.evaluation.evaluate"):
        evaluate_run(evaluated.config, evaluated.store, evaluated.fingerprint, run_id)

    assert "skipped 2 lines" in caplog.text


def test_loss_curve_png_without_rows_is_none():
    assert loss_curve_png([{"step": 1, "d_loss": None, "g_loss": 0.5}]) is None


def test_render_report_html_escapes_run_id():
    report = {
        "run_id": "<script>",
        "fingerprint": "abc",
        "metrics": {
            "fid": {"value": 1.5, "num_real": 10, "num_generated": 10},
            "kid": {
                "mean": 0.01,
                "std": 0.001,
                "subset_size": 5,
                "num_subsets": 2,
                "num_real": 10,
                "num_generated": 10,
            },
        },
        "real": {"split": "test", "num_real": 10, "num_available": 20},
        "extractor": {"name": "cnn", "test_accuracy": 0.9},
    }

    page = render_report_html(report, {})

    assert "<script>" not in page
    assert "&lt;script&gt;" in page


def test_evaluate_report_has_noise_floor(evaluated):
    report = evaluated.store.get_json(evaluated.result["report_key"])
    floor = report["noise_floor"]

    assert floor["split"] == "train"
    assert floor["num_images"] == 128
    assert floor["metrics"]["fid"]["num_generated"] == 128
    assert math.isfinite(floor["metrics"]["fid"]["value"])


def test_evaluate_real_noise_floor_is_below_untrained_generator(evaluated):
    assert evaluated.result["noise_floor_fid"] < evaluated.result["fid"]


def test_evaluate_report_has_precision_recall_and_coverage(evaluated):
    metrics = evaluated.store.get_json(evaluated.result["report_key"])["metrics"]

    assert metrics["precision_recall"]["k"] == 3
    assert 0.0 <= metrics["precision_recall"]["precision"] <= 1.0
    assert 0.0 <= metrics["precision_recall"]["recall"] <= 1.0
    assert sum(metrics["class_coverage"]["histogram"]) == 128
    assert len(metrics["class_coverage"]["histogram"]) == 10


def test_evaluate_report_has_nearest_training_images(evaluated):
    nearest = evaluated.store.get_json(evaluated.result["report_key"])["nearest"]

    assert len(nearest["train_indices"]) == 8
    assert all(len(row) == 3 for row in nearest["train_indices"])
    assert all(0 <= index < 128 for row in nearest["train_indices"] for index in row)


def test_evaluate_caches_reference_statistics(evaluated):
    keys = [info.key for info in evaluated.store.list(evaluator_prefix(evaluated.fingerprint) + "reference/")]

    assert sorted(keys) == [
        evaluator_prefix(evaluated.fingerprint) + f"reference/{split}-{classifier_module.EXTRACTOR_NAME}-128.npz"
        for split in ("test", "train")
    ]


@pytest.fixture(scope="module")
def second_run(evaluated) -> dict:
    """Publish the first run, then evaluate a run with a raw generator beside it, which finds the first as history and best."""
    from pipeline.publish import publish_run

    publish_run(evaluated.config, evaluated.store, RUN_ID, evaluated.fingerprint, evaluated.result)
    run_id = "nightly-2"
    generator = build_generator(LATENT_DIM)
    put_run(evaluated.store, evaluated.root, run_id, evaluated.fingerprint, generator)
    raw_path = evaluated.root / "raw.keras"
    build_generator(LATENT_DIM).save(raw_path)
    evaluated.store.put_file(run_key(run_id, "generator_raw.keras"), raw_path)

    result = evaluate_run(evaluated.config, evaluated.store, evaluated.fingerprint, run_id)
    return evaluated.store.get_json(result["report_key"])


def test_second_run_reuses_reference_statistics(second_run):
    assert second_run["reference"]["test"]["reused"] is True
    assert second_run["reference"]["train"]["reused"] is True


def test_second_run_lists_first_in_history(second_run):
    assert [run["run_id"] for run in second_run["history"]] == [RUN_ID]


def test_second_run_compares_with_promoted(second_run, evaluated):
    promoted = second_run["promoted"]

    assert promoted["run_id"] == RUN_ID
    assert promoted["comparable"] is True
    assert promoted["fid_change"] == pytest.approx(second_run["metrics"]["fid"]["value"] - evaluated.result["fid"])


def test_second_run_html_shows_raw_grid_and_promoted(second_run, evaluated):
    page = Path(evaluated.store.location(run_key("nightly-2", "report.html"))).read_text()

    assert "Samples from the fixed latents (raw generator, without the moving average)" in page
    assert f"Promoted run <code>{RUN_ID}</code>" in page
    assert page.count('src="data:image/png;base64,') == 6


def test_report_html_renders_in_chromium(second_run, evaluated, tmp_path):
    page = Path(evaluated.store.location(run_key("nightly-2", "report.html")))

    pixels, console = render_in_chromium(page, tmp_path)

    assert pixels.std() > 10.0, "the screenshot is blank"
    assert console == []


def test_chromium_check_catches_script_errors(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<html><body><h1>report</h1><script>throw new Error('broken');</script></body></html>")

    _, console = render_in_chromium(page, tmp_path)

    assert any("Uncaught Error: broken" in line for line in console)
