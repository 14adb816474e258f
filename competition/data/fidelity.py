"""How much the synthetic masks look like the real annotations: per-class shape statistics
of two label tables side by side (`python -m competition synth --compare REAL_CSV`).

Per mask: area, 8-connected components, RLE runs, bounding-box height and width, and
whether it touches the image's left or right edge. Per class: the 10th, 50th and 90th
percentiles of each (the share for the edge). The targets are the issue's: every median
within a factor 1.5 of the real one, the 90th percentile of the area within a factor 2.

And how the synthetic images look against real ones (`synth --compare-images DIR`): streak
direction, lighting, specks and marks off the labels, dark strip edges, per image
(`image_stats`), computed the same way on both.
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


# Image statistics: how the synthetic images look against real ones, each computed the same
# way on both (`synth --compare-images REAL_DIR`). Labelled regions and the strip's dark edge
# are left out, as boxes around each labelled component grown by PAD.
DARK_EDGE = 30  # columns, from either end, whose median grey is below this: the dark edge
PAD = 8  # pixels left out around each labelled component's box and the dark edge
DETAIL_SIGMA = 10.0  # the smooth lighting removed before the streak ratio (gaussian, pixels)
LIGHT_SIGMA = 40.0  # the lighting whose spread `light` measures (gaussian, pixels)
SPECK = 25  # a speck's pixels are this far (grey levels) from their 15x15 median
SPECK_AREA = (3, 100)  # a speck's size in pixels (8-connected); from MARK_AREA on, a mark
MARK_AREA = 10
COLOURED = 25  # max - min over the channels: a pixel of an outline drawn in colour
IMAGE_MEASURES = ("streak", "light", "dark_specks", "bright_specks", "marks", "edge")


def dark_edge(grey: np.ndarray) -> tuple[int, int]:
    """(256, 1600) uint8 -> the dark edge's width in columns at the left and at the right."""
    dark = np.median(grey, axis=0) < DARK_EDGE
    if dark.all():
        return grey.shape[1], 0
    return int(np.argmax(~dark)), int(np.argmax(~dark[::-1]))


