"""The readable evaluation report: one self-contained HTML page per run.

The page embeds every image as a base64 PNG `data:` URI and loads nothing from elsewhere, so it
opens the same from a local disk, an S3 console download or an e-mail attachment. Plots are drawn
with matplotlib's Agg canvas, which needs no display and leaves pyplot's global state alone.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from pipeline.training.samples import image_grid


def encode_png(pixels: np.ndarray) -> bytes:
    """Encode one uint8 image (H, W, C) with C in 1, 3 or 4 as PNG bytes."""
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def sample_grid_png(images: np.ndarray) -> bytes:
    """Tile uint8 images (N, H, W, C) into one grid (see `image_grid`) and return it as PNG bytes."""
    return encode_png(image_grid(images))


def loss_curve_png(rows: Sequence[dict[str, Any]]) -> bytes | None:
    """Plot d_loss and g_loss against step from metrics.jsonl rows; None when no row has both losses."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = [
        (row["step"], row["d_loss"], row["g_loss"])
        for row in rows
        if _is_number(row.get("step")) and _is_number(row.get("d_loss")) and _is_number(row.get("g_loss"))
    ]
    if not points:
        return None
    steps, d_losses, g_losses = zip(*points)

    figure = Figure(figsize=(7, 3.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    marker = "o" if len(points) < 20 else None
    axes.plot(steps, d_losses, label="d_loss", marker=marker)
    axes.plot(steps, g_losses, label="g_loss", marker=marker)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()

    buffer = io.BytesIO()
    # Without Software metadata, so the PNG carries no project URL.
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def render_report_html(report: dict[str, Any], figures: Mapping[str, bytes | None]) -> str:
    """Render the report.json content of a run and its figures (PNG bytes by name) as one HTML page.

    Figure names: "grid", "grid_raw", "nearest", "classes", "trend", "loss"; a missing or None
    figure is shown as a line saying it has no data.
    """
    run_id = html.escape(str(report["run_id"]))
    sections = [
        _metrics_section(report),
        _promoted_section(report.get("promoted")),
        _image_section("FID and KID of earlier runs on this dataset", figures.get("trend"), "FID and KID per run", "plot"),
        _extractor_section(report["extractor"], report.get("classifier")),
        _image_section("Predicted classes", figures.get("classes"), "class shares of generated and real images", "plot"),
        _image_section(
            "Samples from the fixed latents (evaluated generator)", figures.get("grid"), "sample grid", "grid"
        ),
        _raw_section(figures.get("grid_raw")),
        _image_section(
            "Nearest real training images (memorisation check)", figures.get("nearest"),
            "generated samples, each followed by its nearest training images", "grid",
        ),
        '<p class="note">Each row: a generated sample, then its nearest real training images in the '
        "extractor's feature space. Rows that repeat a training image point to memorisation.</p>",
        _image_section("Loss curves (metrics.jsonl)", figures.get("loss"), "d_loss and g_loss against step", "plot"),
        _training_section(report.get("training", {}), report.get("training_settings", {})),
    ]
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            f"<title>GAN evaluation report: run {run_id}</title>",
            f"<style>{_STYLE}</style>",
            "</head>",
            "<body>",
            f"<h1>GAN evaluation report: run {run_id}</h1>",
            f"<p>Dataset fingerprint <code>{html.escape(str(report['fingerprint']))}</code>, "
            f"evaluated {html.escape(str(report.get('created_at', '')))} "
            f"with gan-pipeline {html.escape(str(report.get('code_version', '')))}.</p>",
            *sections,
            "</body>",
            "</html>",
            "",
        ]
    )


def _metrics_section(report: dict[str, Any]) -> str:
    metrics = report["metrics"]
    floor = report.get("noise_floor", {}).get("metrics", {})
    fid, kid = metrics["fid"], metrics["kid"]
    real = report["real"]
    rows = [
        ("FID ↓", _format(fid["value"]), _floor(floor, "fid", "value"), f"{fid['num_generated']} generated vs {fid['num_real']} real"),
        (
            "KID ↓",
            f"{_format(kid['mean'])} ± {_format(kid['std'])}",
            _floor(floor, "kid", "mean"),
            f"{kid['num_subsets']} subsets of {kid['subset_size']} from "
            f"{kid['num_generated']} generated and {kid['num_real']} real",
        ),
    ]
    if "precision_recall" in metrics:
        precision_recall = metrics["precision_recall"]
        counts = (
            f"k = {precision_recall['k']}, {precision_recall['num_generated']} generated "
            f"vs {precision_recall['num_real']} real"
        )
        rows.append(("precision ↑", _format(precision_recall["precision"]), _floor(floor, "precision_recall", "precision"), counts))
        rows.append(("recall ↑", _format(precision_recall["recall"]), _floor(floor, "precision_recall", "recall"), counts))
    if "class_coverage" in metrics:
        coverage = metrics["class_coverage"]
        counts = f"{coverage['num_generated']} generated, {coverage['num_classes']} classes"
        rows.append(("classifier score ↑", _format(coverage["classifier_score"]), _floor(floor, "class_coverage", "classifier_score"), counts))
        rows.append(("class coverage ↑", _format(coverage["coverage"]), _floor(floor, "class_coverage", "coverage"), counts))
        rows.append(("KL to real classes ↓", _format(coverage["kl_to_real"]), _floor(floor, "class_coverage", "kl_to_real"), counts))

    floor_count = report.get("noise_floor", {}).get("num_images", "?")
    return "\n".join(
        [
            "<h2>Metrics</h2>",
            _table(("metric", "model", "noise floor", "samples"), rows),
            f"<p>Real images: the first {real['num_real']} of the {real['num_available']} records of the "
            f"{html.escape(real['split'])} split. Noise floor: the same metrics for the first {floor_count} "
            "real training images in place of generated ones, the best a model can expect. "
            "↓ lower is better, ↑ higher is better.</p>",
            "<p class=\"note\">FID is biased upwards at small sample counts: compare FID values only at "
            "equal sample counts and with the same feature extractor. KID is unbiased, so it can be "
            "slightly negative when the two sets match. KID's polynomial kernel works on the raw feature "
            "values, so its scale follows the extractor: the classifier's KID can be far larger than "
            "Inception-v3 KID for the same images. Values from the dataset's own classifier are "
            "not comparable with published Inception-v3 values.</p>",
        ]
    )


