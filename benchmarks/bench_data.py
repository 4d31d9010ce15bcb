"""Benchmark of dataset preparation and of the reader against what a GAN training step consumes.

Measures, in one run on this machine:

1. preparation throughput (images/s) of the Fashion-MNIST IDX files (70,000 images, 28x28x1),
   from reading the files to a committed manifest in a local artifact store;
2. preparation throughput of a folder of 10,000 PNG files (Fashion-MNIST images written here as
   grayscale PNGs in class sub-folders, normalised to 28x28x3);
3. the reader's images/s on the prepared Fashion-MNIST train split at batch 64 (shuffled, seeded),
   without and with horizontal-flip augmentation;
4. the images/s of the DCGAN train step (pipeline.training) at batch 64 on the same batches.

The goal is a reader that delivers at least 10x what a training step consumes. Run:

    python benchmarks/bench_data.py [--work-dir DIR] [--png-count 10000]

It prints one JSON object with every number and the machine, and logs progress.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


# Measure the checkout this script sits in, not an installed copy of the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

logger = logging.getLogger("bench_data")

# NOTE: measured on CPU only. A GPU train step consumes far more images/s, and whether the reader
# still delivers 10x that on a GPU worker has not been measured.
BATCH_SIZE = 64
READER_WARMUP_BATCHES = 20
READER_BATCHES = 1000
TRAIN_WARMUP_STEPS = 3
TRAIN_STEPS = 40


def main() -> None:
    arguments = parse_arguments()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    with tempfile.TemporaryDirectory(dir=arguments.work_dir) as scratch:
        root = Path(scratch)
        results = {"machine": describe_machine(), "batch_size": BATCH_SIZE}
        results["prepare_idx"] = bench_prepare(root / "idx", "fashion_mnist")

        folder = write_png_folder(root / "pngs", arguments.png_count)
        results["prepare_png_folder"] = bench_prepare(root / "folder", f"folder:{folder}", test_fraction=0.1)

        directory, manifest = fetch(root / "idx", results["prepare_idx"]["fingerprint"])
        results["reader"] = bench_reader(directory, manifest)
        results["reader_flip"] = bench_reader(directory, manifest, flip=True)
        results["train_step"] = bench_train_step(directory, manifest)

    results["reader_over_train_step"] = round(
        results["reader"]["images_per_second"] / results["train_step"]["images_per_second"], 1
    )
    print(json.dumps(results, indent=2))


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default=None, help="directory for the temporary store and cache (default: system temp)")
    parser.add_argument("--png-count", type=int, default=10_000, help="PNG files in the folder benchmark")
    return parser.parse_args()


def describe_machine() -> dict:
    import tensorflow as tf

    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "gpus": len(tf.config.list_physical_devices("GPU")),
    }


def bench_prepare(root: Path, source: str, **settings) -> dict:
    """Prepare `source` into a fresh local store and cache; return the count, seconds and images/s."""
    from pipeline.config import PipelineConfig
    from pipeline.data.prepare import prepare_dataset
    from pipeline.storage.local import LocalStore

    config = PipelineConfig.from_mapping({"source": source, "cache_dir": str(root / "cache"), **settings})
    store = LocalStore(root / "store")

    started = time.perf_counter()
    summary = prepare_dataset(config, store)
    seconds = time.perf_counter() - started

    images = summary["num_train"] + summary["num_test"]
    logger.info("prepared %s: %d images in %.1f s", source, images, seconds)
    return {
        "source": source.split(":")[0],
        "images": images,
        "shape": [summary["height"], summary["width"], summary["channels"]],
        "seconds": round(seconds, 2),
        "images_per_second": round(images / seconds),
        "fingerprint": summary["fingerprint"],
    }


def write_png_folder(folder: Path, count: int) -> Path:
    """Write the first `count` Fashion-MNIST training images as PNGs under <folder>/<class>/."""
    from PIL import Image

    from pipeline.data.sources import FASHION_MNIST_LABEL_NAMES, load_source

    data = load_source("fashion_mnist", "train", count)
    started = time.perf_counter()
    for index, (image, label) in enumerate(zip(data.images, data.labels)):
        class_folder = folder / FASHION_MNIST_LABEL_NAMES[label].replace("/", "-")
        class_folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[:, :, 0]).save(class_folder / f"{index:05d}.png")
    logger.info("wrote %d PNG files to %s in %.1f s", count, folder, time.perf_counter() - started)
    return folder


def fetch(root: Path, fingerprint: str):
    from pipeline.data.fetch import fetch_dataset
    from pipeline.storage.local import LocalStore

    return fetch_dataset(LocalStore(root / "store"), fingerprint, root / "cache")


def bench_reader(directory: Path, manifest, flip: bool = False) -> dict:
    """Time READER_BATCHES shuffled batches of BATCH_SIZE after READER_WARMUP_BATCHES, as training reads them."""
    from pipeline.data.reader import make_dataset

    dataset = make_dataset(directory, manifest, "train", BATCH_SIZE, seed=0, repeat=True, flip=flip)
    batches = iter(dataset)
    for _ in range(READER_WARMUP_BATCHES):
        next(batches)

    started = time.perf_counter()
    for _ in range(READER_BATCHES):
        next(batches)
    seconds = time.perf_counter() - started

    images = READER_BATCHES * BATCH_SIZE
    logger.info("reader (flip %s): %d images in %.2f s", flip, images, seconds)
    return {"images": images, "seconds": round(seconds, 2), "images_per_second": round(images / seconds)}


def bench_train_step(directory: Path, manifest) -> dict:
    """Time TRAIN_STEPS compiled GAN train steps at BATCH_SIZE on reader batches held in memory."""
    import tensorflow as tf

    from pipeline.config import TrainConfig
    from pipeline.data.reader import make_dataset
    from pipeline.training.train import build_gan

    gan = build_gan(TrainConfig(batch_size=BATCH_SIZE), manifest.height, manifest.width, manifest.channels)
    train_step = tf.function(gan.train_step)
    batches = list(make_dataset(directory, manifest, "train", BATCH_SIZE, seed=1).take(TRAIN_WARMUP_STEPS + TRAIN_STEPS))

    for real_images in batches[:TRAIN_WARMUP_STEPS]:
        train_step(real_images)

    started = time.perf_counter()
    for real_images in batches[TRAIN_WARMUP_STEPS:]:
        results = train_step(real_images)
    float(results["d_loss"])  # waits for the last step to finish
    seconds = time.perf_counter() - started

    images = TRAIN_STEPS * BATCH_SIZE
    logger.info("train step: %d images in %.2f s", images, seconds)
    return {"images": images, "seconds": round(seconds, 2), "images_per_second": round(images / seconds)}


if __name__ == "__main__":
    main()
