"""curves.png: a training run's curves against epochs from its history.csv rows: train and
validation loss, the LR, validation Dice per class beside the all-empty baseline
(segmenters), ROC AUC per class (classifiers, and segmenters with a head). One run, or
several overlaid in one figure: one colour per series, one marker per run.

Training redraws RUN/curves.png after every epoch; `python -m competition curves RUN ...`
redraws it from history.csv (old runs) or overlays runs (--out FILE). matplotlib's object
API, rendered by Agg and written atomically, like the CV report's figures (data/figures.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from competition.errors import InputError, where
from competition.data.labels import CLASSES, read_columns
from competition.data.figures import COLORS, DPI, save_png

CURVES = "curves.png"
HISTORY = "history.csv"
REQUIRED = ("epoch", "train_loss", "val_loss", "lr")  # every run's history.csv has these
MEAN, VAL = "black", "#984ea3"
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")  # run k of an overlay
# panel title -> (y label, log scale, series: (history column, label, colour, line style))
PANELS = {
    "loss": ("loss", False, [("train_loss", "train", MEAN, "-"),
                             ("val_loss", "validation", VAL, "-")]),
    "learning rate (decoder and head)": ("LR", True, [("lr", "LR", MEAN, "-")]),
    "validation Dice": ("Dice", False, [
        ("val_dice", "mean", MEAN, "-"),
        *[(f"dice_{c}", f"class {c}", COLORS[c - 1], "-") for c in CLASSES],
        ("all_empty", "all empty", "grey", "--")]),
    "validation ROC AUC": ("ROC AUC", False, [
        ("val_auc", "mean", MEAN, "-"),
        *[(f"auc_{c}", f"class {c}", COLORS[c - 1], "-") for c in CLASSES]]),
}
LOSSES = {"train_loss", "val_loss"}  # never undefined: a missing value is a non-finite loss


def history_path(run: str | Path) -> Path:
    """A run folder, or its history.csv itself -> the history.csv path."""
    run = Path(run)
    return run if run.suffix == ".csv" else run / HISTORY


def read_history(path: str | Path) -> pd.DataFrame:
    """history.csv -> its rows, every column numeric (an empty cell, an undefined AUC or a
    non-finite loss, is NaN). Missing, unreadable, without rows, without a REQUIRED column
    or with a cell that is not a number -> an InputError naming the file (and line)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: not found; a training run's folder holds {HISTORY} from "
                         "the end of its first epoch on")
    raw = read_columns(path, REQUIRED, "a history.csv has")  # strings, indexed by line
    frame = raw.apply(pd.to_numeric, errors="coerce")
    for column in raw.columns:
        bad = frame[column].isna() & (raw[column].str.strip() != "")
        if bad.any():
            line = bad.idxmax()
            raise InputError(f"{where(path, line)}, column {column!r}: "
                             f"{raw[column][line]!r} is not a number")
    return frame.reset_index(drop=True)


def curves_figure(runs: list[tuple[str, pd.DataFrame]]) -> Figure:
    """(name, history rows) per run -> one panel per PANELS entry that some run has a
    column of, two panels a row. A loss that is not finite (NaN) gets a red x on the
    epoch axis: a gap in a line would hide it."""
    panels = [title for title, (_, _, series) in PANELS.items()
              if any(column in frame for _, frame in runs for column, *_ in series)]
    rows = (len(panels) + 1) // 2
    fig = Figure(figsize=(11, 3.6 * rows), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, 2, squeeze=False).ravel()
    for ax, title in zip(axes, panels):
        ylabel, log, series = PANELS[title]
        for k, (_, frame) in enumerate(runs):
            _draw(ax, frame, series, MARKERS[k % len(MARKERS)])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if len(runs) == 1:
        fig.suptitle(runs[0][0])
    else:
        handles = [Line2D([], [], color="black", ls="none", marker=MARKERS[k % len(MARKERS)],
                          label=name) for k, (name, _) in enumerate(runs)]
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(runs), 4),
                   fontsize=9)
        fig.suptitle("training curves (marker: run)")
    return fig


def _draw(ax, frame: pd.DataFrame, series, marker: str) -> None:
    """One run's `series` on `ax`; each label in the legend once (the first run that has
    the column), the runs told apart by their markers."""
    epochs = np.asarray(frame["epoch"], np.float64)
    for column, label, color, style in series:
        if column not in frame:
            continue
        values = np.asarray(frame[column], np.float64)  # None (undefined) -> NaN: a gap
        ax.plot(epochs, values, style, color=color, marker=marker, ms=4, label=_once(ax, label))
        bad = ~np.isfinite(values)
        if column in LOSSES and bad.any():
            ax.plot(epochs[bad], np.zeros(int(bad.sum())), "x", color="red", ms=10, mew=2,
                    transform=ax.get_xaxis_transform(), clip_on=False,
                    label=_once(ax, f"{label} not finite"))


def _once(ax, label: str) -> str | None:
    """`label`, or None when a line of `ax` has it already."""
    return None if label in [line.get_label() for line in ax.get_lines()] else label


def write_curves(path: str | Path, runs: list[tuple[str, pd.DataFrame]]) -> None:
    """curves_figure(runs) as a PNG at `path`, written atomically."""
    save_png(curves_figure(runs), path)
