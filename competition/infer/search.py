"""Per-class post-processing search on out-of-fold statistics, and postprocess.json.

Post-processing of a class's probabilities, in this order: pixels above `threshold`;
8-connected components smaller than `min_component` pixels removed; the mask emptied when
its remaining area is below `min_area`. The OOF statistics hold, for every (image, class),
threshold k and min_component m, the remaining area and its intersection with the truth
(postprocess.grid_counts), so the competition Dice of any min_area follows without the
probabilities. The classes are independent (the metric is a mean over (image, class)
pairs), so each class gets its own setting.

Which setting: the best OOF Dice is fitted to the very images it is scored on, so a more
elaborate setting that beats a simpler one by less than the noise of the images is no
evidence. By default (rule "one_se") each class takes the simplest rung of a ladder whose
OOF Dice is within one standard error of the best rung: "empty" (predict nothing for the
class), "none" (the best setting without a gate), "gated" (the best gated setting). Rule
"best" takes the best OOF Dice alone (ties to "none"), as the search did before.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from competition.infer import gates
from competition.errors import InputError
from competition.files import finish_group
from competition.data.labels import CLASSES
from competition.data.metric import dice_from_counts
from competition.data.rle import SHAPE

THRESHOLDS = tuple(round(0.30 + 0.05 * i, 2) for i in range(12))  # 0.30 .. 0.85
MIN_COMPONENTS = (0, 50, 100, 150, 200, 300, 500, 800)
MIN_AREAS = (0, 100, 200, 300, 400, 500, 600, 800, 1000, 1200, 1500, 1800, 2000, 2500, 3000,
             3500, 4000, 5000, 6000)  # 1st place used 600 / 600 / 900 / 2000
PIXELS = SHAPE[0] * SHAPE[1]
RAW = (0.5, 0, 0)  # the untuned post-processing reported beside the tuned one
EMPTY_AREA = PIXELS + 1  # a min_area no mask reaches: the class is always predicted empty
RULES = ("one_se", "best")  # how a class's setting is chosen (module docstring); first: default
TIE = 1e-12  # float slack of "within one SE": one pair alone differs by exactly one SE


def pair_dice(stats: np.ndarray, truth: np.ndarray, min_area) -> np.ndarray:
    """Dice of each pair after the min-area step.

    stats (..., 2) int: area after thresholding and component removal, its intersection
    with the truth; truth (...) int truth areas (broadcast against stats[..., 0]);
    min_area scalar or array broadcast the same way."""
    area, inter = stats[..., 0], stats[..., 1]
    keep = area >= min_area
    return dice_from_counts(np.where(keep, inter, 0), np.where(keep, area, 0), truth)


def chunk_dice(stats: np.ndarray, truth: np.ndarray, min_areas, chunk: int = 1024):
    """One class: stats (N, K, M, 2), truth areas (N,) -> yields (first row, (n, K, M, A)
    Dice of each pair for every threshold, min_component and min_area), chunk by chunk, so
    memory stays bounded whatever N."""
    min_areas = np.asarray(min_areas, np.int64)
    for lo in range(0, len(stats), chunk):
        s = np.asarray(stats[lo:lo + chunk], np.int64)[..., None, :]  # (n, K, M, 1, 2)
        t = np.asarray(truth[lo:lo + chunk], np.int64)[:, None, None, None]
        yield lo, pair_dice(s, t, min_areas)


def class_table(stats: np.ndarray, truth: np.ndarray, min_areas, chunk: int = 1024) -> np.ndarray:
    """One class: stats (N, K, M, 2), truth areas (N,) -> (K, M, A) mean Dice over the N
    pairs for every threshold, min_component and min_area."""
    n, k, m, _ = stats.shape
    total = np.zeros((k, m, len(min_areas)))
    for _, dice in chunk_dice(stats, truth, min_areas, chunk):
        total += dice.sum(axis=0)
    return total / max(n, 1)


def gate_tables(stats: np.ndarray, truth: np.ndarray, min_areas, gated: dict,
                chunk: int = 1024) -> tuple[np.ndarray, dict]:
    """One class, no gate and every emptying gate in one pass over the pairs.

    gated: {name: (values (N,), gates (G,) increasing)}: gate j empties the pairs whose value
    is below gates[j]. Returns the (K, M, A) table without a gate and {name: (G, K, M, A)}.
    An emptied pair scores 1 when its truth is empty and 0 otherwise, so with the pairs
    binned by how many gates they pass (b: value >= gates[:b]), table j is the Dice summed
    over the bins b > j plus the empty truths of the bins b <= j, over N. The bins compare
    as `predict` does (gates.passes)."""
    n, k, m, _ = stats.shape
    empty = np.asarray(truth) == 0
    bins = {name: gates.passes(v, g) for name, (v, g) in gated.items()}
    sums = {name: np.zeros((len(g) + 1, k, m, len(min_areas))) for name, (_, g) in gated.items()}
    total = np.zeros((k, m, len(min_areas)))
    for lo, dice in chunk_dice(stats, truth, min_areas, chunk):
        total += dice.sum(axis=0)
        for name, b in bins.items():
            part = b[lo:lo + len(dice)]
            for j in np.unique(part):
                sums[name][j] += dice[part == j].sum(axis=0)
    tables = {}
    for name, (_, g) in gated.items():
        empties = np.bincount(bins[name][empty], minlength=len(g) + 1)
        passed = np.cumsum(sums[name][::-1], axis=0)[::-1]  # [j]: bins j.. summed
        tables[name] = np.stack([passed[j + 1] + empties[:j + 1].sum()
                                 for j in range(len(g))]) / max(n, 1)
    return total / max(n, 1), tables


def last_max(table: np.ndarray) -> tuple[int, ...]:
    """The index of the table's maximum, the last one in C order on a tie: the highest
    threshold, then the largest min_component and min_area, which predict the fewest false
    positives on unseen images."""
    flat = table.size - 1 - int(np.argmax(table.ravel()[::-1]))
    return tuple(int(i) for i in np.unravel_index(flat, table.shape))


def candidates(signals: dict, kinds=None) -> list[dict]:
    """Every gate searched, "none" first, for the signals at hand: gate and scale for each
    source in `signals` ("aux", "cls"), maxprob when signals has the maximum probabilities.
    kinds: the gate kinds allowed (None: all of gates.GATES)."""
    out = [dict(gates.NONE)]
    for kind, values in gates.GATES.items():
        if kinds is not None and kind not in kinds:
            continue
        sources = [s for s in gates.SOURCES if s in signals] if gates.NEEDS_SOURCE[kind] \
            else ([None] if "maxprob" in signals else [])
        out += [{"kind": kind, "source": s, "value": v} for s in sources for v in values]
    return out


def gated_stats(stats: np.ndarray, gate: dict, values, thresholds, k: int) -> np.ndarray:
    """One class, one threshold index k: the (N, M, 2) statistics under `gate` (values its
    (N,) signal): the scaled threshold of each image for scale (a pair whose threshold is
    above 1 emptied), emptied pairs zeroed."""
    stats = np.asarray(stats, np.int64)
    if gate["kind"] == "scale":
        idx = gates.scaled_index(thresholds, thresholds[k], gate["value"], values)
        empty = gates.scaled_empty(thresholds[k], gate["value"], values)
        return stats[np.arange(len(stats)), idx] * ~empty[:, None, None]
    out = stats[:, k]
    if gate["kind"] != "none":
        out = out * gates.keep(gate, values)[:, None, None]
    return out


def class_choices(stats: np.ndarray, truth: np.ndarray, signals: dict, thresholds,
                  areas, kinds=None) -> tuple[dict, np.ndarray]:
    """One class: stats (N, K, M, 2), truth (N,), signals {name: (N,)} -> the best setting of
    each gate kind ({label: {gate, k, m, a, dice}}, the mildest value on a tie) and the
    table without a gate."""
    options = candidates(signals, kinds)
    families = {gates.label(g): (gates.signal(g, signals), gates.GATES[g["kind"]])
                for g in options if g["kind"] in ("gate", "maxprob")}
    plain, tables = gate_tables(stats, truth, areas, families)
    best = {}
    for gate in options:
        if gate["kind"] == "none":
            table = plain
        elif gate["kind"] == "scale":
            values = gates.signal(gate, signals)
            table = np.stack([class_table(gated_stats(stats, gate, values, thresholds, k)
                                          [:, None], truth, areas)[0]
                              for k in range(len(thresholds))])
        else:
            table = tables[gates.label(gate)][gates.GATES[gate["kind"]].index(gate["value"])]
        k, m, a = last_max(table)
        name = gates.label(gate)
        if name not in best or table[k, m, a] > best[name]["dice"]:
            best[name] = {"gate": gate, "k": k, "m": m, "a": a, "dice": float(table[k, m, a])}
    return best, plain


def pair_choice(stats, truth, signals: dict, choice: dict, grid: dict) -> np.ndarray:
    """(N, 2) area and intersection of each pair under a class's choice (after the gate)."""
    gate = choice["gate"]
    s = gated_stats(stats, gate, gates.signal(gate, signals), grid["threshold"], choice["k"])
    return s[:, choice["m"]]


