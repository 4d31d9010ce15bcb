"""The two pixel conversions: stored uint8 [0, 255] <-> model float32 [-1, 1].

These are the only places that convert; everything else calls them.
"""

from __future__ import annotations

import numpy as np


def to_model_range(images):
    """Map uint8 images in [0, 255] to float32 in [-1, 1]: x / 127.5 - 1. Accepts tensors or arrays."""
    import tensorflow as tf

    return tf.cast(images, tf.float32) / 127.5 - 1.0


def to_uint8(images) -> np.ndarray:
    """Map model images in [-1, 1] to uint8 [0, 255]: round((x + 1) * 127.5), clipped."""
    values = np.asarray(images, dtype=np.float32)
    return np.clip(np.round((values + 1.0) * 127.5), 0, 255).astype(np.uint8)
