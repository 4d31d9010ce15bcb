"""Typed, validated settings for every step, built once from a flat mapping.

The flat names are the same everywhere: Airflow Params, CLI flags (with dashes) and YAML keys.
`PipelineConfig.from_mapping` validates every value before any work starts and raises
`ConfigError` naming the parameter, the value and the rule.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Mapping

from pipeline.errors import ConfigError

# Environment variables give a deployment its defaults; Params, flags and YAML override them.
DEFAULT_HOME = Path(os.environ.get("GAN_PIPELINE_HOME", Path.home() / "gan-pipeline"))
DEFAULT_STORE_URI = os.environ.get("GAN_PIPELINE_STORE_URI", str(DEFAULT_HOME / "store"))
DEFAULT_STORE_AWS_CONN_ID = os.environ.get("GAN_PIPELINE_STORE_AWS_CONN_ID") or None

# Accepted forms of the `source` setting; the DAG's Param uses the same pattern.
SOURCE_PATTERN = r"^(fashion_mnist|(idx|tfds|folder|npz):\S.*)$"


@dataclass(frozen=True)
class DataConfig:
    """Image source, normalisation and TFRecord sharding settings, also the options of every source reader.

    None for height, width or channels means the source's own. For array sources (IDX, `.npz`,
    TensorFlow Datasets) that is the arrays' height and width, and 1 channel for grayscale or 3
    otherwise. For image folders it is the size of the first decodable image in path order, and 3
    channels. `test_fraction` is the share held out as the test split by a source without one.
    `tfds_data_dir` and `tfds_download` apply to TensorFlow Datasets sources.
    """

    source: str = "fashion_mnist"
    records_per_shard: int = 10_000
    max_train_examples: int | None = None
    max_test_examples: int | None = None
    height: int | None = None
    width: int | None = None
    channels: int | None = None
    resize_mode: str = "crop"
    background: str = "black"
    test_fraction: float = 0.1
    max_skipped_fraction: float = 0.05
    tfds_data_dir: str | None = None
    tfds_download: bool = False
    flip: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """GAN training settings; `steps` overrides `epochs` when set."""

    epochs: int = 25
    steps: int | None = None
    batch_size: int = 128
    latent_dim: int = 100
    generator_learning_rate: float = 2e-4
    discriminator_learning_rate: float = 2e-4
    beta_1: float = 0.5
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 100
    loss: str = "non_saturating"
    gp_weight: float = 10.0
    d_steps_per_g_step: int = 1
    update_scheme: str = "alternating"
    ema_decay: float = 0.999
    keep_checkpoints: int = 2
    mixed_precision: str = "none"
    jit_compile: bool = False
    distribution: str = "auto"


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation settings: generated sample count, KID subsets, feature classifier, extractor, precision/recall k."""

    num_samples: int = 10_000
    kid_subset_size: int = 1000
    kid_subsets: int = 10
    classifier_epochs: int = 3
    extractor: str = "classifier"
    inception_weights: str | None = None
    precision_recall_k: int = 3


@dataclass(frozen=True)
class StoreConfig:
    """Artifact store location: a local directory path or `s3://bucket/prefix`."""

    uri: str = DEFAULT_STORE_URI
    endpoint_url: str | None = None
    region: str | None = None
    aws_conn_id: str | None = DEFAULT_STORE_AWS_CONN_ID
    create_bucket: bool = False
    profile: str | None = None
    max_retries: int = 4


@dataclass(frozen=True)
class PromotionConfig:
    """When a run becomes `models/best.json`, and which old runs the publish step deletes.

    A run is promoted when `best_fid - fid > promotion_margin`. Retention keeps the newest
    `keep_last_runs` complete runs and every run a pointer names; others are deleted only when
    `delete_old_runs` is true.
    """

    promotion_margin: float = 0.0
    keep_last_runs: int = 10
    delete_old_runs: bool = False


