"""The DAG files parse quickly without TensorFlow, wire the steps, validate Params and declare their assets."""

import copy
import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO_ROOT

DAGS_FOLDER = REPO_ROOT / "dags"
DAG_FILE = DAGS_FOLDER / "gan_retraining.py"
# The whole DAG folder must parse in under this many seconds, measured after Airflow is imported,
# as it is in a running DAG processor.
PARSE_LIMIT_S = 2.0
STEP_ORDER = ["prepare_dataset", "train_gan", "evaluate", "upload_artifacts", "announce_promotion"]


@pytest.fixture(scope="module")
def dag():
    from pipeline.demo import load_dag

    return load_dag()


def parse_dag_folder(extra_env: dict | None = None) -> dict:
    """Parse dags/ with Airflow's DagBag in a fresh interpreter; returns seconds, import errors, modules and tasks."""
    script = textwrap.dedent(
        f"""
        import json, sys, time
        from airflow.dag_processing.dagbag import DagBag

        start = time.perf_counter()
        bag = DagBag(dag_folder={str(DAGS_FOLDER)!r})
        seconds = time.perf_counter() - start
        train_gan = bag.dags["gan_retraining"].get_task("train_gan")
        print(json.dumps({{
            "seconds": seconds,
            "import_errors": {{str(path): str(error) for path, error in bag.import_errors.items()}},
            "dag_ids": sorted(bag.dag_ids),
            "heavy_modules": sorted(name for name in ("tensorflow", "keras", "tensorflow_datasets") if name in sys.modules),
            "train_gan": {{"queue": train_gan.queue, "pool": train_gan.pool}},
            "schedule": bag.dags["gan_retraining"].schedule,
        }}))
        """
    )
    env = {**os.environ, **(extra_env or {})}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def parsed_folder():
    return parse_dag_folder()


def test_dag_folder_parses_without_errors(parsed_folder):
    assert parsed_folder["import_errors"] == {}
    assert parsed_folder["dag_ids"] == ["gan_promoted_samples", "gan_retraining"]


def test_dag_folder_parse_imports_no_tensorflow(parsed_folder):
    assert parsed_folder["heavy_modules"] == []


def test_dag_folder_parses_under_time_limit(parsed_folder):
    assert parsed_folder["seconds"] < PARSE_LIMIT_S


def test_dag_queue_and_pool_come_from_environment():
    parsed = parse_dag_folder({"GAN_PIPELINE_TRAINING_QUEUE": "gpu", "GAN_PIPELINE_TRAINING_POOL": "gpu_slots"})

    assert parsed["train_gan"] == {"queue": "gpu", "pool": "gpu_slots"}


def test_dag_schedule_none_turns_nightly_run_off():
    parsed = parse_dag_folder({"GAN_PIPELINE_SCHEDULE": "none"})

    assert parsed["schedule"] is None


def test_dag_wires_steps_in_order(dag):
    assert sorted(dag.task_ids) == sorted(STEP_ORDER)
    for upstream, downstream in zip(STEP_ORDER, STEP_ORDER[1:]):
        assert downstream in dag.get_task(upstream).downstream_task_ids


def test_dag_schedule_is_nightly_without_catchup(dag):
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert dag.schedule == "0 2 * * *"


def test_dag_operational_settings(dag):
    for task in dag.tasks:
        assert task.retries >= 1, task.task_id
        assert task.retry_delay.total_seconds() > 0, task.task_id
        assert task.owner == "ml-platform", task.task_id
        assert task.on_failure_callback, task.task_id
    assert dag.get_task("train_gan").execution_timeout.total_seconds() > 0
    assert set(dag.tags) == {"gan", "training"}


def test_dag_doc_md_names_params_and_report_location(dag):
    for text in ("preset", "source", "store_uri", "runs/<run_id>/report.html", "models/best.json"):
        assert text in dag.doc_md, text


def test_dag_assets_are_outlets_of_their_tasks(dag):
    from pipeline.assets import PREPARED_DATASET, PROMOTED_MODEL

    assert dag.get_task("prepare_dataset").outlets == [PREPARED_DATASET]
    assert dag.get_task("announce_promotion").outlets == [PROMOTED_MODEL]


