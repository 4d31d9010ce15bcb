"""The Airflow Assets of the pipeline, shared by the DAG that produces them and the DAGs scheduled on them.

Their URIs are logical names, not store locations: the store is a per-run Param, so the asset events
carry the run's store settings in their extra (see `store_settings`). Only DAG files import this
module, because it imports Airflow.
"""

from __future__ import annotations

from typing import Any, Mapping

from airflow.sdk import Asset

# An event each time prepare_dataset succeeds, whether it wrote a new dataset or reused one.
PREPARED_DATASET = Asset(name="gan_pipeline_prepared_dataset", uri="gan-pipeline://datasets")
# An event only when a run's generator becomes models/best.json.
PROMOTED_MODEL = Asset(name="gan_pipeline_promoted_model", uri="gan-pipeline://models/best")

STORE_KEYS = ("store_uri", "store_endpoint_url", "store_region", "store_aws_conn_id")


def store_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """Return the store settings of `values` that an asset event may carry: locations and a connection id, no secrets."""
    return {key: values.get(key) for key in STORE_KEYS}
