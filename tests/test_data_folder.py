"""Tests of image folder and .npz sources, prepared into shards and read back, on images written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import DataConfig, PipelineConfig
from pipeline.data.fetch import fetch_dataset
from pipeline.data.manifest import Manifest
from pipeline.data.prepare import prepare_dataset
from pipeline.data.reader import make_dataset
from pipeline.data.sources import load_source
from pipeline.errors import DataError
from pipeline.storage.local import LocalStore


def save_image(path: Path, pixels: np.ndarray, image_format: str | None = None, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=image_format, **options)


def random_rgb(seed: int, height: int = 12, width: int = 12) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def write_split_folders(root: Path, per_class: int = 4) -> None:
    """Write train/ and test/ folders with classes 'cat' and 'dog', PNG files of 12x12 RGB."""
    for split in ("train", "test"):
        for label, name in enumerate(("cat", "dog")):
            for index in range(per_class):
                save_image(root / split / name / f"{index}.png", random_rgb(100 * label + index))


def prepare(root: Path, source: str, **settings) -> tuple[dict, Manifest, LocalStore]:
    config = PipelineConfig.from_mapping({"source": source, "cache_dir": str(root / "cache"), **settings})
    store = LocalStore(root / "store")
    summary = prepare_dataset(config, store)
    return summary, Manifest.from_dict(store.get_json(summary["manifest_key"])), store


def store_snapshot(store: LocalStore) -> dict[str, tuple[int, int]]:
    return {
        path.relative_to(store.root).as_posix(): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in store.root.rglob("*")
        if path.is_file()
    }


def test_folder_mixed_jpeg_batch_has_3_channels(tmp_path):
    images = tmp_path / "photos"
    for index in range(7):
        save_image(images / "train" / f"rgb-{index}.jpg", random_rgb(index, 16, 16), "JPEG")
    save_image(images / "train" / "gray.jpg", np.full((16, 16), 90, dtype=np.uint8), "JPEG")
    save_image(images / "test" / "rgb.jpg", random_rgb(9, 16, 16), "JPEG")
    summary, manifest, store = prepare(tmp_path, f"folder:{images}")
    directory, manifest = fetch_dataset(store, summary["fingerprint"], tmp_path / "fetched")

    batch = next(iter(make_dataset(directory, manifest, "train", 8, shuffle=False)))

    assert batch.shape == (8, 16, 16, 3)
    assert manifest.channels == 3


def test_folder_rgba_png_and_2d_array_stored_rgb(tmp_path):
    folder = tmp_path / "mixed"
    for index in range(3):
        save_image(folder / "train" / f"rgb-{index}.png", random_rgb(index))
    rgba = np.zeros((12, 12, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    save_image(folder / "train" / "rgba.png", rgba)
    save_image(folder / "train" / "gray2d.png", np.full((12, 12), 50, dtype=np.uint8))
    save_image(folder / "test" / "rgb.png", random_rgb(7))

    data = load_source(f"folder:{folder}", "train", None, DataConfig(channels=3))

    assert data.images.shape == (5, 12, 12, 3)
    assert data.images.dtype == np.uint8


def test_folder_class_subfolders_are_labels(tmp_path):
    write_split_folders(tmp_path / "pets")

    data = load_source(f"folder:{tmp_path / 'pets'}", "train", None)

    assert data.label_names == ["cat", "dog"]
    assert data.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_folder_without_classes_unlabelled(tmp_path):
    for index in range(20):
        save_image(tmp_path / "flat" / f"{index:02d}.png", random_rgb(index))

    train = load_source(f"folder:{tmp_path / 'flat'}", "train", None, DataConfig(test_fraction=0.3))
    test = load_source(f"folder:{tmp_path / 'flat'}", "test", None, DataConfig(test_fraction=0.3))

    assert train.label_names == ["unlabelled"]
    assert len(train.images) + len(test.images) == 20
    assert 0 < len(test.images) < 20


def test_folder_recursive_and_suffix_case(tmp_path):
    save_image(tmp_path / "deep" / "train" / "a" / "b" / "c" / "x.PNG", random_rgb(1))
    save_image(tmp_path / "deep" / "train" / "a" / "y.webp", random_rgb(2), lossless=True)
    save_image(tmp_path / "deep" / "test" / "a" / "z.bmp", random_rgb(3))

    data = load_source(f"folder:{tmp_path / 'deep'}", "train", None)

    assert len(data.images) == 2
    assert data.label_names == ["a"]


def test_folder_skips_undecodable_files(tmp_path):
    folder = tmp_path / "dirty"
    write_split_folders(folder, per_class=20)
    (folder / "train" / "cat" / "empty.png").write_bytes(b"")
    (folder / "train" / "dog" / "notes.jpg").write_text("shopping list, not a photo")

    summary, manifest, _ = prepare(tmp_path, f"folder:{folder}", max_skipped_fraction=0.1)

    skipped = {entry["file"]: entry for entry in manifest.skipped}
    assert sorted(skipped) == ["cat/empty.png", "dog/notes.jpg"]
    assert "empty" in skipped["cat/empty.png"]["reason"]
    assert "not an image" in skipped["dog/notes.jpg"]["reason"]
    assert skipped["cat/empty.png"]["split"] == "train"
    assert summary["num_train"] == 40


def test_folder_too_many_skipped_fails(tmp_path):
    folder = tmp_path / "broken"
    write_split_folders(folder, per_class=2)
    for index in range(3):
        (folder / "train" / "cat" / f"bad-{index}.png").write_bytes(b"")

    with pytest.raises(DataError, match="max_skipped_fraction") as error:
        prepare(tmp_path, f"folder:{folder}", max_skipped_fraction=0.2)

    assert "cat/bad-0.png" in str(error.value)


def test_folder_zero_usable_images_fails(tmp_path):
    folder = tmp_path / "nothing"
    write_split_folders(folder, per_class=1)
    for path in (folder / "train").rglob("*.png"):
        path.write_bytes(b"")

    with pytest.raises(DataError, match="no usable image") as error:
        prepare(tmp_path, f"folder:{folder}", max_skipped_fraction=1.0)

    assert "cat/0.png" in str(error.value)


def test_folder_missing_directory(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_source(f"folder:{tmp_path / 'absent'}", "train", None)


def test_folder_prepared_twice_writes_nothing(tmp_path):
    write_split_folders(tmp_path / "pets")
    first, _, store = prepare(tmp_path, f"folder:{tmp_path / 'pets'}")
    before = store_snapshot(store)

    second, _, _ = prepare(tmp_path, f"folder:{tmp_path / 'pets'}")

    assert second["fingerprint"] == first["fingerprint"]
    assert second["reused"] is True
    assert store_snapshot(store) == before


@pytest.mark.parametrize(
    "setting", [{"height": 8}, {"channels": 1}, {"resize_mode": "pad", "width": 10}, {"background": "white"}]
)
def test_folder_setting_changes_fingerprint(tmp_path, setting):
    write_split_folders(tmp_path / "pets", per_class=1)
    reference, _, _ = prepare(tmp_path / "a", f"folder:{tmp_path / 'pets'}")

    changed, _, _ = prepare(tmp_path / "b", f"folder:{tmp_path / 'pets'}", **setting)

    assert changed["fingerprint"] != reference["fingerprint"]


def test_folder_content_change_changes_fingerprint(tmp_path):
    write_split_folders(tmp_path / "pets", per_class=1)
    reference, _, _ = prepare(tmp_path / "a", f"folder:{tmp_path / 'pets'}")
    save_image(tmp_path / "pets" / "train" / "cat" / "0.png", random_rgb(999))

    changed, _, _ = prepare(tmp_path / "b", f"folder:{tmp_path / 'pets'}")

    assert changed["fingerprint"] != reference["fingerprint"]


def test_folder_resized_to_settings(tmp_path):
    write_split_folders(tmp_path / "pets", per_class=1)

    summary, _, _ = prepare(tmp_path, f"folder:{tmp_path / 'pets'}", height=6, width=10, channels=1)

    assert (summary["height"], summary["width"], summary["channels"]) == (6, 10, 1)


def test_npz_with_labels(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(50, 6, 6), dtype=np.uint8)
    np.savez(tmp_path / "arrays.npz", x=images, y=np.arange(50) % 5)

    train = load_source(f"npz:{tmp_path / 'arrays.npz'}", "train", None)
    test = load_source(f"npz:{tmp_path / 'arrays.npz'}", "test", None)

    assert train.images.shape[1:] == (6, 6, 1)
    assert len(train.images) + len(test.images) == 50
    assert train.label_names == ["0", "1", "2", "3", "4"]


def test_npz_without_labels_uint16(tmp_path):
    images = np.full((30, 4, 4, 3), 65535, dtype=np.uint16)
    np.savez(tmp_path / "deep.npz", x=images)

    data = load_source(f"npz:{tmp_path / 'deep.npz'}", "train", None)

    assert data.label_names == ["unlabelled"]
    assert data.images.max() == 255
    assert data.images.shape[1:] == (4, 4, 3)


def test_npz_missing_x(tmp_path):
    np.savez(tmp_path / "wrong.npz", images=np.zeros((3, 4, 4)))

    with pytest.raises(DataError, match="no images array 'x'"):
        load_source(f"npz:{tmp_path / 'wrong.npz'}", "train", None)


def test_idx_uncompressed_resized(tmp_path, fashion_mnist_dir):
    import gzip

    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        content = gzip.decompress((Path(fashion_mnist_dir) / f"{name}.gz").read_bytes())
        (tmp_path / name).write_bytes(content)

    data = load_source(f"idx:{tmp_path}", "train", 16, DataConfig(height=32, width=32, channels=3))

    assert data.images.shape == (16, 32, 32, 3)