@dataclass(frozen=True)
class PipelineConfig:
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    promotion: PromotionConfig = field(default_factory=PromotionConfig)
    cache_dir: str = str(DEFAULT_HOME / "cache")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "PipelineConfig":
        """Build a config from flat keys such as `epochs` or `store_uri`; None means default."""
        sections = {name: {} for name in _SECTIONS}
        top = {}
        for key, value in values.items():
            if value is None:
                continue
            if key == "cache_dir":
                top[key] = _coerce(key, value, str)
                continue
            if key not in FLAT_SETTINGS:
                raise ConfigError(key, value, _unknown_setting_rule(key))
            section, name, kind = FLAT_SETTINGS[key]
            sections[section][name] = _coerce(key, value, kind)
        config = cls(**{name: _SECTIONS[name](**kw) for name, kw in sections.items()}, **top)
        config.validate()
        return config

    def to_flat(self) -> dict[str, Any]:
        """Return the flat mapping that `from_mapping` accepts (JSON-serialisable)."""
        flat: dict[str, Any] = {"cache_dir": self.cache_dir}
        for key, (section, name, _) in FLAT_SETTINGS.items():
            flat[key] = getattr(getattr(self, section), name)
        return flat

    def validate(self) -> None:
        """Raise ConfigError for the first value that breaks its rule."""
        flat = self.to_flat()
        for key, rule, check in _RULES:
            value = flat[key]
            if value is not None and not check(value):
                raise ConfigError(key, value, rule)
        if not flat["source"].strip():
            raise ConfigError("source", flat["source"], "must name a dataset source, for example 'fashion_mnist'")
        if not re.match(SOURCE_PATTERN, flat["source"]):
            raise ConfigError(
                "source", flat["source"], "must be fashion_mnist, idx:<dir>, folder:<dir>, npz:<file> or tfds:<name>[:<version>]"
            )


_SECTIONS = {
    "data": DataConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "store": StoreConfig,
    "promotion": PromotionConfig,
}

# Flat key -> (section, field name, type). Store fields carry a `store_` prefix; others keep their name.
_PREFIXES = {"store": "store_"}


def _build_flat_fields() -> dict[str, tuple[str, str, type]]:
    fields = {}
    for section, cls in _SECTIONS.items():
        for f in dataclasses.fields(cls):
            key = _PREFIXES.get(section, "") + f.name
            fields[key] = (section, f.name, _field_kind(f.type))
    return fields


def _unknown_setting_rule(key: str) -> str:
    known = sorted([*FLAT_SETTINGS, "cache_dir"])
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown setting; {hint}known settings: {', '.join(known)}"


def _field_kind(annotation: str) -> type:
    """Map a field annotation such as 'int | None' to the type values are coerced to."""
    base = annotation.split("|")[0].strip()
    return {"int": int, "float": float, "str": str, "bool": bool}[base]


FLAT_SETTINGS = _build_flat_fields()


def _coerce(key: str, value: Any, kind: type) -> Any:
    """Convert strings from CLI flags or Airflow forms to `kind`, rejecting lossy conversions."""
    if kind is bool:
        return _coerce_bool(key, value)
    if isinstance(value, bool):
        raise ConfigError(key, value, f"must be {kind.__name__}, not a boolean")
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ConfigError(key, value, "must be an integer")
    if kind is float:
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ConfigError(key, value, "must be a number")
    if not isinstance(value, str):
        raise ConfigError(key, value, "must be a string")
    return value


def _coerce_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ConfigError(key, value, "must be true or false")


def _positive(value: float) -> bool:
    return value > 0


LOSSES = ("non_saturating", "hinge", "wgan_gp")
MIXED_PRECISION_MODES = ("none", "bfloat16", "float16")
UPDATE_SCHEMES = ("alternating", "simultaneous")
DISTRIBUTIONS = ("auto", "default", "mirrored", "multi_worker")


