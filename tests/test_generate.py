"""Tests of the consumer side: `generate` from a published run on the loopback S3 server."""

from __future__ import annotations

import io
import json
import uuid

import numpy as np
import pytest
from PIL import Image

from pipeline import cli, steps
from pipeline.errors import StoreError
from pipeline.generate import fetch_generator, resolve_run_id
from pipeline.layout import GENERATOR_FILE, run_key
from pipeline.storage.s3 import S3Store

# A tiny run: 256 training images, 2 steps of 64, 64 images for FID.
SETTINGS = {
    "source": "fashion_mnist",
    "max_train_examples": 256,
    "max_test_examples": 64,
    "records_per_shard": 128,
    "batch_size": 64,
    "latent_dim": 16,
    "steps": 2,
    "num_samples": 64,
    "kid_subset_size": 32,
    "kid_subsets": 2,
    "classifier_epochs": 1,
    "store_create_bucket": True,
}
RUN_ID = "generate-test-run"


@pytest.fixture(scope="module")
def published(s3_server, fashion_mnist_dir, tmp_path_factory):
    """Prepare, train, evaluate and publish one run on a fresh bucket; yields (settings, store)."""
    root = tmp_path_factory.mktemp("generate")
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    values = {
        **SETTINGS,
        "store_uri": f"s3://{bucket}/gan",
        "store_endpoint_url": s3_server,
        "cache_dir": str(root / "cache"),
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.delenv("AWS_PROFILE", raising=False)
        steps.run_all(values, RUN_ID)
        store = S3Store.from_uri(values["store_uri"], endpoint_url=s3_server)
        yield values, store


def _last_sample_grid(store) -> np.ndarray:
    record = store.get_json(run_key(RUN_ID, "run.json"))
    sample_keys = sorted(entry["key"] for entry in record["objects"] if "/samples/" in entry["key"])
    return np.asarray(Image.open(io.BytesIO(store.get_bytes(sample_keys[-1]))))


def _settings_flags(values: dict) -> list[str]:
    """Return the flags of the store settings and cache_dir in `values`, the only ones runs and generate take."""
    return [
        f"--{key.replace('_', '-')}={value}"
        for key, value in values.items()
        if key.startswith("store_") or key == "cache_dir"
    ]


def test_generate_best_reproduces_sample_grid(published, tmp_path, capsys):
    values, store = published
    out = tmp_path / "grid.png"

    code = cli.main(["generate", "--model", "best", "--count", "64", "--latents", "fixed", "--out", str(out),
                     *_settings_flags(values)])

    assert code == 0
    assert json.loads(capsys.readouterr().out)["run_id"] == RUN_ID
    np.testing.assert_array_equal(np.asarray(Image.open(out)), _last_sample_grid(store))


def test_generate_writes_one_png_per_image(published, tmp_path):
    values, _ = published
    out = tmp_path / "images"

    code = cli.main(["generate", "--model", "latest", "--count", "3", "--out", str(out), *_settings_flags(values)])

    assert code == 0
    assert sorted(path.name for path in out.iterdir()) == ["image-0000.png", "image-0001.png", "image-0002.png"]
    assert np.asarray(Image.open(out / "image-0000.png")).shape == (28, 28)


def test_resolve_run_id_accepts_run_id(published):
    _, store = published

    assert resolve_run_id(store, RUN_ID) == RUN_ID


def test_resolve_run_id_rejects_incomplete_run(published):
    _, store = published
    store.put_bytes("runs/unfinished/generator.keras", b"partial")

    with pytest.raises(StoreError, match="run unfinished is not complete"):
        resolve_run_id(store, "unfinished")


def test_fetch_generator_rejects_changed_object(published, tmp_path):
    values, store = published
    key = run_key(RUN_ID, GENERATOR_FILE)
    original = store.get_bytes(key)
    store.put_bytes(key, original + b"tampered")
    try:
        with pytest.raises(StoreError, match="records"):
            fetch_generator(store, RUN_ID, tmp_path / "cache")
    finally:
        store.put_bytes(key, original)

    assert not (tmp_path / "cache" / "models" / RUN_ID / GENERATOR_FILE).exists()


def test_runs_command_lists_promotion_state(published, capsys):
    values, _ = published

    code = cli.main(["runs", *_settings_flags(values)])

    listing = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [run["run_id"] for run in listing["runs"]] == [RUN_ID]
    assert listing["runs"][0]["is_best"] is True
    assert listing["runs"][0]["promoted"] is True


def test_random_latents_differ_from_fixed_latents():
    from pipeline.generate import generation_latents
    from pipeline.training.samples import make_fixed_latents

    random_latents = generation_latents(None, "unused", "random", 16, 8, seed=0)

    assert random_latents.shape == (16, 8)
    assert not np.allclose(random_latents, make_fixed_latents(0, 8, 16))


@pytest.mark.parametrize("command", [["runs"], ["generate", "--out", "grid.png"]])
def test_read_only_command_rejects_missing_store(tmp_path, caplog, command):
    missing = tmp_path / "mistyped-store"

    code = cli.main([*command, "--store-uri", str(missing)])

    assert code == 2
    assert f"store directory {missing} not found" in caplog.text
    assert not missing.exists()


def test_store_path_that_is_a_file_is_rejected(tmp_path, caplog):
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text("epochs: 1\n")

    code = cli.main(["runs", "--store-uri", str(settings_file)])

    assert code == 2
    assert f"store path {settings_file} is not a directory" in caplog.text
