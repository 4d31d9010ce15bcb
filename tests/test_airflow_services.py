"""The DAG under a real Airflow: scheduler, DAG processor and API server with the LocalExecutor.

The `airflow_stack` fixture starts a private PostgreSQL cluster (Debian's postgresql package) and the
three Airflow services as subprocesses, all on 127.0.0.1, and stops every one of them at the end of
the session. test_airflow_ui.py uses the same running stack. The tests trigger runs through the REST
API, as a user or another system does, and check the run's objects in the loopback S3 server.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from pipeline.presets import PRESETS

log = logging.getLogger(__name__)

POSTGRES_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin-password"
STARTUP_TIMEOUT_S = 180
RUN_TIMEOUT_S = 360
CONSUMER_TIMEOUT_S = 180
# The smoke preset: the whole chain with real TensorFlow on 512 images, about a minute of CPU.
SMOKE_CONF = dict(PRESETS["smoke"])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class WebhookHandler(BaseHTTPRequestHandler):
    """Stores each POSTed JSON notice in the server's `received` list."""

    def do_POST(self):
        length = int(self.headers["Content-Length"])
        self.server.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@dataclass
class AirflowStack:
    """A running Airflow: its API URL, an admin JWT, the processes to stop, and the webhook notices it sent."""

    api_url: str
    home: Path
    env: dict[str, str]
    processes: list[subprocess.Popen] = field(default_factory=list)
    token: str = ""
    webhook: ThreadingHTTPServer | None = None

    def request(self, method: str, path: str, **kwargs):
        import requests

        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return requests.request(method, self.api_url + path, headers=headers, timeout=30, **kwargs)

    def logs(self, chars: int = 3000) -> str:
        """Return the tail of every service log, for assertion messages."""
        parts = []
        for path in sorted(self.home.glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)


def _postgres_bin() -> Path | None:
    for directory in POSTGRES_BIN_DIRS:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    return None


def _as_postgres_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root, so root runs it as Debian's postgres user."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


def start_postgres(directory: Path) -> tuple[str, list[str]]:
    """Start a private cluster in `directory` on a free loopback port; returns its URL and the stop command."""
    bin_dir = _postgres_bin()
    data = directory / "data"
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")

    initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", "airflow", "-A", "trust", "--no-sync", "-E", "UTF8"]
    subprocess.run(_as_postgres_user(initdb), check=True, capture_output=True, timeout=120)

    port = free_port()
    options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off"
    start = [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(directory / "postgres.log"), "-o", options, "-w", "start"]
    subprocess.run(_as_postgres_user(start), check=True, capture_output=True, timeout=120)

    stop = _as_postgres_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
    return f"postgresql+psycopg2://airflow@127.0.0.1:{port}/postgres", stop


def airflow_env(home: Path, database_url: str, api_port: int, webhook_url: str) -> dict[str, str]:
    """Environment of every Airflow process of the stack: LocalExecutor, simple auth manager, loopback only."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_", "GAN_PIPELINE_"))
    }
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            # The services import this checkout's pipeline package, not an installed copy.
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database_url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
            "AIRFLOW__API__SECRET_KEY": uuid.uuid4().hex,
            "AIRFLOW__API_AUTH__JWT_SECRET": uuid.uuid4().hex,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW_CONN_GAN_PIPELINE_WEBHOOK": json.dumps({"conn_type": "http", "host": webhook_url}),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            # No nightly run on unpause, which would start a full training run: only the runs the tests trigger.
            "GAN_PIPELINE_SCHEDULE": "none",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "GAN_PIPELINE_HOME": str(home / "gan-pipeline"),
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "TFDS_DISABLE_GCS": "1",
            "NO_GCE_CHECK": "true",
            "NO_PROXY": "127.0.0.1,localhost",
        }
    )
    env.pop("AWS_PROFILE", None)
    return env


def _start(stack: AirflowStack, name: str, *arguments: str) -> None:
    log_file = open(stack.home / f"{name}.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow", *arguments],
        env=stack.env,
        cwd=stack.home,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log_file.close()
    stack.processes.append(process)


def _wait_for(description: str, check, timeout_s: float, stack: AirflowStack):
    """Call `check` every second until it returns a truthy value; fail with the service logs after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for process in stack.processes:
            if process.poll() is not None:
                pytest.fail(f"{process.args[3:]} exited with {process.returncode} while waiting for {description}\n{stack.logs()}")
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        time.sleep(1)
    pytest.fail(f"timed out after {timeout_s} s waiting for {description}\n{stack.logs()}")


