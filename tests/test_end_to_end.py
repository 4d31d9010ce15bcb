"""The real DAG, run by Airflow's dag.test(), on a slice of the real Fashion-MNIST files, publishing
to a real S3-compatible server on loopback; then the bucket is read back as a user would."""

import io
import json
import math

import numpy as np
import pytest

from conftest import AIRFLOW_HOME

PREFIX = "nightly"

SMOKE_PARAMS = {
    "source": "fashion_mnist",
    "max_train_examples": 1024,
    "max_test_examples": 512,
    "records_per_shard": 400,
    "epochs": 1,
    "batch_size": 64,
    "num_samples": 256,
    "kid_subset_size": 128,
    "kid_subsets": 4,
    "classifier_epochs": 1,
    "checkpoint_every": 8,
    "log_every": 4,
}


@pytest.fixture(scope="module")
def dag_run(s3_server, fashion_mnist_dir, tmp_path_factory):
    """Run the DAG once; yields (run_id, bucket, S3 client)."""
    import os

    import boto3

    from pipeline import demo

    bucket = "e2e-gan-pipeline"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    params = {
        **SMOKE_PARAMS,
        "store_uri": f"s3://{bucket}/{PREFIX}",
        "store_endpoint_url": s3_server,
        "store_create_bucket": True,
    }
    try:
        run_id = demo.run_dag(params, AIRFLOW_HOME)
        client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
        yield run_id, bucket, client
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def read_object(dag_run, key):
    _, bucket, client = dag_run
    return client.get_object(Bucket=bucket, Key=f"{PREFIX}/{key}")["Body"].read()


def run_prefix(dag_run):
    from pipeline.layout import safe_run_id

    return f"runs/{safe_run_id(dag_run[0])}"


def test_end_to_end_run_json_lists_objects(dag_run):
    run = json.loads(read_object(dag_run, f"{run_prefix(dag_run)}/run.json"))
    keys = {entry["key"] for entry in run["objects"]}

    assert f"{run_prefix(dag_run)}/generator.keras" in keys
    assert f"{run_prefix(dag_run)}/report.json" in keys
    assert all(len(entry["sha256"]) == 64 for entry in run["objects"])


def test_end_to_end_report_metrics_are_finite(dag_run):
    report = json.loads(read_object(dag_run, f"{run_prefix(dag_run)}/report.json"))
    metrics = report["metrics"]

    assert math.isfinite(metrics["fid"]["value"])
    assert metrics["fid"]["value"] >= 0
    assert math.isfinite(metrics["kid"]["mean"])
    assert metrics["fid"]["num_generated"] == SMOKE_PARAMS["num_samples"]


def test_end_to_end_report_html_is_self_contained(dag_run):
    html = read_object(dag_run, f"{run_prefix(dag_run)}/report.html").decode()

    assert "data:image/png;base64," in html
    assert "http://" not in html
    assert "https://" not in html


def test_end_to_end_generator_loads_and_generates(dag_run, tmp_path):
    import keras

    path = tmp_path / "generator.keras"
    path.write_bytes(read_object(dag_run, f"{run_prefix(dag_run)}/generator.keras"))
    generator = keras.saving.load_model(path, compile=False)
    latent = np.random.default_rng(0).standard_normal((4, generator.input_shape[-1])).astype("float32")
    images = np.asarray(generator(latent, training=False))

    assert images.shape == (4, 28, 28, 1)
    assert images.min() >= -1.0
    assert images.max() <= 1.0


def test_end_to_end_latest_pointer_names_run(dag_run):
    from pipeline.layout import safe_run_id

    pointer = json.loads(read_object(dag_run, "models/latest.json"))

    assert pointer["run_id"] == safe_run_id(dag_run[0])


def test_end_to_end_sample_grid_is_png(dag_run):
    from PIL import Image

    _, bucket, client = dag_run
    listing = client.list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}/{run_prefix(dag_run)}/samples/")
    keys = [item["Key"] for item in listing.get("Contents", [])]
    assert keys, "no sample grid under samples/"

    image = Image.open(io.BytesIO(read_object(dag_run, keys[0].removeprefix(f"{PREFIX}/"))))
    assert image.format == "PNG"