def predicts_empty(entry: dict) -> bool:
    """Whether a class's entry of postprocess.json predicts nothing: its min_area is above
    any mask's area (EMPTY_AREA, the "empty" rung)."""
    return entry["min_area"] > PIXELS


def standard_error(d: np.ndarray) -> float:
    """The standard error of the mean of paired per-image differences d (N,):
    std(d, ddof=1) / sqrt(N), 0 when N < 2. A single pair differing by x gives mean x/N and
    SE exactly x/N: one image alone is never more than one SE of evidence."""
    d = np.asarray(d, np.float64)
    return float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) >= 2 else 0.0


def ladder(pairs: dict[str, np.ndarray], best: str | None = None) -> tuple[str, dict]:
    """pairs {rung: (N,) Dice of each pair}, simplest first -> (the best rung, {rung:
    {"dice": mean, "se": standard error of the paired differences to the best}}). The best
    is `best` where given, else the highest mean, the simplest on a tie."""
    means = {r: float(np.mean(d)) if len(d) else 0.0 for r, d in pairs.items()}
    if best is None:
        best = max(means, key=means.get)  # the first on a tie: the simplest
    return best, {r: {"dice": means[r], "se": standard_error(pairs[best] - d)}
                  for r, d in pairs.items()}


def one_se(scores: dict, best: str) -> str:
    """The simplest rung (scores in ladder order, as `ladder` returns them) whose Dice is
    within one SE of the best's: dice >= best dice - se, with TIE's slack for float sums."""
    top = scores[best]["dice"]
    return next(r for r, s in scores.items() if s["dice"] >= top - s["se"] - TIE)


