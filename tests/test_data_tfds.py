"""Tests of the TensorFlow Datasets source offline, on a data_dir that tfds' own builder fills here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.config import DataConfig, PipelineConfig
from pipeline.data.prepare import prepare_dataset
from pipeline.data.sources import load_source
from pipeline.errors import ConfigError, DataError
from pipeline.storage.local import LocalStore

tfds = pytest.importorskip("tensorflow_datasets")

TRAIN_EXAMPLES = 6
TEST_EXAMPLES = 3


class TinyColourSquares(tfds.core.GeneratorBasedBuilder):
    """A two-class dataset of 6x5 RGB images generated in memory, so preparing it needs no download."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        features = tfds.features.FeaturesDict(
            {"image": tfds.features.Image(shape=(6, 5, 3)), "label": tfds.features.ClassLabel(names=["red", "blue"])}
        )
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(TRAIN_EXAMPLES), "test": self._generate_examples(TEST_EXAMPLES)}

    def _generate_examples(self, count: int):
        rng = np.random.default_rng(count)
        for index in range(count):
            yield index, {"image": rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8), "label": index % 2}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tfds")
    TinyColourSquares(data_dir=str(directory)).download_and_prepare()
    return directory


def test_tfds_prepared_data_dir_loads_offline(data_dir):
    # tfds_download is on, so a download attempt would reach the refused network and fail.
    options = DataConfig(tfds_data_dir=str(data_dir), tfds_download=True)

    data = load_source("tfds:tiny_colour_squares:1.0.0", "train", None, options)

    assert data.images.shape == (TRAIN_EXAMPLES, 6, 5, 3)
    assert sorted(data.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert data.label_names == ["red", "blue"]


def test_tfds_without_version_uses_prepared(data_dir):
    data = load_source("tfds:tiny_colour_squares", "test", 2, DataConfig(tfds_data_dir=str(data_dir)))

    assert data.images.shape == (2, 6, 5, 3)


def test_tfds_prepare_resizes(data_dir, tmp_path):
    config = PipelineConfig.from_mapping(
        {
            "source": "tfds:tiny_colour_squares:1.0.0",
            "tfds_data_dir": str(data_dir),
            "height": 4,
            "width": 4,
            "channels": 1,
            "cache_dir": str(tmp_path / "cache"),
        }
    )

    summary = prepare_dataset(config, LocalStore(tmp_path / "store"))

    assert (summary["height"], summary["width"], summary["channels"]) == (4, 4, 1)
    assert (summary["num_train"], summary["num_test"]) == (TRAIN_EXAMPLES, TEST_EXAMPLES)


def test_tfds_empty_data_dir_fails(tmp_path):
    empty = tmp_path / "empty"

    with pytest.raises(DataError) as error:
        load_source("tfds:fashion_mnist:3.0.1", "train", None, DataConfig(tfds_data_dir=str(empty)))

    message = str(error.value)
    assert "fashion_mnist" in message
    assert "3.0.1" in message
    assert str(empty) in message
    assert "tfds build fashion_mnist:3.0.1" in message
    assert "tfds_download" in message


def test_tfds_unknown_builder(tmp_path):
    with pytest.raises(ConfigError, match="no TensorFlow Datasets builder"):
        load_source("tfds:no_such_dataset_xyz", "train", None, DataConfig(tfds_data_dir=str(tmp_path)))
