"""Failure and promotion notices against a real HTTP server on 127.0.0.1, and the promoted-model sample grid."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image


class RecordingHandler(BaseHTTPRequestHandler):
    """Stores each POSTed JSON body on the server and responds with the server's `status`."""

    def do_POST(self):
        length = int(self.headers["Content-Length"])
        self.server.received.append({"path": self.path, "body": json.loads(self.rfile.read(length))})
        self.send_response(self.server.status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), RecordingHandler)
    server.received = []
    server.status = 204
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def webhook_connection(webhook_server, monkeypatch):
    url = f"http://127.0.0.1:{webhook_server.server_port}/hook"
    monkeypatch.setenv("AIRFLOW_CONN_GAN_PIPELINE_WEBHOOK", json.dumps({"conn_type": "http", "host": url}))
    return url


class FakeTaskInstance:
    dag_id = "gan_retraining"
    task_id = "train_gan"
    run_id = "manual__2026-12-04T20:00:00+00:00"
    try_number = 2


def failure_context():
    return {"ti": FakeTaskInstance(), "run_id": FakeTaskInstance.run_id, "exception": ValueError("batch_size\n too large")}


def test_failure_notice_names_run_task_and_cause():
    from pipeline.notify import failure_notice

    notice = failure_notice(failure_context())

    assert notice["run_id"] == "manual__2026-12-04T20:00:00+00:00"
    assert notice["task_id"] == "train_gan"
    assert notice["error"] == "ValueError: batch_size too large"


def test_on_task_failure_logs_one_line(caplog, monkeypatch):
    from pipeline.notify import on_task_failure

    monkeypatch.delenv("AIRFLOW_CONN_GAN_PIPELINE_WEBHOOK", raising=False)
    with caplog.at_level(logging.ERROR, logger="pipeline.notify"):
        on_task_failure(failure_context())

    errors = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "\n" not in errors[0]
    for part in ("manual__2026-12-04T20:00:00+00:00", "train_gan", "ValueError: batch_size too large"):
        assert part in errors[0], part


def test_on_task_failure_posts_to_webhook(webhook_server, webhook_connection):
    from pipeline.notify import on_task_failure

    on_task_failure(failure_context())

    assert len(webhook_server.received) == 1
    assert webhook_server.received[0]["path"] == "/hook"
    assert webhook_server.received[0]["body"]["event"] == "failure"
    assert webhook_server.received[0]["body"]["task_id"] == "train_gan"


def test_send_to_webhook_posts_promotion(webhook_server, webhook_connection):
    from pipeline.notify import promotion_notice, send_to_webhook

    notice = promotion_notice("gan_retraining", "r1", {"run_location": "s3://b/p/runs/r1"}, {"fid": 12.5, "kid_mean": 0.01})

    assert send_to_webhook(notice) is True
    assert webhook_server.received[0]["body"] == {
        "event": "promotion",
        "dag_id": "gan_retraining",
        "run_id": "r1",
        "run_location": "s3://b/p/runs/r1",
        "fid": 12.5,
        "kid_mean": 0.01,
    }


def test_send_to_webhook_without_connection_sends_nothing(monkeypatch):
    from pipeline.notify import send_to_webhook

    monkeypatch.delenv("AIRFLOW_CONN_GAN_PIPELINE_WEBHOOK", raising=False)

    assert send_to_webhook({"event": "failure"}) is False


def test_send_to_webhook_reports_server_error(webhook_server, webhook_connection):
    from pipeline.notify import send_to_webhook

    webhook_server.status = 500

    assert send_to_webhook({"event": "failure"}) is False
    assert len(webhook_server.received) == 1


def test_post_json_to_closed_port_returns_false():
    from pipeline.notify import post_json

    server = ThreadingHTTPServer(("127.0.0.1", 0), RecordingHandler)
    port = server.server_port
    server.server_close()

    assert post_json(f"http://127.0.0.1:{port}/hook", {"event": "failure"}, timeout_s=5) is False


def test_generate_promoted_grid_writes_png(tmp_path):
    import keras

    from pipeline.consumer import generate_promoted_grid
    from pipeline.layout import BEST_POINTER, promoted_samples_key, run_key
    from pipeline.models.dcgan import build_generator
    from pipeline.storage.local import LocalStore

    store = LocalStore(tmp_path / "store")
    generator_path = tmp_path / "generator.keras"
    build_generator(latent_dim=8, height=28, width=28, channels=1).save(generator_path)
    store.put_file(run_key("r1", "generator.keras"), generator_path)
    store.put_json(BEST_POINTER, {"run_id": "r1", "generator_key": run_key("r1", "generator.keras")})
    keras.backend.clear_session()

    result = generate_promoted_grid({"store_uri": str(tmp_path / "store"), "cache_dir": str(tmp_path / "cache")}, count=16)

    grid = tmp_path / "grid.png"
    store.get_file(promoted_samples_key("r1"), grid)
    pixels = np.asarray(Image.open(grid))
    assert result["run_id"] == "r1"
    assert pixels.shape == (4 * 28, 4 * 28)
    assert pixels.std() > 0


def test_generate_promoted_grid_without_best_raises(tmp_path):
    from pipeline.consumer import generate_promoted_grid
    from pipeline.errors import StoreError

    store_dir = tmp_path / "store"
    store_dir.mkdir()

    with pytest.raises(StoreError, match="no model has been promoted yet"):
        generate_promoted_grid({"store_uri": str(store_dir)})


def test_generate_promoted_grid_missing_store_raises(tmp_path):
    from pipeline.consumer import generate_promoted_grid
    from pipeline.errors import StoreError

    with pytest.raises(StoreError, match="store directory .* not found"):
        generate_promoted_grid({"store_uri": str(tmp_path / "mistyped")})