def rungs(best: dict) -> dict:
    """One class's ladder, simplest first: {"empty": None, "none": its setting, "gated": the
    best gated setting (the first on a tie), where a gate was searched}. best: the best
    setting of each gate kind (class_choices)."""
    gated = [b for name, b in best.items() if name != "none"]
    out = {"empty": None, "none": best["none"]}
    if gated:
        out["gated"] = max(gated, key=lambda b: b["dice"])
    return out


def choose(best: dict, empty: np.ndarray, rule: str) -> dict:
    """One class's choice among its rungs -> {"rung", "setting" (None for empty), "rule"
    ("best": the best rung; "one_se": a simpler rung within one SE of it), "best_rung",
    "best_dice", "se" (of the chosen rung against the best), "rungs" (ladder's scores)}.
    Rule "best": the best gated setting where it beats "none" on OOF, else "none" (never
    "empty"), the choice before the one-SE rule, the SEs measured against it. best: the
    best setting of each gate kind (class_choices, with "pair_dice"); empty: (N,) bool, the
    pairs whose truth is empty (their Dice is 1 when the class is predicted empty)."""
    ladder_of = rungs(best)
    pairs = {r: empty.astype(np.float64) if b is None else b["pair_dice"]
             for r, b in ladder_of.items()}
    if rule == "best":
        gated = ladder_of.get("gated")
        top = "gated" if gated is not None and gated["dice"] > best["none"]["dice"] else "none"
        top, scores = ladder(pairs, top)
        chosen = top
    else:
        top, scores = ladder(pairs)
        chosen = one_se(scores, top)
    return {"rung": chosen, "setting": ladder_of[chosen],
            "rule": "best" if chosen == top else "one_se", "best_rung": top,
            "best_dice": scores[top]["dice"], "se": scores[chosen]["se"], "rungs": scores}


