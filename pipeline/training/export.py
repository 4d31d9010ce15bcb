"""Export the trained generators of a run: Keras files, a SavedModel for serving, reference images.

    generator.keras              the EMA generator, which evaluation loads
    generator_raw.keras          the generator's own weights, for comparison in a report
    generator_savedmodel/...     SavedModel of the EMA generator (keras.Model.export), signature
                                 `serve`: float32 latents (N, latent_dim) -> images (N, H, W, C) in [-1, 1]
    generator_reference.npz      `latents` (4, latent_dim) float32 and `images` (4, H, W, C) uint8 that
                                 the EMA generator made before saving: a reloaded generator must
                                 reproduce `images` exactly
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np

from pipeline.data.pixels import to_uint8
from pipeline.layout import (
    GENERATOR_FILE,
    GENERATOR_RAW_FILE,
    GENERATOR_REFERENCE_FILE,
    GENERATOR_SAVEDMODEL_DIR,
    run_key,
)
from pipeline.storage.base import ArtifactStore

log = logging.getLogger(__name__)

REFERENCE_COUNT = 4


def export_generators(gan, store: ArtifactStore, run_id: str, latents: np.ndarray, work_dir: Path) -> dict[str, str]:
    """Save and upload the generators of `gan`; return {"generator_key", "generator_raw_key", "savedmodel_key"}.

    savedmodel_key is the key of the SavedModel's saved_model.pb; its directory is the SavedModel.

    `latents` are the run's fixed latents; the first REFERENCE_COUNT of them make the reference images.
    """
    work_dir = Path(work_dir)
    keys = {
        "generator_key": _save_keras(gan.ema_generator, store, run_key(run_id, GENERATOR_FILE), work_dir),
        "generator_raw_key": _save_keras(gan.generator, store, run_key(run_id, GENERATOR_RAW_FILE), work_dir),
        "savedmodel_key": _export_savedmodel(gan.ema_generator, store, run_id, work_dir),
    }

    reference_latents = np.asarray(latents[:REFERENCE_COUNT], dtype=np.float32)
    reference_images = generate_uint8(gan.ema_generator, reference_latents)
    buffer = io.BytesIO()
    np.savez(buffer, latents=reference_latents, images=reference_images)
    store.put_bytes(run_key(run_id, GENERATOR_REFERENCE_FILE), buffer.getvalue())
    log.info("run %s: exported generators %s", run_id, ", ".join(store.location(key) for key in keys.values()))
    return keys


def generate_uint8(generator, latents: np.ndarray) -> np.ndarray:
    """Return uint8 images (N, H, W, C) that `generator` makes from float32 `latents` in inference mode."""
    return to_uint8(generator(latents, training=False))


def _save_keras(model, store: ArtifactStore, key: str, work_dir: Path) -> str:
    path = work_dir / key.rsplit("/", 1)[-1]
    model.save(path)
    store.put_file(key, path)
    return key


def _export_savedmodel(model, store: ArtifactStore, run_id: str, work_dir: Path) -> str:
    directory = work_dir / GENERATOR_SAVEDMODEL_DIR
    model.export(str(directory), format="tf_saved_model", verbose=False)
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            relative = path.relative_to(directory).as_posix()
            store.put_file(run_key(run_id, f"{GENERATOR_SAVEDMODEL_DIR}/{relative}"), path)
    return run_key(run_id, f"{GENERATOR_SAVEDMODEL_DIR}/saved_model.pb")
