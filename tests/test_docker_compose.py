"""The deployment files in docker/: the compose file, its .env.example, the Dockerfiles and airflow-init.sh.

No test here needs a Docker engine. `docker compose config` (or the older `docker-compose config`)
runs when a compose client is installed and is skipped otherwise. Every other test parses the files
with PyYAML and interpolates `${VAR}` references the way compose does, with the values of
docker/.env.example.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from conftest import REPO_ROOT

DOCKER_DIR = REPO_ROOT / "docker"
COMPOSE_FILE = DOCKER_DIR / "docker-compose.yaml"
ENV_EXAMPLE = DOCKER_DIR / ".env.example"
INIT_SCRIPT = DOCKER_DIR / "airflow-init.sh"
DOCKERFILES = {"airflow": DOCKER_DIR / "Dockerfile.airflow", "gpu-worker": DOCKER_DIR / "Dockerfile.gpu-worker"}

AIRFLOW_SERVICES = (
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-gpu-worker",
)
EXPECTED_SERVICES = {"postgres", "redis", "minio", "minio-init", *AIRFLOW_SERVICES}
ONE_SHOT_SERVICES = {"minio-init", "airflow-init"}
WORKERS = ("airflow-worker", "airflow-gpu-worker")
SECRETS = (
    "POSTGRES_PASSWORD",
    "AIRFLOW_ADMIN_PASSWORD",
    "AIRFLOW_FERNET_KEY",
    "AIRFLOW_JWT_SECRET",
    "AIRFLOW_API_SECRET_KEY",
    "MINIO_ROOT_PASSWORD",
)
# Variables that compose itself reads from the env file, not the compose file.
COMPOSE_SETTINGS = {"COMPOSE_PROJECT_NAME", "COMPOSE_PROFILES"}

# Matches ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}, $NAME and $$, a literal $.
_REFERENCE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<operator>:?[-?])(?P<argument>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def read_env_file(path: Path) -> dict[str, str]:
    """Parse the KEY=VALUE lines of a compose env file, skipping blank lines and lines that start with #."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, separator, value = line.partition("=")
        assert separator, f"{path}: line {line!r} has no '='"
        values[key.strip()] = value.strip()
    return values


