"""Figures of the report other than the loss curves, as PNG bytes drawn with matplotlib's Agg canvas."""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np

from pipeline.evaluation.report import encode_png


def trend_png(history: Sequence[dict[str, Any]], run_id: str, metrics: dict[str, Any]) -> bytes:
    """Plot FID and KID of earlier runs (oldest first) and of this run, one point per run."""
    run_ids = [run["run_id"] for run in history] + [run_id]
    fids = [run["fid"] for run in history] + [metrics["fid"]["value"]]
    kids = [run.get("kid_mean") for run in history] + [metrics["kid"]["mean"]]
    positions = np.arange(len(run_ids))

    figure, (fid_axes, kid_axes) = _figure(2, height=4.5)
    fid_axes.plot(positions, fids, marker="o")
    fid_axes.set_ylabel("FID")
    kid_axes.plot(positions, [np.nan if kid is None else kid for kid in kids], marker="o", color="tab:orange")
    kid_axes.set_ylabel("KID")
    kid_axes.set_xticks(positions, run_ids, rotation=30, ha="right", fontsize=7)
    for axes in (fid_axes, kid_axes):
        axes.grid(alpha=0.3)
        axes.plot(positions[-1:], [fids[-1]] if axes is fid_axes else [kids[-1]], marker="o", color="tab:red")
    return _png(figure)


def class_histogram_png(coverage: dict[str, Any], label_names: Sequence[str]) -> bytes:
    """Draw the predicted-class shares of generated and of real test images side by side."""
    generated = np.asarray(coverage["histogram"], dtype=np.float64)
    real = np.asarray(coverage["real_histogram"], dtype=np.float64)
    positions = np.arange(len(generated))
    names = list(label_names) if len(label_names) == len(generated) else [str(index) for index in positions]

    figure, (axes,) = _figure(1, height=3.5)
    axes.bar(positions - 0.2, generated / max(generated.sum(), 1.0), width=0.4, label="generated")
    axes.bar(positions + 0.2, real / max(real.sum(), 1.0), width=0.4, label="real (test)")
    axes.set_xticks(positions, names, rotation=30, ha="right", fontsize=8)
    axes.set_ylabel("share of images")
    axes.legend()
    return _png(figure)


def nearest_strip_png(samples: np.ndarray, neighbours: np.ndarray, gap: int = 4) -> bytes:
    """Tile uint8 samples (N, H, W, C) in the first column and their neighbours (N, K, H, W, C) beside them.

    A white gap of `gap` pixels separates the sample column from its neighbours.
    """
    count, height, width, channels = samples.shape
    num_neighbours = neighbours.shape[1]
    canvas = np.full((count * height, (num_neighbours + 1) * width + gap, channels), 255, dtype=np.uint8)
    for row in range(count):
        top = row * height
        canvas[top:top + height, :width] = samples[row]
        for column in range(num_neighbours):
            left = width + gap + column * width
            canvas[top:top + height, left:left + width] = neighbours[row, column]
    return encode_png(canvas)


def _figure(rows: int, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, height), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    return figure, tuple(axes)


def _png(figure) -> bytes:
    figure.tight_layout()
    buffer = io.BytesIO()
    # Without Software metadata, so the PNG carries no project URL.
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()