def left_out(grey: np.ndarray, labelled: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels the statistics leave out: the box of each 8-connected
    component of `labelled` and the dark edge, grown by PAD."""
    out = np.zeros(grey.shape, bool)
    _, _, boxes, _ = cv2.connectedComponentsWithStats(labelled.astype(np.uint8), connectivity=8)
    for x, y, w, h, _ in boxes[1:]:
        out[max(y - PAD, 0):y + h + PAD, max(x - PAD, 0):x + w + PAD] = True
    left, right = dark_edge(grey)
    out[:, :left + PAD if left else 0] = True
    out[:, grey.shape[1] - right - PAD if right else grey.shape[1]:] = True
    return out


def _smooth_over(values: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (sigma in pixels) of float32 `values` over the pixels of weight 1 only
    (normalised convolution), worked out at 1/f of the size (f = sigma // 4, a blur of about
    4 pixels there) and resized back: 10x faster for sigma 40, smooth all the same."""
    f = max(1, int(sigma // 4))
    h, w = values.shape
    num, den = values * weight, weight
    if f > 1:
        num = cv2.resize(num, (w // f, h // f), interpolation=cv2.INTER_AREA)
        den = cv2.resize(den, (w // f, h // f), interpolation=cv2.INTER_AREA)
    smooth = (cv2.GaussianBlur(num, (0, 0), sigma / f)
              / np.maximum(cv2.GaussianBlur(den, (0, 0), sigma / f), 1e-3))
    return cv2.resize(smooth, (w, h), interpolation=cv2.INTER_LINEAR) if f > 1 else smooth


def streak_ratio(grey: np.ndarray, out: np.ndarray) -> float:
    """Streaks down the strip against marks along it: the image less its lighting (a
    gaussian of DETAIL_SIGMA over the kept pixels), cut into square tiles that keep
    2 x DETAIL_SIGMA off the image's border (where the lighting is guessed worst); over the
    tiles at least half kept, the variance of the column means over that of the row means
    (kept pixels only; columns and rows at least half kept). 1 for pixel noise, above 1 when
    the columns differ (vertical streaks)."""
    weight = (~out).astype(np.float32)
    values = grey.astype(np.float32)
    detail = (values - _smooth_over(values, weight, DETAIL_SIGMA)) * weight
    border = int(2 * DETAIL_SIGMA)
    size = grey.shape[0] - 2 * border
    across = along = 0.0
    for x in range(border, grey.shape[1] - border - size + 1, size):
        tile = detail[border:border + size, x:x + size]
        kept = weight[border:border + size, x:x + size]
        if kept.mean() < 0.5:
            continue
        for axis, n in ((0, kept.sum(0)), (1, kept.sum(1))):
            means = (tile.sum(axis) / np.maximum(n, 1))[n >= size / 2]
            if axis == 0:
                across += means.var() * len(means)
            else:
                along += means.var() * len(means)
    return float(across / along) if along > 0 else float("nan")


def specks(grey: np.ndarray, out: np.ndarray) -> dict:
    """Dark and bright specks per megapixel of kept pixels: 8-connected groups of SPECK_AREA
    pixels at least SPECK below / above their 15 x 15 median; marks: those of MARK_AREA
    pixels or more, dark or bright."""
    far = grey.astype(np.int16) - cv2.medianBlur(grey, 15).astype(np.int16)
    per_mp = 1e6 / max(int((~out).sum()), 1)
    counts = {}
    for name, sel in (("dark_specks", far <= -SPECK), ("bright_specks", far >= SPECK)):
        _, _, stats, _ = cv2.connectedComponentsWithStats((sel & ~out).astype(np.uint8),
                                                          connectivity=8)
        area = stats[1:, cv2.CC_STAT_AREA]
        counts[name] = ((area >= SPECK_AREA[0]) & (area <= SPECK_AREA[1])).sum() * per_mp
        counts[name.replace("specks", "marks")] = ((area >= MARK_AREA)
                                                   & (area <= SPECK_AREA[1])).sum() * per_mp
    return {"dark_specks": float(counts["dark_specks"]),
            "bright_specks": float(counts["bright_specks"]),
            "marks": float(counts["dark_marks"] + counts["bright_marks"])}


def image_stats(grey: np.ndarray, labelled: np.ndarray) -> dict:
    """One (256, 1600) uint8 grey image and its (256, 1600) bool labelled pixels (the
    masks, or the outlines drawn on an overlay image) -> streak (streak_ratio), light (the
    spread, in grey levels, of the image blurred by LIGHT_SIGMA over the kept pixels),
    dark_specks, bright_specks and marks (per megapixel, `specks`) and edge (the dark
    edge's width in columns, the wider side; 0: none)."""
    out = left_out(grey, labelled)
    weight = (~out).astype(np.float32)
    light = _smooth_over(grey.astype(np.float32), weight, LIGHT_SIGMA)[~out]
    return {"streak": streak_ratio(grey, out),
            "light": float(light.std()) if light.size else float("nan"),
            **specks(grey, out), "edge": max(dark_edge(grey))}


def outlines(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) bool: the pixels drawn in colour (an overlay's outlines)."""
    image = image.astype(np.int16)
    return (image.max(axis=2) - image.min(axis=2)) > COLOURED


def image_summary(stats: pd.DataFrame) -> dict:
    """One row of image_stats per image -> per measure its p10 / p50 / p90 (the edge's
    over the images that have one) and the share of images with a dark edge."""
    out = {"images": len(stats), "edge_share": float((stats.edge > 0).mean())}
    for m in IMAGE_MEASURES:
        values = stats[m].to_numpy(float)
        values = values[values > 0] if m == "edge" else values[~np.isnan(values)]
        out[m] = tuple(np.percentile(values, (10, 50, 90))) if len(values) else (np.nan,) * 3
    return out


IMAGE_LABELS = {
    "streak": "streak ratio (column / row variance)", "light": "lighting spread (grey levels)",
    "dark_specks": "dark specks per MP", "bright_specks": "bright specks per MP",
    "marks": f"marks of {MARK_AREA}+ px per MP", "edge": "dark edge width (images with one)",
}


def image_report(real: dict, synthetic: dict) -> str:
    """The two image summaries side by side, a Markdown table."""
    def cell(values):
        return " / ".join(f"{x:,.2f}" if abs(x) < 10 else f"{x:,.0f}" for x in values)

    lines = [f"| image statistic | real p10 / p50 / p90 ({real['images']} images) "
             f"| synthetic p10 / p50 / p90 ({synthetic['images']} images) |", "|---|---|---|"]
    for m in IMAGE_MEASURES:
        lines.append(f"| {IMAGE_LABELS[m]} | {cell(real[m])} | {cell(synthetic[m])} |")
    lines.append(f"| images with a dark edge | {real['edge_share']:.0%} "
                 f"| {synthetic['edge_share']:.0%} |")
    return "\n".join(lines)
