"""Choose the tf.distribute strategy of a training worker and split the global batch across replicas.

`auto` picks MultiWorkerMirroredStrategy when TF_CONFIG lists more than one worker, otherwise
MirroredStrategy when this machine has more than one GPU, otherwise the default strategy (one
device). The train step averages losses over the global batch, so the learning rate means the
same thing for any number of replicas.
"""

from __future__ import annotations

import json
import logging
import os

import tensorflow as tf

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)


def worker_count() -> int:
    """Return the number of workers in the TF_CONFIG environment variable's cluster (1 without TF_CONFIG)."""
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return 1
    try:
        cluster = json.loads(text).get("cluster", {})
    except (json.JSONDecodeError, AttributeError) as error:
        raise ConfigError("TF_CONFIG", text, f"must be a JSON object with a 'cluster' key ({error})") from error
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def choose_strategy(distribution: str) -> tf.distribute.Strategy:
    """Return the strategy for `distribution`: auto, default, mirrored or multi_worker.

    `mirrored` spans every GPU of this machine, or its logical CPU devices when it has no GPU
    and more than one logical CPU device is configured. Raises ConfigError for an unknown name.
    """
    if distribution == "auto":
        if worker_count() > 1:
            distribution = "multi_worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            distribution = "mirrored"
        else:
            distribution = "default"

    if distribution == "default":
        strategy = tf.distribute.get_strategy()
    elif distribution == "mirrored":
        strategy = tf.distribute.MirroredStrategy(devices=_mirrored_devices())
    elif distribution == "multi_worker":
        # NOTE: only built here, never run across real workers on this project's test machine.
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        raise ConfigError("distribution", distribution, "must be one of auto, default, mirrored, multi_worker")

    log.info("training with %s over %d replica(s)", type(strategy).__name__, strategy.num_replicas_in_sync)
    return strategy


def _mirrored_devices() -> list[str]:
    gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
    if gpus:
        return gpus
    return [device.name for device in tf.config.list_logical_devices("CPU")]


def replica_batch_size(global_batch_size: int, strategy: tf.distribute.Strategy) -> int:
    """Return global_batch_size / replicas; raise ConfigError unless the replicas divide it evenly."""
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise ConfigError(
            "batch_size",
            global_batch_size,
            f"must be divisible by the {replicas} replicas of the tf.distribute strategy; "
            f"use a multiple of {replicas}",
        )
    return global_batch_size // replicas
