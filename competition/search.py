"""Per-class post-processing search on out-of-fold statistics, and postprocess.json.

Post-processing of a class's probabilities, in this order: pixels above `threshold`;
8-connected components smaller than `min_component` pixels removed; the mask emptied when
its remaining area is below `min_area`. The OOF statistics hold, for every (image, class),
threshold k and min_component m, the remaining area and its intersection with the truth
(postprocess.grid_counts), so the competition Dice of any min_area follows without the
probabilities. The classes are independent (the metric is a mean over (image, class)
pairs), so each class gets its own best setting.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from competition.errors import InputError
from competition.labels import CLASSES
from competition.metric import dice_from_counts
from competition.rle import SHAPE

THRESHOLDS = tuple(round(0.30 + 0.05 * i, 2) for i in range(12))  # 0.30 .. 0.85
MIN_COMPONENTS = (0, 50, 100, 150, 200, 300, 500, 800)
MIN_AREAS = (0, 100, 200, 300, 400, 500, 600, 800, 1000, 1200, 1500, 1800, 2000, 2500, 3000,
             3500, 4000, 5000, 6000)  # 1st place used 600 / 600 / 900 / 2000
PIXELS = SHAPE[0] * SHAPE[1]
RAW = (0.5, 0, 0)  # the untuned post-processing reported beside the tuned one


def pair_dice(stats: np.ndarray, truth: np.ndarray, min_area) -> np.ndarray:
    """Dice of each pair after the min-area step.

    stats (..., 2) int: area after thresholding and component removal, its intersection
    with the truth; truth (...) int truth areas (broadcast against stats[..., 0]);
    min_area scalar or array broadcast the same way."""
    area, inter = stats[..., 0], stats[..., 1]
    keep = area >= min_area
    return dice_from_counts(np.where(keep, inter, 0), np.where(keep, area, 0), truth)


def class_table(stats: np.ndarray, truth: np.ndarray, min_areas, chunk: int = 1024) -> np.ndarray:
    """One class: stats (N, K, M, 2), truth areas (N,) -> (K, M, A) mean Dice over the N
    pairs for every threshold, min_component and min_area. Summed over chunks of images,
    so memory stays bounded whatever N."""
    min_areas = np.asarray(min_areas, np.int64)
    n, k, m, _ = stats.shape
    total = np.zeros((k, m, len(min_areas)))
    for lo in range(0, n, chunk):
        s = np.asarray(stats[lo:lo + chunk], np.int64)[..., None, :]  # (n, K, M, 1, 2)
        t = np.asarray(truth[lo:lo + chunk], np.int64)[:, None, None, None]
        total += pair_dice(s, t, min_areas).sum(axis=0)
    return total / max(n, 1)


def search(stats: np.ndarray, truth: np.ndarray, folds: np.ndarray, grid: dict) -> tuple[dict, dict]:
    """stats (N, 4, K, M, 2), truth areas (N, 4), fold of each image (N,), grid
    {"threshold": K, "min_component": M, "min_area": A values} -> (result, tables).

    result: per class the chosen values, their OOF Dice (ties go to the most cautious
    setting: the highest threshold, then the largest min_component and min_area, which
    predict the fewest false positives on unseen images; a class the model never finds
    ties everywhere), the raw Dice (threshold 0.5 alone) and the all-empty Dice; the means; per-fold Dice. tables: {"1": (K, M, A) mean Dice}."""
    thresholds, components, areas = (list(grid[key]) for key in
                                      ("threshold", "min_component", "min_area"))
    raw = (thresholds.index(RAW[0]) if RAW[0] in thresholds else None,
           components.index(RAW[1]) if RAW[1] in components else None)
    classes, tables, chosen_dice = {}, {}, []
    for c, class_id in enumerate(CLASSES):
        table = class_table(stats[:, c], truth[:, c], areas)
        last_max = table.size - 1 - int(np.argmax(table.ravel()[::-1]))
        k, m, a = np.unravel_index(last_max, table.shape)
        tables[str(class_id)] = table
        dice = pair_dice(np.asarray(stats[:, c, k, m], np.int64), truth[:, c], areas[a])
        chosen_dice.append(dice)
        raw_dice = (None if None in raw else float(pair_dice(
            np.asarray(stats[:, c, raw[0], raw[1]], np.int64), truth[:, c], 0).mean()))
        classes[str(class_id)] = {
            "threshold": thresholds[k], "min_component": components[m], "min_area": areas[a],
            "oof_dice": float(table[k, m, a]), "raw_dice": raw_dice,
            "all_empty": float((truth[:, c] == 0).mean()), "pairs": int(len(truth)),
            "defect_pairs": int((truth[:, c] > 0).sum()),
        }
    per_pair = np.stack(chosen_dice, axis=1)  # (N, 4)
    raws = [v["raw_dice"] for v in classes.values()]
    result = {
        "classes": classes,
        "oof_mean_dice": float(per_pair.mean()),
        "raw_mean_dice": None if None in raws else float(np.mean(raws)),
        "all_empty_baseline": float((truth == 0).mean()),
        "images": int(len(truth)),
        "folds": {str(f): {"images": int((folds == f).sum()),
                           "mean_dice": float(per_pair[folds == f].mean())}
                  for f in sorted(set(folds.tolist()))},
        "grid": {"threshold": thresholds, "min_component": components, "min_area": areas},
    }
    return result, tables


@dataclass(frozen=True)
class Params:
    """Post-processing per class (index 0 = class 1), as read from postprocess.json."""
    threshold: tuple[float, ...]
    min_component: tuple[int, ...]
    min_area: tuple[int, ...]
    tta: tuple[str, ...] | None = None  # the views the values were tuned with


def read_params(path: str | Path) -> Params:
    """postprocess.json -> Params; a file of the wrong shape or with a value out of range
    is an InputError naming the key and the value."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: post-processing file not found; make it with `bash run.sh "
                         "oof` (or `python -m competition oof`), or pass --postprocess")
    try:
        spec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    classes = spec.get("classes") if isinstance(spec, dict) else None
    if not isinstance(classes, dict) or sorted(classes) != [str(c) for c in CLASSES]:
        found = sorted(classes) if isinstance(classes, dict) else type(classes).__name__
        raise InputError(f"{path}: needs \"classes\" with keys 1, 2, 3, 4, found {found}")
    values = {"threshold": [], "min_component": [], "min_area": []}
    for class_id in map(str, CLASSES):
        entry = classes[class_id]
        for key, out in values.items():
            v = entry.get(key) if isinstance(entry, dict) else None
            number = isinstance(v, (int, float)) and not isinstance(v, bool)
            if key == "threshold":
                ok = number and 0.0 < v < 1.0
                need = "a number in (0, 1)"
            else:
                ok = number and float(v).is_integer() and 0 <= v <= PIXELS
                need = f"a whole number of pixels in [0, {PIXELS}]"
            if not ok:
                raise InputError(f"{path}: classes.{class_id}.{key} is {v!r}, needs {need}")
            out.append(float(v) if key == "threshold" else int(v))
    tta = spec.get("tta")
    return Params(tuple(values["threshold"]), tuple(values["min_component"]),
                  tuple(values["min_area"]), tuple(tta) if isinstance(tta, list) else None)
