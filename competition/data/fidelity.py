"""How much the synthetic masks look like the real annotations: per-class shape statistics
of two label tables side by side (`python -m competition synth --compare REAL_CSV`).

Per mask: area, 8-connected components, RLE runs, bounding-box height and width, and
whether it touches the image's left or right edge. Per class: the 10th, 50th and 90th
percentiles of each (the share for the edge). The targets are the issue's: every median
within a factor 1.5 of the real one, the 90th percentile of the area within a factor 2.
"""
from __future__ import annotations

import cv2
import numpy as np
import pandas as pd

from competition.data import rle
from competition.data.labels import CLASSES

MEASURES = ("area", "components", "runs", "height", "width")
MEDIAN_FACTOR = 1.5  # every median within this factor of the real one
P90_AREA_FACTOR = 2.0  # and the 90th percentile of the area within this one


def mask_stats(mask: np.ndarray) -> dict:
    """One (H, W) mask -> area, components (8-connected), runs (one per vertical stretch of
    a column, as the RLE counts them), height, width and edge (touches column 0 or W-1)."""
    mask = (mask != 0).astype(np.uint8)
    rows, cols = np.nonzero(mask)
    if not len(rows):
        raise ValueError("an empty mask has no shape")
    n, _ = cv2.connectedComponents(mask, connectivity=8)
    flat = mask.T.ravel()  # column-major, as the RLE reads it
    runs = int(flat[0]) + int(np.count_nonzero(np.diff(flat.astype(np.int8)) == 1))
    return {"area": len(rows), "components": n - 1, "runs": runs,
            "height": int(rows.max() - rows.min() + 1), "width": int(cols.max() - cols.min() + 1),
            "edge": bool(mask[:, 0].any() or mask[:, -1].any())}


def table_stats(labels: pd.DataFrame) -> pd.DataFrame:
    """A defect table (ImageId, ClassId, EncodedPixels) -> one row of mask_stats per mask."""
    rows = [{"class": int(c), **mask_stats(rle.decode(e))}
            for c, e in zip(labels.ClassId, labels.EncodedPixels)]
    return pd.DataFrame(rows, columns=["class", *MEASURES, "edge"])


def summary(stats: pd.DataFrame) -> dict:
    """Per class: masks, p10 / p50 / p90 of every measure, the share touching an edge."""
    out = {}
    for c in CLASSES:
        group = stats[stats["class"] == c]
        entry = {"masks": len(group), "edge": float(group.edge.mean()) if len(group) else np.nan}
        for m in MEASURES:
            values = group[m].to_numpy(float)
            entry[m] = (tuple(np.percentile(values, (10, 50, 90))) if len(values)
                        else (np.nan,) * 3)
        out[c] = entry
    return out


def misses(real: dict, synthetic: dict) -> list[str]:
    """The targets a synthetic summary misses, one line each (empty: all met)."""
    out = []
    for c in CLASSES:
        for m in MEASURES:
            r, s = real[c][m][1], synthetic[c][m][1]
            if not (r / MEDIAN_FACTOR <= s <= r * MEDIAN_FACTOR):
                out.append(f"class {c} {m} median {s:g} is not within {MEDIAN_FACTOR}x of {r:g}")
        r, s = real[c]["area"][2], synthetic[c]["area"][2]
        if not (r / P90_AREA_FACTOR <= s <= r * P90_AREA_FACTOR):
            out.append(f"class {c} area p90 {s:g} is not within {P90_AREA_FACTOR}x of {r:g}")
    return out


def report(real: dict, synthetic: dict) -> str:
    """The side-by-side table, a Markdown table (real / synthetic in each cell)."""
    def cell(m, c):
        r, s = real[c][m], synthetic[c][m]
        return " / ".join(f"{x:,.0f}" for x in r) + " | " + " / ".join(f"{x:,.0f}" for x in s)

    lines = ["| class | masks real / synthetic | measure | real p10 / p50 / p90 "
             "| synthetic p10 / p50 / p90 | median ratio |",
             "|---|---|---|---|---|---|"]
    for c in CLASSES:
        for i, m in enumerate(MEASURES):
            head = (f"| {c} | {real[c]['masks']:,} / {synthetic[c]['masks']:,} " if i == 0
                    else "| | ")
            ratio = synthetic[c][m][1] / real[c][m][1]
            lines.append(f"{head}| {m} | {cell(m, c)} | {ratio:.2f} |")
        lines.append(f"| | | touches left/right edge | {real[c]['edge']:.1%} "
                     f"| {synthetic[c]['edge']:.1%} | |")
    return "\n".join(lines)
