"""Consumer side: download the generator of a published run, verify it, and write generated images.

`python -m pipeline generate --model best --count 64 --out grid.png` names the run by a pointer
(`best`, `latest`) or by its run id. Only complete runs (with run.json) are used, and the generator
file must have the sha256 that run.json records, so a consumer never loads a half-written or
replaced model.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import PipelineConfig
from pipeline.errors import PipelineError, StoreError
from pipeline.layout import (
    BEST_POINTER,
    FIXED_LATENTS_FILE,
    GENERATOR_FILE,
    LATEST_POINTER,
    RUN_JSON,
    run_key,
    safe_run_id,
)
from pipeline.storage.base import ArtifactStore, sha256_file

logger = logging.getLogger(__name__)

# Second entropy word of the seed of random latents; evaluation uses 1, and the fixed latents none.
LATENT_STREAM = 2

POINTERS = {"best": BEST_POINTER, "latest": LATEST_POINTER}
LATENT_SOURCES = ("random", "fixed")


def resolve_run_id(store: ArtifactStore, model: str) -> str:
    """Return the run id that `model` names: `best`, `latest`, or a run id of a complete run."""
    if model in POINTERS:
        key = POINTERS[model]
        if not store.exists(key):
            raise StoreError(
                f"{store.location(key)} not found: no run has been published as {model} yet. "
                "Run `python -m pipeline run` or the gan_retraining DAG first, or pass --model RUN_ID"
            )
        return store.get_json(key)["run_id"]

    run_id = safe_run_id(model)
    if not store.exists(run_key(run_id, RUN_JSON)):
        raise StoreError(
            f"run {run_id} is not complete or does not exist ({store.location(run_key(run_id, RUN_JSON))} "
            "not found): pass best, latest or the id of a published run (see `python -m pipeline runs`)"
        )
    return run_id


def fetch_generator(store: ArtifactStore, run_id: str, cache_dir: str | Path) -> Path:
    """Download the generator of `run_id` into `cache_dir/models/<run_id>/` and verify its sha256.

    A cached file with the recorded sha256 is reused. Raises StoreError when run.json records no
    generator or the downloaded file's sha256 differs from the recorded one.
    """
    record = store.get_json(run_key(run_id, RUN_JSON))
    key = run_key(run_id, GENERATOR_FILE)
    expected = next((entry["sha256"] for entry in record.get("objects", []) if entry["key"] == key), None)
    if expected is None:
        raise StoreError(f"run.json of run {run_id} lists no {GENERATOR_FILE}: publish the run again")

    path = Path(cache_dir) / "models" / run_id / GENERATOR_FILE
    if path.is_file() and sha256_file(path) == expected:
        logger.info("run %s: using the cached generator %s", run_id, path)
        return path

    store.get_file(key, path)
    actual = sha256_file(path)
    if actual != expected:
        path.unlink()
        raise StoreError(
            f"generator {store.location(key)} has sha256 {actual}, but run.json of run {run_id} records "
            f"{expected}: the object was replaced after publishing, so re-run the train and publish steps"
        )
    logger.info("run %s: downloaded generator %s (sha256 %s)", run_id, store.location(key), actual)
    return path


def generation_latents(
    store: ArtifactStore, run_id: str, source: str, count: int, latent_dim: int, seed: int
) -> np.ndarray:
    """Return float32 latents (count, latent_dim): standard normal from `seed`, or the run's fixed latents.

    `random` draws from numpy's default_rng((seed, LATENT_STREAM)), a different stream from the one
    that made the run's fixed latents (default_rng(seed)), so no seed reproduces the sample grids by accident. `fixed` uses the first
    `count` rows of the run's `fixed_latents.npy`, so the output matches those grids.
    """
    if source == "random":
        return np.random.default_rng((seed, LATENT_STREAM)).standard_normal((count, latent_dim)).astype(np.float32)
    if source != "fixed":
        raise PipelineError(f"latent source {source!r} is invalid: use one of {LATENT_SOURCES}")

    latents = np.load(io.BytesIO(store.get_bytes(run_key(run_id, FIXED_LATENTS_FILE))), allow_pickle=False)
    if count > latents.shape[0]:
        raise PipelineError(
            f"run {run_id} stores {latents.shape[0]} fixed latents, fewer than --count {count}: "
            "lower --count or use --latents random"
        )
    return latents[:count]


def generate_images(
    config: PipelineConfig,
    store: ArtifactStore,
    model: str,
    count: int,
    out: str | Path,
    *,
    latents: str = "random",
    seed: int | None = None,
) -> dict[str, Any]:
    """Write `count` images of the generator that `model` names: one PNG grid, or one PNG per image.

    `out` ending in `.png` gets a grid tiled like the run's sample grids; any other path is a
    directory that receives `image-0000.png`, `image-0001.png`, ... A None `seed` draws a new one,
    which the result and the log state so the images can be made again. Returns {"run_id",
    "count", "out", "generator_sha256", "latents", "latent_seed"}.
    """
    if count < 1:
        raise PipelineError(f"--count {count} is invalid: generate at least 1 image")
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    run_id = resolve_run_id(store, model)
    path = fetch_generator(store, run_id, config.cache_dir)

    # Keras loads TensorFlow, which takes seconds, so it is imported once the model is known to exist.
    import keras

    from pipeline.data.pixels import to_uint8
    from pipeline.training.samples import write_sample_grid

    generator = keras.models.load_model(path, compile=False)
    latent_dim = int(generator.input_shape[-1])
    latent = generation_latents(store, run_id, latents, count, latent_dim, seed)

    out = Path(out)
    if out.suffix.lower() == ".png":
        write_sample_grid(generator, latent, out)
    else:
        _write_images(to_uint8(generator(latent, training=False)), out)
    logger.info("run %s: wrote %d generated images to %s (%s latents, seed %d)", run_id, count, out, latents, seed)
    return {
        "run_id": run_id,
        "count": count,
        "out": str(out),
        "generator_sha256": sha256_file(path),
        "latents": latents,
        "latent_seed": seed if latents == "random" else None,
    }


def _write_images(images: np.ndarray, directory: Path) -> None:
    from PIL import Image

    from pipeline.training.samples import check_sample_channels

    check_sample_channels(images.shape[-1])
    directory.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        pixels = image[..., 0] if image.shape[-1] == 1 else image
        Image.fromarray(pixels).save(directory / f"image-{index:04d}.png", format="PNG")
