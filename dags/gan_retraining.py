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
from pipeline.config import DEFAULT_STORE_AWS_CONN_ID, DEFAULT_STORE_URI, SOURCE_PATTERN
from pipeline.notify import on_task_failure
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
        description="Dataset source: fashion_mnist, idx:<directory>, tfds:<name>[:<version>], folder:<directory> or npz:<file>.",
    ),
    "epochs": Param(25, type="integer", minimum=1, maximum=10_000, description="Training epochs."),
    "steps": Param(
        None,
        type=["null", "integer"],
        minimum=1,
        description="Training steps; overrides epochs when set.",
    ),
    "batch_size": Param(128, type="integer", minimum=1, maximum=65_536, description="Images per step."),
    "latent_dim": Param(100, type="integer", minimum=1, maximum=4096, description="Size of the latent vector."),
    "generator_learning_rate": Param(2e-4, type="number", exclusiveMinimum=0, maximum=1, description="Adam learning rate of the generator."),
    "discriminator_learning_rate": Param(
        2e-4, type="number", exclusiveMinimum=0, maximum=1, description="Adam learning rate of the discriminator."
    ),
    "seed": Param(0, type="integer", minimum=0, description="Seed for initialisation, data order and latents."),
    "num_samples": Param(
        10_000, type="integer", minimum=2, description="Generated images compared with the real test split."
    ),
    "max_train_examples": Param(
        None, type=["null", "integer"], minimum=1, description="Use only the first N training images."
    ),
    "max_test_examples": Param(
        None, type=["null", "integer"], minimum=1, description="Use only the first N test images."
    ),
    "kid_subset_size": Param(1000, type="integer", minimum=2, description="Images per KID subset."),
    "kid_subsets": Param(10, type="integer", minimum=1, description="Number of KID subsets."),
    "classifier_epochs": Param(3, type="integer", minimum=1, description="Epochs of the FID feature classifier."),
    "extractor": Param(
        "classifier",
        type="string",
        enum=["classifier", "inception_v3"],
        description="Features for FID, KID and precision/recall: the dataset's own classifier or InceptionV3.",
    ),
    "inception_weights": Param(
        None,
        type=["null", "string"],
        description="Local file with InceptionV3 (include_top=False) weights; default: the Keras cache or a download.",
    ),
    "precision_recall_k": Param(3, type="integer", minimum=1, description="Neighbours k of the precision/recall manifolds."),
    "records_per_shard": Param(10_000, type="integer", minimum=1, description="TFRecord records per shard."),
    "height": Param(None, type=["null", "integer"], minimum=1, maximum=4096, description="Image height in pixels; unset keeps the source's."),
    "width": Param(None, type=["null", "integer"], minimum=1, maximum=4096, description="Image width in pixels; unset keeps the source's."),
    "channels": Param(None, type=["null", "integer"], enum=[None, 1, 3], description="1 (grayscale) or 3 (RGB); unset keeps the source's."),
    "resize_mode": Param("crop", type="string", enum=["crop", "pad"], description="Other aspect ratios: crop the centre or pad the border."),
    "background": Param("black", type="string", minLength=1, description="Colour behind transparent pixels and padding, e.g. white or #808080."),
    "test_fraction": Param(0.1, type="number", exclusiveMinimum=0, exclusiveMaximum=1, description="Share held out as the test split by folder and npz sources without one."),
    "max_skipped_fraction": Param(0.05, type="number", minimum=0, maximum=1, description="Fail preparation when a larger share of image files cannot be decoded."),
    "tfds_data_dir": Param(None, type=["null", "string"], description="TensorFlow Datasets data_dir; unset uses TFDS_DATA_DIR or ~/tensorflow_datasets."),
    "tfds_download": Param(False, type="boolean", description="Let a tfds: source download data that tfds_data_dir lacks."),
    "flip": Param(False, type="boolean", description="Mirror training images left-right with probability 1/2."),
    "checkpoint_every": Param(500, type="integer", minimum=1, description="Steps between checkpoints."),
    "log_every": Param(100, type="integer", minimum=1, description="Steps between progress log lines."),
    "beta_1": Param(0.5, type="number", minimum=0, exclusiveMaximum=1, description="Adam beta_1 of both optimizers."),
    "loss": Param(
        "non_saturating",
        type="string",
        enum=["non_saturating", "hinge", "wgan_gp"],
        description="GAN loss: non_saturating (BCE on logits), hinge, or wgan_gp (Wasserstein with gradient penalty).",
    ),
    "gp_weight": Param(10.0, type="number", minimum=0, description="Gradient penalty weight of wgan_gp."),
    "d_steps_per_g_step": Param(
        1, type="integer", minimum=1, maximum=10, description="Discriminator updates per generator update."
    ),
    "update_scheme": Param(
        "alternating",
        type="string",
        enum=["alternating", "simultaneous"],
        description="alternating: the generator trains against the just-updated discriminator. "
        "simultaneous: both take gradients from one forward pass, about 1.1x faster but worse FID per step.",
    ),
    "ema_decay": Param(
        0.999, type="number", minimum=0, exclusiveMaximum=1, description="Decay of the generator weights' moving average."
    ),
    "keep_checkpoints": Param(2, type="integer", minimum=1, description="Newest checkpoints kept in the store."),
    "mixed_precision": Param(
        "none", type="string", enum=["none", "bfloat16", "float16"], description="Compute dtype of both networks."
    ),
    "jit_compile": Param(False, type="boolean", description="Compile the train step with XLA."),
    "distribution": Param(
        "auto",
        type="string",
        enum=["auto", "default", "mirrored", "multi_worker"],
        description="tf.distribute strategy; auto picks multi_worker from TF_CONFIG, mirrored for several GPUs.",
    ),
    "store_uri": Param(DEFAULT_STORE_URI, type="string", minLength=1, description="Local directory or s3://bucket/prefix."),
    "store_endpoint_url": Param(
        None, type=["null", "string"], description="S3-compatible endpoint such as http://minio:9000."
    ),
    "store_aws_conn_id": Param(
        DEFAULT_STORE_AWS_CONN_ID, type=["null", "string"], description="Airflow connection with the S3 credentials."
    ),
    "store_region": Param(None, type=["null", "string"], description="S3 region name."),
    "store_create_bucket": Param(False, type="boolean", description="Create the S3 bucket when it is missing."),
    "store_profile": Param(
        None, type=["null", "string"], description="AWS profile with the S3 credentials, when no connection is set."
    ),
    "store_max_retries": Param(
        4, type="integer", minimum=0, maximum=20, description="Retries of a failed S3 request, with adaptive backoff."
    ),
    "promotion_margin": Param(
        0.0, type="number", minimum=0, description="FID a run must beat the best by to become models/best.json."
    ),
    "keep_last_runs": Param(10, type="integer", minimum=1, description="Complete runs that retention keeps."),
    "delete_old_runs": Param(
        False, type="boolean", description="Delete complete runs beyond keep_last_runs that no pointer names."
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
    default_args={
        "owner": "ml-platform",
        "retries": 2,
        "retry_delay": timedelta(minutes=1),
        "on_failure_callback": on_task_failure,
    },
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