# Descriptions of the flat settings, shown in the DAG's Params and in the CLI's --help.
SETTING_DESCRIPTIONS = {
    "source": (
        "Dataset source: fashion_mnist, idx:<directory>, tfds:<name>[:<version>], "
        "folder:<directory> or npz:<file>."
    ),
    "records_per_shard": "TFRecord records per shard.",
    "max_train_examples": "Use only the first N training images.",
    "max_test_examples": "Use only the first N test images.",
    "height": "Image height in pixels; unset keeps the source's.",
    "width": "Image width in pixels; unset keeps the source's.",
    "channels": "1 (grayscale) or 3 (RGB); unset keeps the source's.",
    "resize_mode": "Other aspect ratios: crop the centre or pad the border.",
    "background": "Colour behind transparent pixels and padding, e.g. white or #808080.",
    "test_fraction": "Share held out as the test split by folder and npz sources without one.",
    "max_skipped_fraction": "Fail preparation when a larger share of image files cannot be decoded.",
    "tfds_data_dir": "TensorFlow Datasets data_dir; unset uses TFDS_DATA_DIR or ~/tensorflow_datasets.",
    "tfds_download": "Let a tfds: source download data that tfds_data_dir lacks.",
    "flip": "Mirror training images left-right with probability 1/2.",
    "epochs": "Training epochs.",
    "steps": "Training steps; overrides epochs when set.",
    "batch_size": "Images per step.",
    "latent_dim": "Size of the latent vector.",
    "generator_learning_rate": "Adam learning rate of the generator.",
    "discriminator_learning_rate": "Adam learning rate of the discriminator.",
    "beta_1": "Adam beta_1 of both optimizers.",
    "seed": "Seed for initialisation, data order and latents.",
    "checkpoint_every": "Steps between checkpoints.",
    "log_every": "Steps between progress log lines.",
    "loss": "GAN loss: non_saturating (BCE on logits), hinge, or wgan_gp (Wasserstein with gradient penalty).",
    "gp_weight": "Gradient penalty weight of wgan_gp.",
    "d_steps_per_g_step": "Discriminator updates per generator update.",
    "update_scheme": (
        "alternating: the generator trains against the just-updated discriminator. "
        "simultaneous: both take gradients from one forward pass, about 1.1x faster but worse FID per step."
    ),
    "ema_decay": "Decay of the generator weights' moving average.",
    "keep_checkpoints": "Newest checkpoints kept in the store.",
    "mixed_precision": "Compute dtype of both networks.",
    "jit_compile": "Compile the train step with XLA.",
    "distribution": "tf.distribute strategy; auto picks multi_worker from TF_CONFIG, mirrored for several GPUs.",
    "num_samples": "Generated images compared with the real test split.",
    "kid_subset_size": "Images per KID subset.",
    "kid_subsets": "Number of KID subsets.",
    "classifier_epochs": "Epochs of the FID feature classifier.",
    "extractor": "Features for FID, KID and precision/recall: the dataset's own classifier or InceptionV3.",
    "inception_weights": (
        "Local file with InceptionV3 (include_top=False) weights; default: the Keras "
        "cache or a download."
    ),
    "precision_recall_k": "Neighbours k of the precision/recall manifolds.",
    "store_uri": "Local directory or s3://bucket/prefix.",
    "store_endpoint_url": "S3-compatible endpoint such as http://minio:9000.",
    "store_region": "S3 region name.",
    "store_aws_conn_id": "Airflow connection with the S3 credentials.",
    "store_create_bucket": "Create the S3 bucket when it is missing.",
    "store_profile": "AWS profile with the S3 credentials, when no connection is set.",
    "store_max_retries": "Retries of a failed S3 request, with adaptive backoff.",
    "promotion_margin": "FID a run must beat the best by to become models/best.json.",
    "keep_last_runs": "Complete runs that retention keeps.",
    "delete_old_runs": "Delete complete runs beyond keep_last_runs that no pointer names.",
}

