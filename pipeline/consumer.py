"""Draw a sample grid from the promoted generator: the work of the example DAG scheduled on promotion.

The grid is written to `models/samples/<run_id>.png`, outside `runs/<run_id>/`, because a run's
objects are listed and hashed in its `run.json` when it is published.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Mapping

from pipeline.config import PipelineConfig
from pipeline.errors import StoreError
from pipeline.layout import BEST_POINTER, promoted_samples_key
from pipeline.storage import open_store
from pipeline.training.samples import SAMPLE_COUNT, make_fixed_latents, write_sample_grid

log = logging.getLogger(__name__)


def generate_promoted_grid(values: Mapping[str, Any], count: int = SAMPLE_COUNT, seed: int = 0) -> dict:
    """Load the generator that `models/best.json` names, draw `count` images from seeded latents, upload one PNG grid.

    `values` are flat settings; only the store settings and `cache_dir` are used. Raises StoreError
    when no model has been promoted yet or the promoted generator is missing. The same promoted run
    and seed give the same grid, so a retry overwrites the object with identical content.
    Returns `{"run_id", "samples_key", "samples_location", "count"}`.
    """
    config = PipelineConfig.from_mapping(values)
    store = open_store(config.store, create=False)
    if not store.exists(BEST_POINTER):
        raise StoreError(f"{store.location(BEST_POINTER)} not found: no model has been promoted yet, run gan_retraining first")
    pointer = store.get_json(BEST_POINTER)
    run_id = pointer["run_id"]

    with tempfile.TemporaryDirectory(prefix="promoted-") as temporary:
        generator = _load_generator(store, pointer["generator_key"], Path(temporary))
        latents = make_fixed_latents(seed, int(generator.input_shape[-1]), count)
        grid_path = write_sample_grid(generator, latents, Path(temporary) / "samples.png")
        key = promoted_samples_key(run_id)
        store.put_file(key, grid_path)

    log.info("wrote a grid of %d samples from promoted run %s to %s", count, run_id, store.location(key))
    return {"run_id": run_id, "samples_key": key, "samples_location": store.location(key), "count": count}


def _load_generator(store, key: str, directory: Path):
    import keras

    if not store.exists(key):
        raise StoreError(f"the promoted generator {store.location(key)} is missing: publish the run again")
    path = store.get_file(key, directory / "generator.keras")
    return keras.models.load_model(path, compile=False)