def search(stats: np.ndarray, truth: np.ndarray, folds: np.ndarray, grid: dict,
           signals: dict | None = None, kinds=None, rule: str = RULES[0]) -> tuple[dict, dict]:
    """stats (N, 4, K, M, 2), truth areas (N, 4), fold of each image (N,), grid
    {"threshold": K, "min_component": M, "min_area": A values}, signals {"maxprob", "aux",
    "cls": (N, 4) float32} (those at hand; gates.py; only the sources given are searched),
    kinds: the gate kinds searched beside "none" (None: all), rule: of RULES (`choose`)
    -> (result, tables).

    result: per class the chosen values and gate, their OOF Dice (within a gate kind, ties go
    to the most cautious post-processing: the highest threshold, then the largest
    min_component and min_area), how they were chosen (`choose`: "rung", "rule",
    "best_rung", "best_dice", "se", "rungs"; an "empty" class is written as the "none"
    setting with min_area EMPTY_AREA, so every consumer of postprocess.json empties it
    unchanged), the best of every gate kind with the empty pairs it saves and the defect
    pairs it loses against the "none" choice, the raw Dice (threshold 0.5 alone) and the
    all-empty Dice; the means and per-fold Dice of the chosen settings; the rule. tables:
    {"1": (K, M, A) mean Dice without a gate}."""
    if rule not in RULES:
        raise InputError(f"unknown choice rule {rule!r}; valid: {', '.join(RULES)}")
    signals = signals or {}
    thresholds, components, areas = (list(grid[key]) for key in
                                     ("threshold", "min_component", "min_area"))
    raw = (thresholds.index(RAW[0]) if RAW[0] in thresholds else None,
           components.index(RAW[1]) if RAW[1] in components else None)
    classes, tables, chosen_dice = {}, {}, []
    for c, class_id in enumerate(CLASSES):
        sig = {name: values[:, c] for name, values in signals.items()}
        best, tables[str(class_id)] = class_choices(stats[:, c], truth[:, c], sig, thresholds,
                                                    areas, kinds)
        predicted = {}
        for name, b in best.items():
            s = pair_choice(stats[:, c], truth[:, c], sig, b, grid)
            predicted[name] = (s[:, 0] >= areas[b["a"]]) & (s[:, 0] > 0)
            b["pair_dice"] = pair_dice(s, truth[:, c], areas[b["a"]])
        empty = truth[:, c] == 0
        how = choose(best, empty, rule)
        choice = how.pop("setting")
        if choice is None:  # empty: written as the "none" setting that no mask survives
            choice = {**best["none"], "dice": float(empty.mean()),
                      "pair_dice": empty.astype(np.float64)}
        chosen_dice.append(choice["pair_dice"])
        raw_dice = (None if None in raw else float(pair_dice(
            np.asarray(stats[:, c, raw[0], raw[1]], np.int64), truth[:, c], 0).mean()))
        classes[str(class_id)] = {
            "threshold": thresholds[choice["k"]], "min_component": components[choice["m"]],
            "min_area": EMPTY_AREA if how["rung"] == "empty" else areas[choice["a"]],
            "gate": choice["gate"], "oof_dice": choice["dice"], **how, "raw_dice": raw_dice,
            "all_empty": float(empty.mean()), "pairs": int(len(truth)),
            "defect_pairs": int((~empty).sum()),
            "gates": {name: {
                "dice": b["dice"], "value": b["gate"]["value"],
                "threshold": thresholds[b["k"]], "min_component": components[b["m"]],
                "min_area": areas[b["a"]],
                "empty_saved": int((empty & predicted["none"] & ~predicted[name]).sum()),
                "defect_lost": int((~empty & predicted["none"] & ~predicted[name]).sum())}
                for name, b in best.items()},
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
        "signals": sorted(signals),
        "rule": rule,
    }
    return result, tables


HALVES_SEED = 0  # the split of held_out's two halves when the OOF data holds one fold


