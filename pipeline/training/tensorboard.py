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
import struct
from pathlib import Path

import tensorflow as tf
from PIL import Image
from tensorflow.core.framework import summary_pb2
from tensorflow.core.util import event_pb2

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

    def drop_events_after(self, step: int) -> None:
        """Rewrite the stored event files of earlier attempts without their summaries after `step`.

        An attempt killed after its last checkpoint leaves events for steps that the resumed
        attempt trains again, and TensorBoard would show both values. Call this before the first
        upload of a resumed attempt, with the step of the restored checkpoint. Events without a
        summary (the file version) are kept, and a file that changes nothing is not rewritten.
        """
        for info in self.store.list(run_key(self.run_id, f"{TENSORBOARD_DIR}/")):
            data = self.store.get_bytes(info.key)
            trimmed = _records_up_to_step(data, step)
            if trimmed != data:
                self.store.put_bytes(info.key, trimmed)
                log.info("run %s: dropped TensorBoard events after step %d from %s", self.run_id, step, info.key)

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


# A TFRecord record: uint64 length, uint32 masked CRC of the length, the data, uint32 masked CRC of the data.
_LENGTH = struct.Struct("<Q")
_HEADER_SIZE = 12
_FOOTER_SIZE = 4


def _records_up_to_step(data: bytes, step: int) -> bytes:
    """Return the event file `data` without its summary events after `step`, other records byte for byte.

    A record cut short at the end (a writer killed mid-write) is dropped.
    """
    records = []
    offset = 0
    while offset + _HEADER_SIZE <= len(data):
        (length,) = _LENGTH.unpack_from(data, offset)
        end = offset + _HEADER_SIZE + length + _FOOTER_SIZE
        if end > len(data):
            break
        event = event_pb2.Event.FromString(data[offset + _HEADER_SIZE : end - _FOOTER_SIZE])
        if not event.HasField("summary") or event.step <= step:
            records.append(data[offset:end])
        offset = end
    return b"".join(records)


def _metadata(plugin_name: str) -> summary_pb2.SummaryMetadata:
    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = plugin_name
    return metadata