def _login(stack: AirflowStack) -> str | None:
    import requests

    try:
        response = requests.post(
            stack.api_url + "/auth/token", json={"username": ADMIN_USER, "password": ADMIN_PASSWORD}, timeout=10
        )
    except requests.ConnectionError:
        return None
    return response.json()["access_token"] if response.status_code == 201 else None


def _stop(stack: AirflowStack) -> None:
    for process in stack.processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in stack.processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _requirements_missing() -> str | None:
    if _postgres_bin() is None:
        return "PostgreSQL server not installed: apt-get install postgresql"
    for module in ("psycopg2", "requests"):
        try:
            __import__(module)
        except ImportError:
            return f"Python module {module} not installed: pip install -e '.[test]'"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root needs runuser to start PostgreSQL as the postgres user"
    return None


_RUNNING: dict[str, AirflowStack] = {}


@pytest.fixture(scope="session")
def airflow_stack():
    """Start PostgreSQL, `airflow db migrate`, then scheduler, DAG processor and API server; yield an AirflowStack.

    The first test module that asks starts it, later ones reuse it, and the first one stops it at
    the end of the session. gan_retraining is unpaused once the DAG processor has stored it.
    """
    if "stack" in _RUNNING:
        yield _RUNNING["stack"]
        return
    missing = _requirements_missing()
    if missing:
        pytest.skip(missing)

    home = Path(tempfile.mkdtemp(prefix="airflow-stack-"))
    os.chmod(home, 0o755)
    database_url, stop_postgres = start_postgres(home / "postgres")
    webhook = ThreadingHTTPServer(("127.0.0.1", 0), WebhookHandler)
    webhook.received = []
    threading.Thread(target=webhook.serve_forever, daemon=True).start()
    webhook_url = f"http://127.0.0.1:{webhook.server_port}/notices"
    api_port = free_port()
    env = airflow_env(home, database_url, api_port, webhook_url)
    stack = AirflowStack(api_url=f"http://127.0.0.1:{api_port}", home=home, env=env, webhook=webhook)
    (home / "passwords.json").write_text(json.dumps({ADMIN_USER: ADMIN_PASSWORD}))
    try:
        migrate = subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=STARTUP_TIMEOUT_S,
        )
        assert migrate.returncode == 0, migrate.stderr[-3000:]

        _start(stack, "api-server", "api-server", "--host", "127.0.0.1", "--port", str(api_port), "--workers", "1")
        # The API server reads task logs from AIRFLOW_HOME, so the scheduler needs no log server on 0.0.0.0.
        _start(stack, "scheduler", "scheduler", "--skip-serve-logs")
        _start(stack, "dag-processor", "dag-processor")
        stack.token = _wait_for("the API server to accept the admin login", lambda: _login(stack), STARTUP_TIMEOUT_S, stack)

        def dag_stored():
            return stack.request("GET", "/api/v2/dags/gan_retraining").status_code == 200

        _wait_for("the DAG processor to store gan_retraining", dag_stored, STARTUP_TIMEOUT_S, stack)
        unpaused = stack.request("PATCH", "/api/v2/dags/gan_retraining", json={"is_paused": False})
        assert unpaused.status_code == 200, unpaused.text

        _RUNNING["stack"] = stack
        yield stack
    finally:
        _RUNNING.pop("stack", None)
        _stop(stack)
        webhook.shutdown()
        webhook.server_close()
        subprocess.run(stop_postgres, capture_output=True, timeout=60)
        shutil.rmtree(home, ignore_errors=True)


