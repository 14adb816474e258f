"""The competition metric: mean Dice over every (ImageId, ClassId) pair.

Dice(X, Y) = 2|X ∩ Y| / (|X| + |Y|), and 1 when X and Y are both empty, so a single
false-positive pixel on an empty pair scores 0 for that pair.
"""
from __future__ import annotations

import numba
import numpy as np
import pandas as pd

from competition.data import rle
from competition.data.labels import CLASSES


def dice_from_counts(intersection, pred_area, true_area):
    """Elementwise Dice from pixel counts (arrays or scalars); 1 where both areas are 0."""
    intersection = np.asarray(intersection, np.float64)
    total = np.asarray(pred_area, np.float64) + np.asarray(true_area, np.float64)
    return np.where(total == 0, 1.0, 2.0 * intersection / np.maximum(total, 1.0))


def dice(pred: np.ndarray, truth: np.ndarray):
    """Dice of binary masks over their last two axes: (..., H, W) -> (...) float64."""
    pred, truth = np.asarray(pred) != 0, np.asarray(truth) != 0
    return dice_from_counts((pred & truth).sum(axis=(-2, -1)), pred.sum(axis=(-2, -1)),
                            truth.sum(axis=(-2, -1)))


@numba.njit(cache=True, nogil=True)
def _intersection(a_starts, a_lengths, b_starts, b_lengths) -> int:
    """Pixels two sorted, non-overlapping run lists share (a merge, O(runs))."""
    i = j = 0
    total = 0
    while i < a_starts.shape[0] and j < b_starts.shape[0]:
        a_end = a_starts[i] + a_lengths[i]
        b_end = b_starts[j] + b_lengths[j]
        overlap = min(a_end, b_end) - max(a_starts[i], b_starts[j])
        if overlap > 0:
            total += overlap
        if a_end < b_end:
            i += 1
        else:
            j += 1
    return total


def rle_counts(pred: str, truth: str, shape=rle.SHAPE) -> tuple[int, int, int]:
    """(|X ∩ Y|, |X|, |Y|) of two RLE strings, computed on the runs without decoding."""
    ps, pl = rle.runs(pred, shape)
    ts, tl = rle.runs(truth, shape)
    return int(_intersection(ps, pl, ts, tl)), int(pl.sum()), int(tl.sum())


def dice_rle(pred: str, truth: str, shape=rle.SHAPE) -> float:
    """Dice of two RLE strings ('' is empty)."""
    return float(dice_from_counts(*rle_counts(pred, truth, shape)))


def score_pairs(pred: list[str], truth: list[str], shape=rle.SHAPE) -> np.ndarray:
    """Dice of each (pred, truth) RLE pair -> float64 array."""
    counts = np.array([rle_counts(p, t, shape) for p, t in zip(pred, truth)], np.int64)
    if len(counts) == 0:
        return np.zeros(0)
    return dice_from_counts(counts[:, 0], counts[:, 1], counts[:, 2])


def summarize(class_ids, dices) -> dict:
    """Per-pair Dice -> {"mean_dice", "per_class": {"1": ..}, "pairs"} (the metric's mean is
    over all pairs; with four pairs per image it equals the mean of the class means)."""
    frame = pd.DataFrame({"ClassId": np.asarray(class_ids, int), "dice": np.asarray(dices)})
    per_class = frame.groupby("ClassId").dice.mean()
    return {
        "mean_dice": float(frame.dice.mean()) if len(frame) else float("nan"),
        "per_class": {str(c): float(per_class.get(c, float("nan"))) for c in CLASSES},
        "pairs": int(len(frame)),
    }


def score_tables(submission: pd.DataFrame, truth: pd.DataFrame, shape=rle.SHAPE) -> dict:
    """Score a submission table against a truth table (both ImageId, ClassId, EncodedPixels).

    Scored over every class of every image the submission lists; a pair missing from either
    table is empty. Also reports the all-empty baseline on the same pairs.
    """
    images = list(dict.fromkeys(submission.ImageId))
    pairs = pd.MultiIndex.from_product([images, CLASSES], names=["ImageId", "ClassId"])

    def aligned(table):
        return (table.set_index(["ImageId", "ClassId"]).EncodedPixels
                .reindex(pairs, fill_value="").tolist())

    truth_rles = aligned(truth)
    class_ids = pairs.get_level_values("ClassId")
    result = summarize(class_ids, score_pairs(aligned(submission), truth_rles, shape))
    empty = [t == "" for t in truth_rles]
    result["all_empty_baseline"] = summarize(class_ids, np.asarray(empty, float))["mean_dice"]
    return result