def test_consumer_dag_is_scheduled_on_promoted_model():
    import runpy

    from pipeline.assets import PROMOTED_MODEL

    consumer = runpy.run_path(str(DAGS_FOLDER / "gan_promoted_samples.py"))["gan_promoted_samples_dag"]

    assert consumer.schedule == [PROMOTED_MODEL]


def test_announce_promotion_skips_run_not_promoted(dag):
    from airflow.sdk.exceptions import AirflowSkipException

    announce = dag.get_task("announce_promotion").python_callable
    published = {"run_id": "r1", "promoted": False, "run_location": "/store/runs/r1"}

    with pytest.raises(AirflowSkipException, match="r1 was not promoted"):
        announce(published, {"fid": 10.0})


def test_dag_params_cover_every_setting(dag):
    from pipeline.config import FLAT_SETTINGS

    assert set(FLAT_SETTINGS) <= set(dag.params.keys())


def test_dag_param_defaults_build_valid_config(dag):
    from pipeline.config import PipelineConfig
    from pipeline.presets import resolve_preset

    config = PipelineConfig.from_mapping(resolve_preset(dict(dag.params.validate())))

    assert config.data.source == "fashion_mnist"


def test_dag_param_defaults_equal_config_defaults(dag):
    from pipeline.config import PipelineConfig

    defaults = PipelineConfig().to_flat()
    for key, value in dag.params.validate().items():
        if key in defaults:
            assert value == defaults[key], key


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        ("epochs", -1, "minimum"),
        ("epochs", "ten", "is not of type 'integer'"),
        ("batch_size", 0, "minimum"),
        ("source", "mnist", "does not match"),
        ("source", "idx:", "does not match"),
        ("preset", "fast", "is not one of"),
    ],
)
def test_dag_params_reject_bad_trigger_values(dag, key, value, rule):
    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(dag.params)
    with pytest.raises(ParamValidationError) as raised:
        params[key] = value

    assert key in str(raised.value)
    assert rule in str(raised.value)


@pytest.mark.parametrize("source", ["fashion_mnist", "idx:/data/mnist", "tfds:mnist:3.0.1", "folder:/data/faces", "npz:/data/x.npz"])
def test_dag_params_accept_source_forms(dag, source):
    params = copy.deepcopy(dag.params)
    params["source"] = source

    assert params["source"] == source


def test_preset_fills_settings_left_at_default():
    from pipeline.presets import PRESETS, resolve_preset

    resolved = resolve_preset({"preset": "smoke", "epochs": 25, "seed": 3})

    assert "preset" not in resolved
    assert resolved["epochs"] == PRESETS["smoke"]["epochs"]
    assert resolved["max_train_examples"] == PRESETS["smoke"]["max_train_examples"]
    assert resolved["seed"] == 3


def test_preset_keeps_explicit_values():
    from pipeline.presets import resolve_preset

    resolved = resolve_preset({"preset": "smoke", "epochs": 4, "batch_size": 32})

    assert resolved["epochs"] == 4
    assert resolved["batch_size"] == 32


def test_preset_none_changes_nothing():
    from pipeline.presets import resolve_preset

    assert resolve_preset({"preset": "none", "epochs": 25}) == {"epochs": 25}
    assert resolve_preset({"epochs": 25}) == {"epochs": 25}


def test_preset_unknown_name_raises_config_error():
    from pipeline.errors import ConfigError
    from pipeline.presets import resolve_preset

    with pytest.raises(ConfigError, match="preset"):
        resolve_preset({"preset": "fast"})


@pytest.mark.parametrize("name", ["smoke", "nightly", "full_quality"])
def test_every_preset_builds_valid_config(name):
    from pipeline.config import PipelineConfig
    from pipeline.presets import resolve_preset

    config = PipelineConfig.from_mapping(resolve_preset({"preset": name}))

    assert config.train.epochs >= 1
    assert config.eval.kid_subset_size <= config.eval.num_samples
