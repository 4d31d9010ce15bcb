"""Objects that the train step leaves under runs/<run_id>/, read back for evaluation.

train.json (written last by training), the generator and its optional raw copy, the fixed
latents of the sample grids, and the metrics.jsonl rows of the loss curves.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import numpy as np

from pipeline.errors import EvaluationError
from pipeline.layout import FIXED_LATENTS_FILE, GENERATOR_FILE, METRICS_FILE, TRAIN_JSON, run_key
from pipeline.storage.base import ArtifactStore

logger = logging.getLogger(__name__)

GRID_SIZE = 64
# Second entropy word of the seed of evaluation latents, so they differ from the fixed latents
# that the train step draws from the same seed.
LATENT_STREAM = 1


def training_summary(store: ArtifactStore, run_id: str, fingerprint: str) -> dict[str, Any]:
    """Return train.json of the run; raise EvaluationError when training has not finished or used another dataset."""
    key = run_key(run_id, TRAIN_JSON)
    if not store.exists(key):
        raise EvaluationError(
            f"training of run {run_id} has not finished ({store.location(key)} not found): run the train step first"
        )
    summary = store.get_json(key)
    if summary.get("fingerprint") not in (None, fingerprint):
        raise EvaluationError(
            f"run {run_id} was trained on dataset {summary['fingerprint']}, not {fingerprint}: "
            "evaluate it with the fingerprint it was trained on"
        )
    return summary


def load_generator(store: ArtifactStore, run_id: str, name: str = GENERATOR_FILE):
    import tempfile
    from pathlib import Path

    import keras

    key = run_key(run_id, name)
    if not store.exists(key):
        raise EvaluationError(
            f"run {run_id} has no generator ({store.location(key)} not found): run the train step first"
        )

    with tempfile.TemporaryDirectory(prefix="generator-") as temporary:
        path = store.get_file(key, Path(temporary) / name)
        try:
            return keras.models.load_model(path, compile=False)
        except (ValueError, TypeError, OSError) as error:
            raise EvaluationError(
                f"cannot load the generator {store.location(key)} as a Keras 3 model: {error}"
            ) from error


def check_generator_fits(generator, manifest, training: dict[str, Any], run_id: str) -> None:
    """Raise EvaluationError unless the generator maps (B, latent_dim) to the dataset's (B, H, W, C)."""
    image_shape = tuple(generator.output_shape[1:])
    expected = (manifest.height, manifest.width, manifest.channels)
    if image_shape != expected:
        raise EvaluationError(
            f"the generator of run {run_id} outputs images of shape {image_shape}, but dataset "
            f"{manifest.fingerprint} has images of shape {expected}: evaluate it on the dataset it was trained on"
        )

    latent_dim = int(generator.input_shape[-1])
    if training.get("latent_dim") not in (None, latent_dim):
        raise EvaluationError(
            f"the generator of run {run_id} takes latents of size {latent_dim}, but train.json records "
            f"latent_dim {training['latent_dim']}: the run's objects come from different attempts; train it again"
        )


def grid_latents(store: ArtifactStore, run_id: str, latent_dim: int, seed: int) -> np.ndarray:
    """Return the run's fixed latents, or the first GRID_SIZE evaluation latents when the run has none."""
    key = run_key(run_id, FIXED_LATENTS_FILE)
    if store.exists(key):
        latent = np.load(io.BytesIO(store.get_bytes(key)), allow_pickle=False)
        if latent.ndim == 2 and latent.shape[1] == latent_dim:
            return latent.astype(np.float32)
        logger.warning("run %s: ignoring %s of shape %s, expected (N, %d)", run_id, key, latent.shape, latent_dim)
    return np.random.default_rng((seed, LATENT_STREAM)).standard_normal((GRID_SIZE, latent_dim)).astype(np.float32)


def metrics_rows(store: ArtifactStore, run_id: str) -> list[dict[str, Any]]:
    """Return the rows of the run's metrics.jsonl; skip, count and log lines that are not JSON objects."""
    key = run_key(run_id, METRICS_FILE)
    if not store.exists(key):
        logger.warning("run %s: %s not found, so the report has no loss curves", run_id, store.location(key))
        return []

    rows, skipped = [], 0
    for line in store.get_bytes(key).decode("utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            skipped += 1
    if skipped:
        logger.warning("run %s: skipped %d lines of %s that are not JSON objects", run_id, skipped, key)
    return rows
