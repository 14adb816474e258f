"""Pictures of images and masks: class colours, overlays of truth and prediction, PNGs.

Figures are made with matplotlib's object API (no pyplot, so no global backend or figure
state is touched) and rendered by Agg; every file is written atomically. Drawn by the CV
report (infer/report.py), the training curves and TensorBoard's overlays (train/).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from competition.data import metric
from competition.files import atomic_path


COLORS = ("#e41a1c", "#4daf4a", "#377eb8", "#ff7f00")  # classes 1..4: red, green, blue, orange


PRED_ALPHA = 0.4


DPI = 100


MAX_PNG_BYTES = 1_500_000


MIN_DPI = 40


def example_dice(truth, pred) -> list[float]:
    """Per-class Dice of one example: truth, pred (C, H, W) bool -> C floats (1 if both empty)."""
    return [float(d) for d in metric.dice(pred, truth)]


def format_dice(value) -> str:
    """A Dice with 4 decimals; '-' when it was not measured (None)."""
    return "-" if value is None else f"{value:.4f}"


def overlay_figure(examples: list[dict]) -> Figure:
    """One row per example: the image at its true aspect ratio, truth outlined and the
    prediction filled in one colour per class; title with image id, fold and class Dice."""
    height, width = np.asarray(examples[0]["truth"]).shape[-2:]
    row_height = 16 * height / width + 0.45  # room for the title
    fig = Figure(figsize=(16, row_height * len(examples) + 0.5), dpi=DPI, layout="constrained")
    axes = fig.subplots(len(examples), 1, squeeze=False).ravel()
    for ax, example in zip(axes, examples):
        _draw_example(ax, example)
    handles = [Patch(facecolor=color, alpha=PRED_ALPHA, edgecolor=color, label=f"class {i + 1}")
               for i, color in enumerate(COLORS)]
    handles.append(Line2D([], [], color="black", label="outline: truth, fill: prediction"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9)
    return fig


def _draw_example(ax, example: dict) -> None:
    image = np.asarray(example["image"])
    truth = np.asarray(example["truth"], bool)
    pred = np.asarray(example["pred"], bool)
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="antialiased")
    ax.imshow(_prediction_rgba(pred), interpolation="nearest")
    for c, mask in enumerate(truth):
        if mask.any():
            ax.contour(mask.astype(np.uint8), levels=[0.5], colors=[COLORS[c % len(COLORS)]],
                       linewidths=1.5)
    dices = "  ".join(f"{c + 1}: {format_dice(d)}"
                      for c, d in enumerate(example_dice(truth, pred)))
    ax.set_title(f"{example['image_id']}   fold {example['fold']}   Dice  {dices}",
                 fontsize=10, loc="left")
    ax.set_axis_off()


def _prediction_rgba(pred: np.ndarray) -> np.ndarray:
    """(C, H, W) bool -> (H, W, 4) float32 RGBA: each class's colour where it is predicted
    (a later class wins on overlap), transparent elsewhere."""
    rgba = np.zeros(pred.shape[1:] + (4,), np.float32)
    for c, mask in enumerate(pred):
        color = COLORS[c % len(COLORS)]
        rgba[mask] = [int(color[i:i + 2], 16) / 255 for i in (1, 3, 5)] + [PRED_ALPHA]
    return rgba


def save_png(fig: Figure, path: str | Path, max_bytes: int = MAX_PNG_BYTES) -> int:
    """Render `fig` to PNG at DPI, lowered step by step (not below MIN_DPI) while the file
    would exceed max_bytes; write it atomically. Returns the size in bytes."""
    dpi = DPI
    data = _render(fig, dpi)
    while len(data) > max_bytes and dpi > MIN_DPI:
        dpi = max(MIN_DPI, int(dpi * 0.8))
        data = _render(fig, dpi)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return len(data)


def figure_array(fig: Figure, dpi: int = DPI) -> np.ndarray:
    """`fig` rendered by Agg at `dpi` -> (H, W, 3) uint8 RGB: an image for TensorBoard
    (training's overlays), drawn by the same code as the report's PNGs."""
    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _render(fig: Figure, dpi: int) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