def trigger(stack: AirflowStack, conf: dict, run_id: str):
    """POST a DAG run of gan_retraining with `conf`; returns the response."""
    body = {"dag_run_id": run_id, "logical_date": None, "conf": conf}
    return stack.request("POST", "/api/v2/dags/gan_retraining/dagRuns", json=body)


def wait_for_run(stack: AirflowStack, run_id: str, timeout_s: float = RUN_TIMEOUT_S) -> dict:
    """Poll the DAG run until it succeeds or fails; returns its JSON. Fails the test on timeout."""

    def finished():
        run = stack.request("GET", f"/api/v2/dags/gan_retraining/dagRuns/{run_id}").json()
        return run if run.get("state") in ("success", "failed") else None

    return _wait_for(f"DAG run {run_id} to finish", finished, timeout_s, stack)


def task_states(stack: AirflowStack, run_id: str) -> dict[str, str]:
    response = stack.request("GET", f"/api/v2/dags/gan_retraining/dagRuns/{run_id}/taskInstances")
    return {item["task_id"]: item["state"] for item in response.json()["task_instances"]}


def test_api_rejects_negative_epochs(airflow_stack):
    response = trigger(airflow_stack, {"epochs": -1}, f"rejected-{uuid.uuid4().hex[:8]}")

    assert response.status_code == 400, response.text
    assert "epochs" in response.text
    assert "minimum" in response.text


def test_api_triggered_smoke_run_publishes_to_s3(airflow_stack, s3_server, fashion_mnist_dir):
    import boto3

    bucket = f"airflow-{uuid.uuid4().hex[:12]}"
    conf = {
        **SMOKE_CONF,
        "source": "fashion_mnist",
        "store_uri": f"s3://{bucket}/gan",
        "store_endpoint_url": s3_server,
        "store_create_bucket": True,
        "store_aws_conn_id": None,
    }
    run_id = f"smoke-{uuid.uuid4().hex[:8]}"
    consumer = airflow_stack.request("PATCH", "/api/v2/dags/gan_promoted_samples", json={"is_paused": False})
    assert consumer.status_code == 200, consumer.text

    response = trigger(airflow_stack, conf, run_id)
    assert response.status_code == 200, response.text
    run = wait_for_run(airflow_stack, run_id)

    assert run["state"] == "success", f"{task_states(airflow_stack, run_id)}\n{airflow_stack.logs()}"
    assert task_states(airflow_stack, run_id)["announce_promotion"] == "success"

    s3 = boto3.client(
        "s3", endpoint_url=s3_server, aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    keys = {item["Key"] for item in s3.list_objects_v2(Bucket=bucket, Prefix="gan/")["Contents"]}
    for name in ("run.json", "report.html", "report.json", "generator.keras"):
        assert f"gan/runs/{run_id}/{name}" in keys, name
    best = json.loads(s3.get_object(Bucket=bucket, Key="gan/models/best.json")["Body"].read())
    assert best["run_id"] == run_id

    events = airflow_stack.request("GET", "/api/v2/assets/events", params={"source_run_id": run_id}).json()
    event_assets = {event["name"] for event in events["asset_events"]}
    assert event_assets == {"gan_pipeline_prepared_dataset", "gan_pipeline_promoted_model"}

    promotions = [notice for notice in airflow_stack.webhook.received if notice["event"] == "promotion"]
    assert [notice["run_id"] for notice in promotions] == [run_id]

    def sample_grid_written():
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"gan/models/samples/{run_id}.png")
        return listed.get("KeyCount", 0) == 1

    _wait_for("gan_promoted_samples to write the sample grid", sample_grid_written, CONSUMER_TIMEOUT_S, airflow_stack)

