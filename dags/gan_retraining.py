"""
### GAN retraining

Retrains the image GAN every night at 02:00 UTC, or on a manual trigger with the Params below:

`prepare_dataset` → `train_gan` → `evaluate` → `upload_artifacts`

- **prepare_dataset** writes sharded TFRecords and `manifest.json` under `datasets/<fingerprint>/`,
  reusing a dataset already prepared with the same content and settings.
- **train_gan** trains the DCGAN on the `GAN_PIPELINE_TRAINING_QUEUE` queue (a GPU worker) and
  resumes from its last checkpoint when retried.
- **evaluate** computes FID and KID against the real test split and writes `report.json` and a
  self-contained `report.html` under `runs/<run_id>/`.
- **upload_artifacts** writes `run.json` last, which marks the run complete, and moves the
  `models/latest.json` and `models/best.json` pointers.

All outputs live in the artifact store given by the `store_uri` Param (a local directory or
`s3://bucket/prefix`); tasks hand each other only small JSON through XCom.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from pipeline.config import DEFAULT_STORE_AWS_CONN_ID, DEFAULT_STORE_URI

TRAINING_QUEUE = os.environ.get("GAN_PIPELINE_TRAINING_QUEUE", "default")

PARAMS = {
    "source": Param(
        "fashion_mnist",
        type="string",
        minLength=1,
        description="Dataset source: fashion_mnist, idx:<directory> or tfds:<name>[:<version>].",
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
    "records_per_shard": Param(10_000, type="integer", minimum=1, description="TFRecord records per shard."),
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
}


def _params_and_run_id() -> tuple[dict, str]:
    context = get_current_context()
    return dict(context["params"]), context["run_id"]


@dag(
    dag_id="gan_retraining",
    schedule="0 2 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    default_args={"owner": "ml-platform", "retries": 2, "retry_delay": timedelta(minutes=1)},
    tags=["gan", "training"],
    doc_md=__doc__,
)
def gan_retraining():
    @task
    def prepare_dataset() -> dict:
        from pipeline import steps

        params, _ = _params_and_run_id()
        return steps.prepare(params)

    @task(queue=TRAINING_QUEUE, execution_timeout=timedelta(hours=12))
    def train_gan(dataset: dict) -> dict:
        from pipeline import steps

        params, run_id = _params_and_run_id()
        return steps.train(params, dataset["fingerprint"], run_id)

    @task
    def evaluate(dataset: dict, training: dict) -> dict:
        from pipeline import steps

        params, run_id = _params_and_run_id()
        return steps.evaluate(params, dataset["fingerprint"], training["run_id"])

    @task
    def upload_artifacts(dataset: dict, training: dict, metrics: dict) -> dict:
        from pipeline import steps

        params, _ = _params_and_run_id()
        return steps.publish(params, dataset["fingerprint"], training["run_id"], metrics)

    dataset = prepare_dataset()
    training = train_gan(dataset)
    metrics = evaluate(dataset, training)
    upload_artifacts(dataset, training, metrics)


gan_retraining_dag = gan_retraining()