def interpolate(text: str, env: dict[str, str]) -> str:
    """Substitute the ${...} references in one value as compose does.

    Raises KeyError for a required variable (`:?` or `?`) that is unset.
    """

    def substitute(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        operator = match["operator"] or ""
        value = env.get(name)
        missing = value is None or (operator.startswith(":") and value == "")
        if operator.endswith("-") and missing:
            return match["argument"]
        if operator.endswith("?") and missing:
            raise KeyError(f"required variable {name} is missing a value: {match['argument']}")
        return value or ""

    return _REFERENCE.sub(substitute, text)


def interpolate_tree(node, env: dict[str, str]):
    """Interpolate every string value of a parsed YAML document; mapping keys stay as written."""
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(value, env) for value in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


def string_values(node):
    """Yield every string value of a parsed YAML document."""
    if isinstance(node, dict):
        for value in node.values():
            yield from string_values(value)
    elif isinstance(node, list):
        for value in node:
            yield from string_values(value)
    elif isinstance(node, str):
        yield node


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def raw_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(raw_compose, env_example) -> dict:
    """The services of the compose file, interpolated with the values of .env.example."""
    return interpolate_tree(raw_compose, env_example)["services"]


def valid_secrets() -> dict[str, str]:
    """Secrets that airflow-init.sh accepts: no placeholders, URL-safe, a real Fernet key."""
    from cryptography.fernet import Fernet

    values = {name: f"{name.lower().replace('_', '-')}-0123456789" for name in SECRETS}
    values["AIRFLOW_FERNET_KEY"] = Fernet.generate_key().decode()
    values["MINIO_ROOT_USER"] = "gan-pipeline"
    return values


def run_init_script(env: dict[str, str], tmp_path: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """Run airflow-init.sh with `env` and a stub entrypoint that records its arguments in a file."""
    calls = tmp_path / "entrypoint-arguments.txt"
    stub = tmp_path / "entrypoint.sh"
    stub.write_text(f'#!/bin/sh\necho "$*" > {calls}\n')
    stub.chmod(0o755)

    full_env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "AIRFLOW_ENTRYPOINT": str(stub),
        **env,
    }
    result = subprocess.run(["bash", str(INIT_SCRIPT)], env=full_env, capture_output=True, text=True, timeout=60)
    return result, calls


def compose_command() -> list[str] | None:
    """Return the argv prefix of an installed compose client, or None when there is none."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def run_compose_config(env_file: Path) -> subprocess.CompletedProcess:
    command = compose_command()
    if command is None:
        pytest.skip("no compose client installed: neither 'docker compose' nor 'docker-compose' runs here")

    # Variables of the calling shell override the env file, so the ones it defines are removed.
    defined = read_env_file(ENV_EXAMPLE).keys()
    env = {key: value for key, value in os.environ.items() if key not in defined}
    argv = [*command, "-f", str(COMPOSE_FILE), "--env-file", str(env_file), "config"]
    return subprocess.run(argv, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_compose_config_accepts_env_example():
    result = run_compose_config(ENV_EXAMPLE)

    assert result.returncode == 0, result.stderr
    assert set(yaml.safe_load(result.stdout)["services"]) == EXPECTED_SERVICES


def test_compose_config_rejects_missing_secret(tmp_path):
    env_file = tmp_path / "missing-secret.env"
    lines = ENV_EXAMPLE.read_text().splitlines()
    env_file.write_text("\n".join(line for line in lines if not line.startswith("POSTGRES_PASSWORD=")) + "\n")

    result = run_compose_config(env_file)

    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


def test_compose_defines_every_service(services):
    assert set(services) == EXPECTED_SERVICES


def test_gpu_worker_reserves_nvidia_gpu(services):
    devices = services["airflow-gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]

    assert len(devices) == 1
    assert devices[0]["driver"] == "nvidia"
    assert devices[0]["capabilities"] == ["gpu"]
    assert str(devices[0]["count"]) == "1"


def test_gpu_worker_listens_on_training_queue(services):
    command = services["airflow-gpu-worker"]["command"]
    training_queue = services["airflow-dag-processor"]["environment"]["GAN_PIPELINE_TRAINING_QUEUE"]

    assert command[:3] == ["airflow", "celery", "worker"]
    assert command[command.index("--queues") + 1] == training_queue
    assert training_queue == "gpu"


def test_cpu_worker_listens_on_default_queue(services):
    command = services["airflow-worker"]["command"]

    assert command[:3] == ["airflow", "celery", "worker"]
    assert command[command.index("--queues") + 1] == "default"


def test_gpu_worker_builds_gpu_image(services):
    gpu_build = services["airflow-gpu-worker"]["build"]
    cpu_build = services["airflow-worker"]["build"]

    assert gpu_build["dockerfile"] == "docker/Dockerfile.gpu-worker"
    assert cpu_build["dockerfile"] == "docker/Dockerfile.airflow"
    assert services["airflow-gpu-worker"]["image"] != services["airflow-worker"]["image"]


def test_airflow_services_run_their_commands(services):
    expected = {
        "airflow-apiserver": ["airflow", "api-server"],
        "airflow-scheduler": ["airflow", "scheduler"],
        "airflow-dag-processor": ["airflow", "dag-processor"],
        "airflow-triggerer": ["airflow", "triggerer"],
    }
    for name, command in expected.items():
        assert services[name]["command"] == command, name


def test_every_variable_has_default_or_example_entry(raw_compose, env_example):
    for value in string_values(raw_compose):
        for match in _REFERENCE.finditer(value):
            if match["escaped"]:
                continue
            name = match["braced"] or match["bare"]
            has_default = (match["operator"] or "").endswith("-")
            assert has_default or name in env_example, f"${{{name}}} has no default and no entry in .env.example"


def test_secrets_have_no_default(raw_compose):
    for value in string_values(raw_compose):
        for match in _REFERENCE.finditer(value):
            if match["braced"] in SECRETS:
                assert match["operator"] == ":?", f"{match.group(0)} must fail when unset, not fall back to a default"


def test_env_example_entries_are_used(raw_compose, env_example):
    used = {match["braced"] or match["bare"] for value in string_values(raw_compose) for match in _REFERENCE.finditer(value)}

    for name in env_example:
        assert name in used or name in COMPOSE_SETTINGS, f"{name} in .env.example is not used by the compose file"


def test_env_example_secrets_are_placeholders(env_example):
    for name in SECRETS:
        assert env_example[name].startswith("change-me"), name


def test_airflow_image_matches_pyproject_pin(raw_compose, env_example):
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    requirements = [Requirement(text) for text in pyproject["project"]["optional-dependencies"]["airflow"]]
    airflow_pin = next(requirement.specifier for requirement in requirements if requirement.name == "apache-airflow")
    requires_python = SpecifierSet(pyproject["project"]["requires-python"])

    image = env_example["AIRFLOW_BASE_IMAGE"]
    match = re.fullmatch(r"apache/airflow:(?P<airflow>\d+\.\d+\.\d+)-python(?P<python>3\.\d+)", image)
    assert match, f"AIRFLOW_BASE_IMAGE {image!r} is not apache/airflow:<version>-python<version>"
    assert match["airflow"] in airflow_pin
    assert match["python"] in ("3.11", "3.12")
    assert f"{match['python']}.0" in requires_python

    for path in DOCKERFILES.values():
        assert f"ARG AIRFLOW_BASE_IMAGE={image}\n" in path.read_text(), path.name
    builds = [raw_compose["x-airflow-common"]["build"], raw_compose["services"]["airflow-gpu-worker"]["build"]]
    for build in builds:
        assert build["args"]["AIRFLOW_BASE_IMAGE"] == f"${{AIRFLOW_BASE_IMAGE:-{image}}}"


def test_dockerfiles_install_package_extras():
    expected = {"airflow": "[cpu,airflow]", "gpu-worker": "[gpu,airflow]"}
    for name, path in DOCKERFILES.items():
        text = path.read_text()
        install = next(line for line in text.splitlines() if line.startswith("RUN pip install"))

        assert f'"/opt/gan-pipeline/src{expected[name]}"' in install, name
        assert '"apache-airflow==${AIRFLOW_VERSION}"' in install, name


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """Return (INSTRUCTION, arguments) pairs, joining lines continued with a backslash."""
    instructions = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        pending += stripped.removesuffix("\\").strip() + " "
        if not stripped.endswith("\\"):
            keyword, _, arguments = pending.strip().partition(" ")
            instructions.append((keyword, arguments))
            pending = ""
    assert not pending, f"{path.name} ends inside a continued line"
    return instructions


def test_dockerfiles_parse():
    known = {"ARG", "FROM", "RUN", "COPY", "USER", "ENV", "WORKDIR", "LABEL", "EXPOSE", "ENTRYPOINT", "CMD"}
    for path in DOCKERFILES.values():
        instructions = dockerfile_instructions(path)
        keywords = [keyword for keyword, _ in instructions]

        assert set(keywords) <= known, path.name
        assert keywords[:2] == ["ARG", "FROM"], path.name
        assert instructions[1][1] == "${AIRFLOW_BASE_IMAGE}", path.name
        users = [arguments for keyword, arguments in instructions if keyword == "USER"]
        assert users[-1] == "airflow", f"{path.name} must switch back from root to the airflow user"


def test_dockerfile_copy_sources_are_in_build_context():
    for path in DOCKERFILES.values():
        ignore_file = path.with_name(path.name + ".dockerignore")
        allowed = [line[1:].rstrip("/") for line in ignore_file.read_text().splitlines() if line.startswith("!")]
        copies = [arguments.split() for keyword, arguments in dockerfile_instructions(path) if keyword == "COPY"]

        for words in copies:
            sources = [word for word in words[:-1] if not word.startswith("--")]
            for source in sources:
                assert (REPO_ROOT / source).exists(), f"{path.name}: COPY source {source} does not exist"
                assert source in allowed, f"{path.name}: COPY source {source} is excluded by {ignore_file.name}"


def test_long_running_services_have_healthchecks(services):
    for name, service in services.items():
        if name not in ONE_SHOT_SERVICES:
            assert "healthcheck" in service, name


def test_airflow_services_wait_for_init_and_databases(services):
    for name in AIRFLOW_SERVICES:
        depends_on = services[name]["depends_on"]

        assert depends_on["postgres"]["condition"] == "service_healthy", name
        assert depends_on["redis"]["condition"] == "service_healthy", name
        if name != "airflow-init":
            assert depends_on["airflow-init"]["condition"] == "service_completed_successfully", name


def test_workers_wait_for_api_server_and_bucket(services):
    for name in WORKERS:
        depends_on = services[name]["depends_on"]

        assert depends_on["airflow-apiserver"]["condition"] == "service_healthy", name
        assert depends_on["minio-init"]["condition"] == "service_completed_successfully", name


def test_airflow_services_share_settings(services):
    shared = (
        "AIRFLOW__CORE__FERNET_KEY",
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__API__SECRET_KEY",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "GAN_PIPELINE_STORE_URI",
        "GAN_PIPELINE_TRAINING_QUEUE",
        "GAN_PIPELINE_TRAINING_POOL",
        "GAN_PIPELINE_SCHEDULE",
        "GAN_PIPELINE_STORE_AWS_CONN_ID",
        "AIRFLOW_CONN_GAN_STORE",
    )
    reference = services["airflow-apiserver"]["environment"]
    for name in AIRFLOW_SERVICES:
        for key in shared:
            assert services[name]["environment"][key] == reference[key], f"{name}: {key}"


def test_execution_api_url_points_at_api_server(services):
    url = services["airflow-worker"]["environment"]["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]
    container_port = services["airflow-apiserver"]["ports"][0].rsplit(":", 1)[1]

    assert url == f"http://airflow-apiserver:{container_port}/execution/"


def test_store_uri_names_created_bucket(services):
    from pipeline.storage.s3 import parse_s3_uri

    store_uri = services["airflow-worker"]["environment"]["GAN_PIPELINE_STORE_URI"]
    bucket, prefix = parse_s3_uri(store_uri)

    assert bucket == services["minio-init"]["environment"]["GAN_STORE_BUCKET"]
    assert prefix == "gan-retraining"


def test_store_connection_resolves_to_minio(services, monkeypatch):
    from pipeline.storage.aws_connection import session_from_airflow

    environment = services["airflow-worker"]["environment"]
    monkeypatch.setenv("AIRFLOW_CONN_GAN_STORE", environment["AIRFLOW_CONN_GAN_STORE"])
    session, endpoint_url = session_from_airflow("gan_store")
    credentials = session.get_credentials()

    assert endpoint_url == "http://minio:9000"
    assert credentials.access_key == services["minio"]["environment"]["MINIO_ROOT_USER"]
    assert credentials.secret_key == services["minio"]["environment"]["MINIO_ROOT_PASSWORD"]


def test_runs_default_to_store_connection(services):
    for name in AIRFLOW_SERVICES:
        environment = services[name]["environment"]

        assert environment["GAN_PIPELINE_STORE_AWS_CONN_ID"] == "gan_store", name
        assert "AIRFLOW_CONN_GAN_STORE" in environment, name


def test_store_credentials_only_in_connection(services):
    for name in AIRFLOW_SERVICES:
        environment = services[name]["environment"]

        assert [key for key in environment if key.startswith("AWS_")] == [], name


def test_dag_routes_training_to_gpu_worker(services):
    environment = services["airflow-dag-processor"]["environment"]
    script = textwrap.dedent(
        f"""
        import json, runpy
        dag = runpy.run_path({str(REPO_ROOT / "dags" / "gan_retraining.py")!r})["gan_retraining_dag"]
        print(json.dumps({{
            "train_gan": dag.get_task("train_gan").queue,
            "evaluate": dag.get_task("evaluate").queue,
            "store_uri": dag.params.get_param("store_uri").value,
            "store_aws_conn_id": dag.params.get_param("store_aws_conn_id").value,
            "pool": dag.get_task("train_gan").pool,
            "schedule": dag.schedule,
        }}))
        """
    )
    settings = ("TRAINING_QUEUE", "TRAINING_POOL", "SCHEDULE", "STORE_URI", "STORE_AWS_CONN_ID")
    env = {**os.environ, **{f"GAN_PIPELINE_{name}": environment[f"GAN_PIPELINE_{name}"] for name in settings}}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    parsed = json.loads(result.stdout.strip().splitlines()[-1])

    gpu_command = services["airflow-gpu-worker"]["command"]
    assert parsed["train_gan"] == gpu_command[gpu_command.index("--queues") + 1]
    assert parsed["evaluate"] == "default"
    assert parsed["store_uri"] == environment["GAN_PIPELINE_STORE_URI"]
    assert parsed["store_aws_conn_id"] == "gan_store"
    assert parsed["pool"] == services["airflow-init"]["environment"]["GAN_PIPELINE_TRAINING_POOL"]
    assert parsed["schedule"] == "0 2 * * *"


def test_init_script_rejects_placeholder_secrets(env_example, tmp_path):
    result, calls = run_init_script(env_example, tmp_path)

    assert result.returncode == 1
    for name in SECRETS:
        assert f"{name} in docker/.env is missing or still a change-me placeholder" in result.stderr, name
    assert not calls.exists()


def test_init_script_rejects_invalid_fernet_key(tmp_path):
    env = {**valid_secrets(), "AIRFLOW_FERNET_KEY": "not-a-fernet-key"}

    result, calls = run_init_script(env, tmp_path)

    assert result.returncode == 1
    assert "AIRFLOW_FERNET_KEY in docker/.env is not a valid Fernet key" in result.stderr
    assert not calls.exists()


def test_init_script_rejects_password_unsafe_in_urls(tmp_path):
    env = {**valid_secrets(), "POSTGRES_PASSWORD": "p@ss/word"}

    result, _ = run_init_script(env, tmp_path)

    assert result.returncode == 1
    assert "POSTGRES_PASSWORD in docker/.env is invalid" in result.stderr


def test_init_script_hands_over_to_entrypoint(tmp_path):
    result, calls = run_init_script(valid_secrets(), tmp_path)

    assert result.returncode == 0, result.stderr
    command = calls.read_text().strip()
    assert command.startswith("bash -c airflow db check-migrations --migration-wait-timeout 60 && airflow pools set")
    assert command.endswith("airflow-init default_pool 1")


def test_init_script_creates_training_pool(tmp_path):
    env = {**valid_secrets(), "GAN_PIPELINE_TRAINING_POOL": "gpu", "GAN_PIPELINE_TRAINING_POOL_SLOTS": "2"}

    result, calls = run_init_script(env, tmp_path)

    assert result.returncode == 0, result.stderr
    assert calls.read_text().strip().endswith("airflow-init gpu 2")


def test_init_script_rejects_invalid_pool_slots(tmp_path):
    env = {**valid_secrets(), "GAN_PIPELINE_TRAINING_POOL_SLOTS": "all"}

    result, calls = run_init_script(env, tmp_path)

    assert result.returncode == 1
    assert "GAN_PIPELINE_TRAINING_POOL_SLOTS in docker/.env is invalid" in result.stderr
    assert not calls.exists()
