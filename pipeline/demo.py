"""Run the real Airflow DAG once, in this process, with an embedded SQLite metadata database.

`dag.test()` executes every task of one DAG run without a scheduler or workers, which is how the
demo and the end-to-end tests run the same DAG that production schedules.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

DAGS_FOLDER = Path(__file__).resolve().parents[1] / "dags"
DAG_FILE = "gan_retraining.py"

# Sized for 2 CPU cores: one pass over all 60,000 training images takes about 1.5 minutes there.
DEMO_PARAMS = {
    "epochs": 3,
    "batch_size": 64,
    "num_samples": 5000,
    "kid_subset_size": 1000,
    "classifier_epochs": 3,
    "checkpoint_every": 500,
    "log_every": 100,
}


def prepare_airflow_home(airflow_home: Path, dags_folder: Path = DAGS_FOLDER) -> dict[str, str]:
    """Point Airflow at `airflow_home` (SQLite metadata DB) and `dags_folder`, and migrate the DB.

    Must run before `airflow` is imported in this process, because Airflow reads its settings then.
    Returns the environment variables it set.
    """
    airflow_home.mkdir(parents=True, exist_ok=True)
    settings = {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
    }
    os.environ.update(settings)
    if "airflow" in sys.modules:
        log.warning("airflow was imported before AIRFLOW_HOME was set; its settings may point elsewhere")

    log.info("migrating the Airflow metadata database in %s", airflow_home)
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise PipelineError(f"'airflow db migrate' failed in {airflow_home}:\n{result.stderr[-2000:]}")
    return settings


def load_dag(dags_folder: Path = DAGS_FOLDER):
    """Import the DAG file and return its DAG object."""
    path = dags_folder / DAG_FILE
    spec = importlib.util.spec_from_file_location("gan_retraining_dag", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.gan_retraining_dag


def run_dag(params: Mapping[str, Any], airflow_home: Path, dags_folder: Path = DAGS_FOLDER) -> str:
    """Run one DAG run with `params` as its configuration; return the final DAG run state.

    Raises PipelineError when the run does not succeed, naming the failed tasks.
    """
    prepare_airflow_home(airflow_home, dags_folder)
    dag = load_dag(dags_folder)
    dag_run = dag.test(run_conf=dict(params))
    state = str(dag_run.state)
    if state != "success":
        failed = [ti.task_id for ti in dag_run.get_task_instances() if str(ti.state) != "success"]
        raise PipelineError(f"DAG run {dag_run.run_id} ended in state {state}; tasks not successful: {failed}")
    return dag_run.run_id
