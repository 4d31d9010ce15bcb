"""
### Samples of the promoted GAN

An example consumer of the asset `gan_pipeline_promoted_model`: it runs each time `gan_retraining`
promotes a new best model, loads the generator that `models/best.json` names, and writes a grid of
64 generated images to `models/samples/<run_id>.png` in the same artifact store.

The store settings come from the asset event, so the grid lands in the store of the run that
promoted the model. Without an event (a manual trigger), the deployment's default store is used.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag, get_current_context, task

from pipeline.assets import PROMOTED_MODEL, STORE_KEYS
from pipeline.notify import task_defaults


def _store_settings_from_event() -> dict:
    """Return the store settings carried by the newest triggering PROMOTED_MODEL event, or {}."""
    events = get_current_context().get("triggering_asset_events") or {}
    promoted = list(events.get(PROMOTED_MODEL, []))
    if not promoted:
        return {}
    extra = promoted[-1].extra or {}
    return {key: extra[key] for key in STORE_KEYS if extra.get(key) is not None}


@dag(
    dag_id="gan_promoted_samples",
    schedule=[PROMOTED_MODEL],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=task_defaults(retries=1),
    tags=["gan", "example"],
    doc_md=__doc__,
)
def gan_promoted_samples():
    @task(execution_timeout=timedelta(minutes=30))
    def sample_promoted_model() -> dict:
        from pipeline.consumer import generate_promoted_grid

        return generate_promoted_grid(_store_settings_from_event())

    sample_promoted_model()


gan_promoted_samples_dag = gan_promoted_samples()