_RULES = [
    ("records_per_shard", "must be a positive integer", _positive),
    ("max_train_examples", "must be a positive integer or unset", _positive),
    ("max_test_examples", "must be a positive integer or unset", _positive),
    ("height", "must be between 1 and 4096 pixels, or unset for the source's height", lambda v: 1 <= v <= 4096),
    ("width", "must be between 1 and 4096 pixels, or unset for the source's width", lambda v: 1 <= v <= 4096),
    ("channels", "must be 1 (grayscale) or 3 (RGB), or unset for the source's", lambda v: v in (1, 3)),
    ("resize_mode", "must be 'crop' or 'pad'", lambda v: v in ("crop", "pad")),
    ("test_fraction", "must be in (0, 1)", lambda v: 0 < v < 1),
    ("max_skipped_fraction", "must be in [0, 1]", lambda v: 0 <= v <= 1),
    ("epochs", "must be a positive integer", _positive),
    ("steps", "must be a positive integer or unset", _positive),
    ("batch_size", "must be between 1 and 65536", lambda v: 1 <= v <= 65536),
    ("latent_dim", "must be between 1 and 4096", lambda v: 1 <= v <= 4096),
    ("generator_learning_rate", "must be in (0, 1]", lambda v: 0 < v <= 1),
    ("discriminator_learning_rate", "must be in (0, 1]", lambda v: 0 < v <= 1),
    ("beta_1", "must be in [0, 1)", lambda v: 0 <= v < 1),
    ("seed", "must be a non-negative integer", lambda v: v >= 0),
    ("checkpoint_every", "must be a positive number of steps", _positive),
    ("log_every", "must be a positive number of steps", _positive),
    ("loss", f"must be one of {', '.join(LOSSES)}", lambda v: v in LOSSES),
    ("gp_weight", "must be a non-negative number", lambda v: v >= 0),
    ("d_steps_per_g_step", "must be between 1 and 10", lambda v: 1 <= v <= 10),
    ("update_scheme", f"must be one of {', '.join(UPDATE_SCHEMES)}", lambda v: v in UPDATE_SCHEMES),
    ("ema_decay", "must be in [0, 1)", lambda v: 0 <= v < 1),
    ("keep_checkpoints", "must be a positive integer", _positive),
    ("mixed_precision", f"must be one of {', '.join(MIXED_PRECISION_MODES)}", lambda v: v in MIXED_PRECISION_MODES),
    ("distribution", f"must be one of {', '.join(DISTRIBUTIONS)}", lambda v: v in DISTRIBUTIONS),
    ("num_samples", "must be at least 2 (FID needs a covariance)", lambda v: v >= 2),
    ("kid_subset_size", "must be at least 2", lambda v: v >= 2),
    ("kid_subsets", "must be a positive integer", _positive),
    ("classifier_epochs", "must be a positive integer", _positive),
    ("store_max_retries", "must be between 0 and 20", lambda v: 0 <= v <= 20),
    ("promotion_margin", "must be a non-negative FID difference", lambda v: v >= 0),
    ("keep_last_runs", "must be at least 1", lambda v: v >= 1),
    ("extractor", "must be classifier or inception_v3", lambda v: v in ("classifier", "inception_v3")),
    ("precision_recall_k", "must be a positive integer", _positive),
]


def describe_setting(key: str) -> str:
    """Return the help text of flat setting `key`: what it does, its rule if it has one, and its built-in default."""
    rules = _rules_by_key()
    default = _flat_defaults()[key]
    if default is None:
        default = "unset"
    elif isinstance(default, bool):
        default = str(default).lower()

    parts = [SETTING_DESCRIPTIONS[key]]
    if key in rules:
        parts.append(rules[key][0].upper() + rules[key][1:] + ".")
    elif FLAT_SETTINGS[key][2] is bool:
        parts.append("True or false (also yes/no, 1/0).")
    parts.append(f"Default: {default}.")
    return " ".join(parts)


@cache
def _rules_by_key() -> dict[str, str]:
    return {key: rule for key, rule, _ in _RULES}


@cache
def _flat_defaults() -> dict[str, Any]:
    # Built once, because the CLI reads the default of every setting for every subcommand.
    return PipelineConfig().to_flat()
