"""Failure and promotion notices: one log line per failed task, and an optional webhook.

The webhook is an Airflow connection (default id `gan_pipeline_webhook`) whose `host` is the full
URL, for example `AIRFLOW_CONN_GAN_PIPELINE_WEBHOOK='{"conn_type": "http", "host": "https://hooks.example.com/gan"}'`.
When it is set, each notice is sent as an HTTP POST of a small JSON object. Without it, notices are
only logged. A POST that fails with a network or HTTP error is logged and does not fail the task.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from datetime import timedelta
from typing import Any, Mapping

log = logging.getLogger(__name__)

WEBHOOK_CONN_ID = "gan_pipeline_webhook"
WEBHOOK_TIMEOUT_S = 10
_MAX_ERROR_CHARS = 500


def failure_notice(context: Mapping[str, Any]) -> dict:
    """Build the notice of a failed task from an Airflow callback context: dag_id, run_id, task_id, try_number, error."""
    task_instance = context.get("ti") or context.get("task_instance")
    error = context.get("exception")
    cause = f"{type(error).__name__}: {error}" if error is not None else "unknown error"
    return {
        "event": "failure",
        "dag_id": getattr(task_instance, "dag_id", None),
        "run_id": context.get("run_id") or getattr(task_instance, "run_id", None),
        "task_id": getattr(task_instance, "task_id", None),
        "try_number": getattr(task_instance, "try_number", None),
        "error": " ".join(cause.split())[:_MAX_ERROR_CHARS],
    }


def on_task_failure(context: Mapping[str, Any]) -> None:
    """Log one line with the run id, task and error cause, then POST the notice to the webhook if one is configured."""
    notice = failure_notice(context)
    log.error(
        "run %s: task %s (try %s) of %s failed: %s",
        notice["run_id"],
        notice["task_id"],
        notice["try_number"],
        notice["dag_id"],
        notice["error"],
    )
    send_to_webhook(notice)


def promotion_notice(dag_id: str, run_id: str, published: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict:
    """Build the notice of a promoted model: the run, where its objects are, and its FID and KID."""
    return {
        "event": "promotion",
        "dag_id": dag_id,
        "run_id": run_id,
        "run_location": published.get("run_location"),
        "fid": metrics.get("fid"),
        "kid_mean": metrics.get("kid_mean"),
    }


def send_to_webhook(notice: Mapping[str, Any], conn_id: str = WEBHOOK_CONN_ID) -> bool:
    """POST `notice` as JSON to the webhook of connection `conn_id`; returns whether the server accepted it (2xx).

    Returns False without a request when the connection does not exist. Errors are logged, not raised.
    """
    url = webhook_url(conn_id)
    if url is None:
        log.debug("no Airflow connection %s, so the %s notice is only logged", conn_id, notice.get("event"))
        return False
    return post_json(url, notice)


def webhook_url(conn_id: str = WEBHOOK_CONN_ID) -> str | None:
    """Return the webhook URL of connection `conn_id` (its `host`, with `http://` when it has no scheme), or None."""
    try:
        from airflow.sdk import BaseHook
        from airflow.sdk.exceptions import AirflowNotFoundException
    except ImportError:
        return None

    try:
        connection = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None

    host = connection.host or ""
    if not host:
        log.warning("Airflow connection %s has no host, so no webhook is called: set host to the webhook URL", conn_id)
        return None
    if "://" not in host:
        port = f":{connection.port}" if connection.port else ""
        host = f"http://{host}{port}"
    return host


def post_json(url: str, payload: Mapping[str, Any], timeout_s: float = WEBHOOK_TIMEOUT_S) -> bool:
    """POST `payload` as JSON to `url`; returns True for a 2xx response, logs and returns False otherwise."""
    body = json.dumps(payload, default=str).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status = response.status
    except (urllib.error.URLError, OSError) as error:
        log.warning("webhook POST of the %s notice failed: %s", payload.get("event"), error)
        return False

    log.info("webhook accepted the %s notice with HTTP %d", payload.get("event"), status)
    return 200 <= status < 300


def task_defaults(retries: int) -> dict[str, Any]:
    """Return the `default_args` of this project's DAGs: owner, `retries` one minute apart, failure notices."""
    return {
        "owner": "ml-platform",
        "retries": retries,
        "retry_delay": timedelta(minutes=1),
        "on_failure_callback": on_task_failure,
    }
