"""
### GAN retraining

Retrains the image GAN every night at 02:00 UTC (`GAN_PIPELINE_SCHEDULE`) with the Param defaults,
or on a manual trigger with the Params below:

`prepare_dataset` → `train_gan` → `evaluate` → `upload_artifacts` → `announce_promotion`

- **prepare_dataset** writes sharded TFRecords and `manifest.json` under `datasets/<fingerprint>/`,
  reusing a dataset already prepared with the same content and settings. Outlet: the asset
  `gan_pipeline_prepared_dataset`.
- **train_gan** trains the DCGAN on the `GAN_PIPELINE_TRAINING_QUEUE` queue (a GPU worker) in the
  `GAN_PIPELINE_TRAINING_POOL` pool (one slot per GPU), stops after 12 hours, and resumes from its
  last checkpoint when retried.
- **evaluate** computes FID and KID against the real test split and writes `report.json` and a
  self-contained `report.html` under `runs/<run_id>/`.
- **upload_artifacts** writes `run.json` last, which marks the run complete, and moves the
  `models/latest.json` and `models/best.json` pointers.
- **announce_promotion** runs only when this run became `models/best.json` (it is skipped
  otherwise). Outlet: the asset `gan_pipeline_promoted_model`, so DAGs scheduled on it, such as
  `gan_promoted_samples`, start on each new best model.

#### Params

- **preset**: `none` (the Params as given), `smoke` (512 training images, 1 epoch, under a
  minute on a CPU), `nightly` (the defaults) or `full_quality` (100 epochs, 100 KID subsets). A preset fills
  every setting that still has its default value; a value you changed wins.
- **source**: `fashion_mnist`, `idx:<directory>`, `tfds:<name>[:<version>]`, `folder:<directory>` or
  `npz:<file>`.
- **epochs**, **steps**, **batch_size**, learning rates, **seed**: training. **num_samples**,
  **kid_subset_size**, **kid_subsets**, **classifier_epochs**: evaluation. Every field states its
  range, and a value outside it is rejected before the run starts.
- **store_uri** and the other `store_*` Params: where everything is written.

#### Where reports land

In the artifact store given by `store_uri` (a local directory or `s3://bucket/prefix`):
`runs/<run_id>/report.html` (open it in a browser), `runs/<run_id>/report.json`, the generator
`runs/<run_id>/generator.keras`, and the pointers `models/latest.json` and `models/best.json`.
`<run_id>` is the Airflow run id with every character other than letters, digits, `.`, `_` and `-`
replaced by `-`. Tasks hand each other only small JSON through XCom.

#### Failures and notices

A failed task logs one line with the run id, the task and the error. When the Airflow connection
`gan_pipeline_webhook` exists, failures and promotions are also POSTed to the URL in its `host` as JSON.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from pipeline.assets import PREPARED_DATASET, PROMOTED_MODEL, store_settings
from pipeline.config import DEFAULT_STORE_AWS_CONN_ID, DEFAULT_STORE_URI, SETTING_DESCRIPTIONS, SOURCE_PATTERN
from pipeline.notify import task_defaults
from pipeline.presets import NO_PRESET, PRESETS

# Read when the DAG is parsed, so a change needs the DAG processor to parse the file again.
TRAINING_QUEUE = os.environ.get("GAN_PIPELINE_TRAINING_QUEUE", "default")
TRAINING_POOL = os.environ.get("GAN_PIPELINE_TRAINING_POOL", "default_pool")
# A cron expression; an empty value or "none" turns the nightly run off, leaving manual and API triggers.
SCHEDULE = os.environ.get("GAN_PIPELINE_SCHEDULE", "0 2 * * *").strip()
SCHEDULE = None if SCHEDULE.lower() in ("", "none") else SCHEDULE
TRAINING_TIMEOUT = timedelta(hours=float(os.environ.get("GAN_PIPELINE_TRAINING_TIMEOUT_HOURS", "12")))

# The source forms that pipeline.data.sources accepts; the pattern rejects other values in the trigger form.

PARAMS = {
    "preset": Param(
        NO_PRESET,
        type="string",
        enum=list(PRESETS),
        description="Settings for a common case; it fills every setting left at its default. "
        "none: the Params as given. smoke: 512 images, 1 epoch. nightly: the defaults. full_quality: 100 epochs.",
    ),
    "source": Param(
        "fashion_mnist",
        type="string",
        pattern=SOURCE_PATTERN,
        description=SETTING_DESCRIPTIONS["source"],
    ),
    "epochs": Param(25, type="integer", minimum=1, maximum=10_000, description=SETTING_DESCRIPTIONS["epochs"]),
    "steps": Param(
        None,
        type=["null", "integer"],
        minimum=1,
        description=SETTING_DESCRIPTIONS["steps"],
    ),
    "batch_size": Param(128, type="integer", minimum=1, maximum=65_536, description=SETTING_DESCRIPTIONS["batch_size"]),
    "latent_dim": Param(100, type="integer", minimum=1, maximum=4096, description=SETTING_DESCRIPTIONS["latent_dim"]),
    "generator_learning_rate": Param(
        2e-4, type="number", exclusiveMinimum=0, maximum=1, description=SETTING_DESCRIPTIONS["generator_learning_rate"]
    ),
    "discriminator_learning_rate": Param(
        2e-4, type="number", exclusiveMinimum=0, maximum=1,
        description=SETTING_DESCRIPTIONS["discriminator_learning_rate"],
    ),
    "seed": Param(0, type="integer", minimum=0, description=SETTING_DESCRIPTIONS["seed"]),
    "num_samples": Param(
        10_000, type="integer", minimum=2, description=SETTING_DESCRIPTIONS["num_samples"]
    ),
    "max_train_examples": Param(
        None, type=["null", "integer"], minimum=1, description=SETTING_DESCRIPTIONS["max_train_examples"]
    ),
    "max_test_examples": Param(
        None, type=["null", "integer"], minimum=1, description=SETTING_DESCRIPTIONS["max_test_examples"]
    ),
    "kid_subset_size": Param(1000, type="integer", minimum=2, description=SETTING_DESCRIPTIONS["kid_subset_size"]),
    "kid_subsets": Param(10, type="integer", minimum=1, description=SETTING_DESCRIPTIONS["kid_subsets"]),
    "classifier_epochs": Param(3, type="integer", minimum=1, description=SETTING_DESCRIPTIONS["classifier_epochs"]),
    "extractor": Param(
        "classifier",
        type="string",
        enum=["classifier", "inception_v3"],
        description=SETTING_DESCRIPTIONS["extractor"],
    ),
    "inception_weights": Param(
        None,
        type=["null", "string"],
        description=SETTING_DESCRIPTIONS["inception_weights"],
    ),
    "precision_recall_k": Param(3, type="integer", minimum=1, description=SETTING_DESCRIPTIONS["precision_recall_k"]),
    "records_per_shard": Param(
        10_000, type="integer", minimum=1, description=SETTING_DESCRIPTIONS["records_per_shard"],
    ),
    "height": Param(
        None, type=["null", "integer"], minimum=1, maximum=4096, description=SETTING_DESCRIPTIONS["height"],
    ),
    "width": Param(None, type=["null", "integer"], minimum=1, maximum=4096, description=SETTING_DESCRIPTIONS["width"]),
    "channels": Param(None, type=["null", "integer"], enum=[None, 1, 3], description=SETTING_DESCRIPTIONS["channels"]),
    "resize_mode": Param("crop", type="string", enum=["crop", "pad"], description=SETTING_DESCRIPTIONS["resize_mode"]),
    "background": Param("black", type="string", minLength=1, description=SETTING_DESCRIPTIONS["background"]),
    "test_fraction": Param(
        0.1, type="number", exclusiveMinimum=0, exclusiveMaximum=1, description=SETTING_DESCRIPTIONS["test_fraction"],
    ),
    "max_skipped_fraction": Param(
        0.05, type="number", minimum=0, maximum=1, description=SETTING_DESCRIPTIONS["max_skipped_fraction"],
    ),
    "tfds_data_dir": Param(None, type=["null", "string"], description=SETTING_DESCRIPTIONS["tfds_data_dir"]),
    "tfds_download": Param(False, type="boolean", description=SETTING_DESCRIPTIONS["tfds_download"]),
    "flip": Param(False, type="boolean", description=SETTING_DESCRIPTIONS["flip"]),
    "checkpoint_every": Param(500, type="integer", minimum=1, description=SETTING_DESCRIPTIONS["checkpoint_every"]),
    "log_every": Param(100, type="integer", minimum=1, description=SETTING_DESCRIPTIONS["log_every"]),
    "beta_1": Param(0.5, type="number", minimum=0, exclusiveMaximum=1, description=SETTING_DESCRIPTIONS["beta_1"]),
    "loss": Param(
        "non_saturating",
        type="string",
        enum=["non_saturating", "hinge", "wgan_gp"],
        description=SETTING_DESCRIPTIONS["loss"],
    ),
    "gp_weight": Param(10.0, type="number", minimum=0, description=SETTING_DESCRIPTIONS["gp_weight"]),
    "d_steps_per_g_step": Param(
        1, type="integer", minimum=1, maximum=10, description=SETTING_DESCRIPTIONS["d_steps_per_g_step"]
    ),
    "update_scheme": Param(
        "alternating",
        type="string",
        enum=["alternating", "simultaneous"],
        description=SETTING_DESCRIPTIONS["update_scheme"],
    ),
    "ema_decay": Param(
        0.999, type="number", minimum=0, exclusiveMaximum=1, description=SETTING_DESCRIPTIONS["ema_decay"]
    ),
    "keep_checkpoints": Param(2, type="integer", minimum=1, description=SETTING_DESCRIPTIONS["keep_checkpoints"]),
    "mixed_precision": Param(
        "none", type="string", enum=["none", "bfloat16", "float16"], description=SETTING_DESCRIPTIONS["mixed_precision"]
    ),
    "jit_compile": Param(False, type="boolean", description=SETTING_DESCRIPTIONS["jit_compile"]),
    "distribution": Param(
        "auto",
        type="string",
        enum=["auto", "default", "mirrored", "multi_worker"],
        description=SETTING_DESCRIPTIONS["distribution"],
    ),
    "store_uri": Param(DEFAULT_STORE_URI, type="string", minLength=1, description=SETTING_DESCRIPTIONS["store_uri"]),
    "store_endpoint_url": Param(
        None, type=["null", "string"], description=SETTING_DESCRIPTIONS["store_endpoint_url"]
    ),
    "store_aws_conn_id": Param(
        DEFAULT_STORE_AWS_CONN_ID, type=["null", "string"], description=SETTING_DESCRIPTIONS["store_aws_conn_id"]
    ),
    "store_region": Param(None, type=["null", "string"], description=SETTING_DESCRIPTIONS["store_region"]),
    "store_create_bucket": Param(False, type="boolean", description=SETTING_DESCRIPTIONS["store_create_bucket"]),
    "store_profile": Param(
        None, type=["null", "string"], description=SETTING_DESCRIPTIONS["store_profile"]
    ),
    "store_max_retries": Param(
        4, type="integer", minimum=0, maximum=20, description=SETTING_DESCRIPTIONS["store_max_retries"]
    ),
    "promotion_margin": Param(
        0.0, type="number", minimum=0, description=SETTING_DESCRIPTIONS["promotion_margin"]
    ),
    "keep_last_runs": Param(10, type="integer", minimum=1, description=SETTING_DESCRIPTIONS["keep_last_runs"]),
    "delete_old_runs": Param(
        False, type="boolean", description=SETTING_DESCRIPTIONS["delete_old_runs"]
    ),
}


def _params_and_run_id() -> tuple[dict, str]:
    from pipeline.presets import resolve_preset

    context = get_current_context()
    return resolve_preset(context["params"]), context["run_id"]


@dag(
    dag_id="gan_retraining",
    schedule=SCHEDULE,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    default_args=task_defaults(retries=2),
    tags=["gan", "training"],
    doc_md=__doc__,
)
def gan_retraining():
    @task(outlets=[PREPARED_DATASET])
    def prepare_dataset(*, outlet_events=None) -> dict:
        from pipeline import steps

        params, _ = _params_and_run_id()
        dataset = steps.prepare(params)
        outlet_events[PREPARED_DATASET].extra = {"fingerprint": dataset["fingerprint"], **store_settings(params)}
        return dataset

    @task(queue=TRAINING_QUEUE, pool=TRAINING_POOL, execution_timeout=TRAINING_TIMEOUT)
    def train_gan(dataset: dict) -> dict:
        from pipeline import steps

        params, run_id = _params_and_run_id()
        return steps.train(params, dataset["fingerprint"], run_id)

    @task
    def evaluate(dataset: dict, training: dict) -> dict:
        from pipeline import steps

        params, _ = _params_and_run_id()
        return steps.evaluate(params, dataset["fingerprint"], training["run_id"])

    @task
    def upload_artifacts(dataset: dict, training: dict, metrics: dict) -> dict:
        from pipeline import steps

        params, _ = _params_and_run_id()
        return steps.publish(params, dataset["fingerprint"], training["run_id"], metrics)

    # A skipped task emits no asset event, so consumers of PROMOTED_MODEL start only on a promotion.
    @task(outlets=[PROMOTED_MODEL])
    def announce_promotion(published: dict, metrics: dict, *, outlet_events=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from pipeline import notify

        if not published["promoted"]:
            raise AirflowSkipException(f"run {published['run_id']} was not promoted, so models/best.json is unchanged")

        params, _ = _params_and_run_id()
        notice = notify.promotion_notice("gan_retraining", published["run_id"], published, metrics)
        outlet_events[PROMOTED_MODEL].extra = {**notice, **store_settings(params)}
        notify.send_to_webhook(notice)
        return notice

    dataset = prepare_dataset()
    training = train_gan(dataset)
    metrics = evaluate(dataset, training)
    published = upload_artifacts(dataset, training, metrics)
    announce_promotion(published, metrics)


gan_retraining_dag = gan_retraining()
