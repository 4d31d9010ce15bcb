"""The DAG file parses cheaply, wires the four steps, and exposes every setting as a Param."""

import copy
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO_ROOT

DAG_FILE = REPO_ROOT / "dags" / "gan_retraining.py"


@pytest.fixture(scope="module")
def dag():
    from pipeline.demo import load_dag

    return load_dag()


def test_dag_parse_imports_no_tensorflow():
    script = textwrap.dedent(
        f"""
        import runpy, sys
        runpy.run_path({str(DAG_FILE)!r})
        heavy = sorted(name for name in ("tensorflow", "keras", "tensorflow_datasets") if name in sys.modules)
        print(",".join(heavy))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)

    assert result.stdout.strip() == ""


def test_dag_wires_four_tasks_in_order(dag):
    order = ["prepare_dataset", "train_gan", "evaluate", "upload_artifacts"]

    assert sorted(dag.task_ids) == sorted(order)
    for upstream, downstream in zip(order, order[1:]):
        assert downstream in dag.get_task(upstream).downstream_task_ids


def test_dag_schedule_is_nightly_without_catchup(dag):
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert dag.schedule == "0 2 * * *"


def test_dag_tasks_have_retries(dag):
    for task in dag.tasks:
        assert task.retries >= 1, task.task_id


def test_dag_params_cover_every_setting(dag):
    from pipeline.config import FLAT_SETTINGS

    assert set(FLAT_SETTINGS) <= set(dag.params.keys())


def test_dag_param_defaults_build_valid_config(dag):
    from pipeline.config import PipelineConfig

    config = PipelineConfig.from_mapping(dict(dag.params.validate()))

    assert config.data.source == "fashion_mnist"


@pytest.mark.parametrize(("key", "value"), [("epochs", -1), ("epochs", "ten"), ("batch_size", 0)])
def test_dag_params_reject_bad_trigger_values(dag, key, value):
    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(dag.params)
    with pytest.raises(ParamValidationError, match=key):
        params[key] = value