def held_out(stats: np.ndarray, truth: np.ndarray, folds: np.ndarray, grid: dict,
             signals: dict | None = None, kinds=None, rule: str = RULES[0]) -> dict:
    """An honest estimate of the tuned OOF Dice: each group of images is scored with the
    post-processing (and gates) the search chose on the other groups alone, so the search
    never sees the images it is scored on. Groups: the folds where there are two or more,
    else two halves of the images (a permutation seeded with HALVES_SEED). The gap to the
    tuned OOF Dice is what the search fitted to noise. The groups' settings are chosen by
    `rule`, as the search's are. -> {"mean_dice", "class_dice" (4),
    "groups": "folds" | "halves", "n_groups"}."""
    signals = signals or {}
    folds = np.asarray(folds)
    if len(set(folds.tolist())) >= 2:
        groups, kind = folds, "folds"
    else:
        order = np.random.default_rng(HALVES_SEED).permutation(len(truth))
        groups, kind = np.zeros(len(truth), int), "halves"
        groups[order[len(truth) // 2:]] = 1
    per_pair = np.zeros(truth.shape, np.float64)
    index = {key: list(grid[key]) for key in ("threshold", "min_component", "min_area")}
    for g in sorted(set(groups.tolist())):
        scored = groups == g
        tuned, _ = search(stats[~scored], truth[~scored], folds[~scored], grid,
                          {k: v[~scored] for k, v in signals.items()}, kinds, rule)
        for c, class_id in enumerate(CLASSES):
            v = tuned["classes"][str(class_id)]
            choice = {"gate": v["gate"], "k": index["threshold"].index(v["threshold"]),
                      "m": index["min_component"].index(v["min_component"])}
            sig = {k: values[scored, c] for k, values in signals.items()}
            s = pair_choice(stats[scored, c], truth[scored, c], sig, choice, grid)
            per_pair[scored, c] = pair_dice(s, truth[scored, c], v["min_area"])
    return {"mean_dice": float(per_pair.mean()), "class_dice": per_pair.mean(0).tolist(),
            "groups": kind, "n_groups": int(len(set(groups.tolist())))}


@dataclass(frozen=True)
class Params:
    """Post-processing per class (index 0 = class 1), as read from postprocess.json."""
    threshold: tuple[float, ...]
    min_component: tuple[int, ...]
    min_area: tuple[int, ...]
    tta: tuple[str, ...] | None = None  # the views the values were tuned with
    gate: tuple[dict, ...] = (gates.NONE,) * len(CLASSES)  # per class, gates.py
    thresholds: tuple[float, ...] = THRESHOLDS  # the grid searched: scaled thresholds snap to it

    def needs(self) -> set[str]:
        """The image-level sources ("aux", "cls") the gates read."""
        return {g["source"] for g in self.gate if g["source"]}


def read_params(path: str | Path) -> Params:
    """postprocess.json -> Params; a file of the wrong shape or with a value out of range
    is an InputError naming the key and the value. A search killed while it put its
    postprocess.json and cv_report/ in place is finished first (files.finish_group)."""
    path = Path(path)
    finish_group(path.parent)
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
                top = EMPTY_AREA if key == "min_area" else PIXELS
                ok = number and float(v).is_integer() and 0 <= v <= top
                need = f"a whole number of pixels in [0, {top}]" + (
                    f" ({EMPTY_AREA}: always empty)" if key == "min_area" else "")
            if not ok:
                raise InputError(f"{path}: classes.{class_id}.{key} is {v!r}, needs {need}")
            out.append(float(v) if key == "threshold" else int(v))
    tta = spec.get("tta")
    grid = (spec.get("grid") or {}).get("threshold", THRESHOLDS)
    ok = (isinstance(grid, list) or grid == THRESHOLDS) and all(
        isinstance(t, (int, float)) and 0 < t < 1 for t in grid) and list(grid) == sorted(grid)
    if not ok or not grid:
        raise InputError(f"{path}: grid.threshold is {grid!r}, needs increasing numbers in (0, 1)")
    gate = tuple(read_gate(path, class_id, classes[class_id].get("gate"))
                 for class_id in map(str, CLASSES))
    return Params(tuple(values["threshold"]), tuple(values["min_component"]),
                  tuple(values["min_area"]), tuple(tta) if isinstance(tta, list) else None,
                  gate, tuple(float(t) for t in grid))


def read_gate(path: Path, class_id: str, gate) -> dict:
    """A class's "gate" entry (absent in files written before gates: none), checked."""
    if gate is None:
        return dict(gates.NONE)
    where = f"{path}: classes.{class_id}.gate"
    kind = gate.get("kind") if isinstance(gate, dict) else None
    if kind != "none" and kind not in gates.GATES:
        raise InputError(f"{where}.kind is {kind!r}; valid: none, {', '.join(gates.GATES)}")
    if kind == "none":
        return dict(gates.NONE)
    source, value = gate.get("source"), gate.get("value")
    if gates.NEEDS_SOURCE[kind] and source not in gates.SOURCES:
        raise InputError(f"{where}.source is {source!r}; valid: {', '.join(gates.SOURCES)}")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not (value >= 1 if kind == "scale" else 0 <= value <= 1):
        need = "a number >= 1" if kind == "scale" else "a number in [0, 1]"
        raise InputError(f"{where}.value is {value!r}, needs {need}")
    return {"kind": kind, "source": source if gates.NEEDS_SOURCE[kind] else None,
            "value": float(value)}
