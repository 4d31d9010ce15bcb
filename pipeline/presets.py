"""Named presets of settings for common runs: a quick smoke run, the nightly run and a full-quality run.

A preset supplies values for the settings that a run leaves at their built-in default. A setting
counts as left at its default when it is missing, None, or equal to the `PipelineConfig` default,
because Airflow's trigger form sends every Param, changed or not. So an explicit value wins, except
an explicit value equal to the built-in default: choose the preset `none` to run with exactly that.
"""

from __future__ import annotations

from typing import Any, Mapping

from pipeline.config import PipelineConfig
from pipeline.errors import ConfigError

PRESET_KEY = "preset"
NO_PRESET = "none"

PRESETS: dict[str, dict[str, Any]] = {
    NO_PRESET: {},
    # Proves that the chain works, not that the model is good. The whole DAG run took about 25 s on
    # 2 CPU cores under the real scheduler (tests/test_airflow_services.py uses the same sizes).
    "smoke": {
        "epochs": 1,
        "batch_size": 64,
        "max_train_examples": 512,
        "max_test_examples": 256,
        "num_samples": 128,
        "kid_subset_size": 64,
        "kid_subsets": 2,
        "classifier_epochs": 1,
        "records_per_shard": 256,
        "checkpoint_every": 50,
        "log_every": 10,
    },
    # The scheduled run: the built-in defaults, written out so the preset documents them.
    "nightly": {
        "epochs": 25,
        "batch_size": 128,
        "num_samples": 10_000,
        "kid_subset_size": 1000,
        "kid_subsets": 10,
        "classifier_epochs": 3,
    },
    # Longer training and a better feature classifier; FID and KID use the whole 10,000-image test split.
    "full_quality": {
        "epochs": 100,
        "batch_size": 128,
        "num_samples": 10_000,
        "kid_subset_size": 1000,
        "kid_subsets": 100,
        "classifier_epochs": 10,
    },
}


def resolve_preset(values: Mapping[str, Any]) -> dict[str, Any]:
    """Return `values` without the `preset` key, with the preset's values in every setting left at its default.

    Raises ConfigError naming `preset` when its value is not a key of PRESETS. A missing or None
    preset means `none`, which returns the other values unchanged.
    """
    resolved = dict(values)
    name = resolved.pop(PRESET_KEY, None) or NO_PRESET
    if name not in PRESETS:
        raise ConfigError(PRESET_KEY, name, f"must be one of {sorted(PRESETS)}")

    defaults = PipelineConfig().to_flat()
    for key, preset_value in PRESETS[name].items():
        current = resolved.get(key)
        if current is None or current == defaults[key]:
            resolved[key] = preset_value
    return resolved
