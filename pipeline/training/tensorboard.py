"""TensorBoard event files of a run, written locally and mirrored to runs/<run_id>/tensorboard/.

Scalars (d_loss, g_loss, images_per_second) are written at every progress line and the sample
grids as images, all at the training step. Each upload copies every event file of the local
directory, so the store contains what TensorBoard would show for this attempt.

tensorflow-cpu does not install the `tensorboard` package that tf.summary.scalar and
tf.summary.image need, so this module writes the same records with the low-level
tf.summary.write and the plugin names that TensorBoard's scalar and image dashboards read
("scalars": a float32 scalar; "images": the strings [width, height, PNG bytes]).
"""

from __future__ import annotations

import logging
from pathlib import Path

import tensorflow as tf
from PIL import Image
from tensorflow.core.framework import summary_pb2

from pipeline.layout import TENSORBOARD_DIR, run_key
from pipeline.storage.base import ArtifactStore

log = logging.getLogger(__name__)


class TensorBoardWriter:
    """A tf.summary file writer in `work_dir`/tensorboard whose files are uploaded after each write."""

    def __init__(self, store: ArtifactStore, run_id: str, work_dir: Path):
        self.store = store
        self.run_id = run_id
        self.directory = Path(work_dir) / TENSORBOARD_DIR
        self.directory.mkdir(parents=True, exist_ok=True)
        self.writer = tf.summary.create_file_writer(str(self.directory))

    # NOTE: an attempt killed after its last checkpoint leaves events for steps that the next attempt
    # trains again, so TensorBoard can show two values at those steps (metrics.jsonl drops them).
    def write_scalars(self, step: int, values: dict[str, float | None]) -> None:
        """Write each non-None value as a scalar at `step`, then upload."""
        with self.writer.as_default(step=step):
            for name, value in values.items():
                if value is not None:
                    tf.summary.write(name, tf.constant(value, tf.float32), metadata=_metadata("scalars"))
        self.upload()

    def write_png(self, step: int, name: str, path: Path) -> None:
        """Write the PNG at `path` as image `name` at `step`, then upload."""
        path = Path(path)
        with Image.open(path) as image:
            width, height = image.size
        tensor = tf.constant([str(width).encode(), str(height).encode(), path.read_bytes()])
        with self.writer.as_default(step=step):
            tf.summary.write(name, tensor, metadata=_metadata("images"))
        self.upload()

    def upload(self) -> None:
        """Flush the writer and upload every event file under runs/<run_id>/tensorboard/."""
        self.writer.flush()
        for path in sorted(self.directory.rglob("*")):
            if path.is_file():
                relative = path.relative_to(self.directory).as_posix()
                self.store.put_file(run_key(self.run_id, f"{TENSORBOARD_DIR}/{relative}"), path)

    def close(self) -> None:
        self.upload()
        self.writer.close()


def _metadata(plugin_name: str) -> summary_pb2.SummaryMetadata:
    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = plugin_name
    return metadata
