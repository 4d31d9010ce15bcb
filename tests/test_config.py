import pytest

from pipeline.config import FLAT_SETTINGS, PipelineConfig
from pipeline.errors import ConfigError


def test_config_defaults_are_valid():
    config = PipelineConfig.from_mapping({})

    assert config.train.latent_dim == 100
    assert config.train.beta_1 == 0.5


def test_config_converts_form_strings():
    config = PipelineConfig.from_mapping({"epochs": "3", "generator_learning_rate": "1e-3", "store_create_bucket": "true"})

    assert config.train.epochs == 3
    assert config.train.generator_learning_rate == pytest.approx(1e-3)
    assert config.store.create_bucket is True


def test_config_none_means_default():
    config = PipelineConfig.from_mapping({"steps": None, "epochs": None})

    assert config.train.steps is None
    assert config.train.epochs == 25


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        ("epochs", -1, "positive"),
        ("epochs", "ten", "integer"),
        ("epochs", 2.5, "integer"),
        ("batch_size", 0, "between 1 and 65536"),
        ("beta_1", 1.0, "[0, 1)"),
        ("num_samples", 1, "at least 2"),
        ("store_create_bucket", "maybe", "true or false"),
        ("source", "  ", "dataset source"),
    ],
)
def test_config_rejects_bad_value_naming_it(key, value, rule):
    with pytest.raises(ConfigError) as raised:
        PipelineConfig.from_mapping({key: value})

    assert raised.value.name == key
    assert repr(value) in str(raised.value)
    assert rule in str(raised.value)


def test_config_rejects_unknown_setting():
    with pytest.raises(ConfigError, match="unknown setting"):
        PipelineConfig.from_mapping({"epoch": 3})


def test_config_flat_round_trip():
    config = PipelineConfig.from_mapping({"epochs": 7, "store_uri": "s3://bucket/prefix", "seed": 3})

    assert PipelineConfig.from_mapping(config.to_flat()) == config


def test_config_flat_keys_are_unique_per_field():
    fields = [(section, name) for section, name, _ in FLAT_SETTINGS.values()]

    assert len(fields) == len(set(fields))


def test_config_unknown_setting_suggests_close_name():
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        PipelineConfig.from_mapping({"epoch": 3})


@pytest.mark.parametrize("source", ["mnist", "idx:", "folder"])
def test_config_rejects_unknown_source_form(source):
    with pytest.raises(ConfigError, match="fashion_mnist, idx:<dir>"):
        PipelineConfig.from_mapping({"source": source})


def test_every_setting_has_a_description():
    from pipeline.config import FLAT_SETTINGS, SETTING_DESCRIPTIONS

    assert sorted(SETTING_DESCRIPTIONS) == sorted(FLAT_SETTINGS)
    assert all(text.endswith(".") for text in SETTING_DESCRIPTIONS.values())