def _floor(floor: dict[str, Any], metric: str, field: str) -> str:
    value = floor.get(metric, {}).get(field)
    return "–" if value is None else _format(value)


def _promoted_section(promoted: dict[str, Any] | None) -> str:
    # The report is written before the publish step, and run.json records its hash, so the page
    # shows the model promoted at evaluation time and points to where this run's decision is kept.
    heading = "<h2>Compared with the model promoted before this run</h2>"
    decision = (
        '<p class="note">The publish step then decides whether this run is promoted: see '
        "<code>promotion</code> in its run.json, or <code>python -m pipeline runs</code>.</p>"
    )
    if promoted is None:
        return "\n".join(
            [heading, "<p>No model was promoted when this run was evaluated (models/best.json not found).</p>", decision]
        )
    rows = [
        ("FID", _format(promoted.get("fid")), _signed(promoted.get("fid_change"))),
        ("KID", _format(promoted.get("kid_mean")), _signed(promoted.get("kid_change"))),
    ]
    note = (
        "Same dataset, extractor and sample counts, so the values are comparable."
        if promoted.get("comparable")
        else "The promoted run used another dataset, extractor or sample count, so compare with care."
    )
    return "\n".join(
        [
            heading,
            f"<p>Promoted run <code>{html.escape(str(promoted.get('run_id')))}</code>. "
            "A negative change means this run is better.</p>",
            _table(("metric", "promoted", "this run minus promoted"), rows),
            f'<p class="note">{html.escape(note)}</p>',
            decision,
        ]
    )


def _signed(value: Any) -> str:
    if not _is_number(value):
        return "–"
    return ("+" if value > 0 else "") + _format(float(value))


def _extractor_section(extractor: dict[str, Any], classifier: dict[str, Any] | None) -> str:
    classifier = classifier or extractor
    rows = [("features", f"{extractor.get('name')}, {extractor.get('feature_dim', '?')} values per image")]
    if extractor.get("weights"):
        rows.append(("weights", f"{extractor['weights']} (sha256 {str(extractor.get('sha256'))[:12]}…)"))
    rows += [
        ("classifier", str(classifier.get("name"))),
        ("classifier test accuracy", f"{classifier['test_accuracy']:.4f} on {classifier.get('num_test', '?')} test images"),
        ("classifier training", f"{classifier.get('epochs', '?')} epochs on {classifier.get('num_train', '?')} training images"),
    ]
    section = "<h2>Feature extractor</h2>\n" + _table(("field", "value"), rows)
    target = classifier.get("accuracy_target")
    if _is_number(target) and classifier["test_accuracy"] < target:
        section += (
            f'\n<p class="warning">The classifier\'s test accuracy is below {target:.0%}, so its features and '
            "class coverage are weak: raise classifier_epochs and delete its cached copy.</p>"
        )
    return section


def _raw_section(png: bytes | None) -> str:
    if png is None:
        return "<p class=\"note\">The run has no raw generator (generator_raw.keras), so only the evaluated one is shown.</p>"
    return _image_section(
        "Samples from the fixed latents (raw generator, without the moving average)", png, "raw sample grid", "grid"
    )


def _training_section(training: dict[str, Any], settings: dict[str, Any]) -> str:
    if not training:
        return "<h2>Training</h2>\n<p>train.json has no summary for this run.</p>"
    names = ("steps", "epochs", "batch_size", "latent_dim", "d_loss", "g_loss", "images_per_second")
    rows = [(name, _format(training[name])) for name in names if name in training]
    rows += [(name, _format(value)) for name, value in settings.items()]
    return "<h2>Training (final values and settings)</h2>\n" + _table(("field", "value"), rows)


def _image_section(title: str, png: bytes | None, alt: str, css_class: str) -> str:
    heading = f"<h2>{html.escape(title)}</h2>"
    if png is None:
        return f"{heading}\n<p>No data to draw.</p>"
    encoded = base64.b64encode(png).decode("ascii")
    return f'{heading}\n<img class="{css_class}" alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _format(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_STYLE = """
body { font-family: sans-serif; max-width: 60em; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.8em; text-align: left; }
th { background: #f0f0f0; }
.note { color: #555; font-size: 0.9em; }
.warning { color: #a00; font-weight: bold; }
img.grid { width: 448px; image-rendering: pixelated; border: 1px solid #ccc; }
img.plot { max-width: 100%; }
"""
