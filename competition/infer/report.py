"""The out-of-fold CV report of the post-processing search: cv_report.md and its plots.

`write_report` turns the search's result (the content of postprocess.json), its Dice tables
and a few OOF examples into a Markdown page with four PNGs beside it:
- dice_vs_threshold.png, dice_vs_min_component.png, dice_vs_min_area.png: OOF Dice of each
  class along one grid axis, the two other parameters held at the chosen values;
- oof_overlays.png: OOF images with truth outlines and predicted masks per class.
Figures are made with matplotlib's object API (no pyplot, so no global backend or figure
state is touched) and rendered by Agg; every file is written atomically.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from competition.infer import gates
from competition.infer.search import predicts_empty
from competition.data.figures import COLORS, DPI, format_dice, overlay_figure, save_png
from competition.files import write_text

REPORT = "cv_report.md"
OVERLAYS = "oof_overlays.png"
# grid axis -> (index in a (K, M, A) table, file name, axis label)
AXES = {
    "threshold": (0, "dice_vs_threshold.png", "probability threshold"),
    "min_component": (1, "dice_vs_min_component.png", "min component (pixels)"),
    "min_area": (2, "dice_vs_min_area.png", "min area (pixels)"),
}
NAMES = {"threshold": "threshold", "min_component": "min component", "min_area": "min area"}


def write_report(folder, result: dict, tables: dict[str, np.ndarray],
                 examples: list[dict]) -> list[Path]:
    """Write cv_report.md and its PNGs into `folder` (made if missing); return the paths.

    result: the content of postprocess.json. tables: class "1".."4" -> (K, M, A) float64
    mean OOF Dice over (threshold, min_component, min_area) grid indices. examples: dicts
    with image_id, fold, image (H, W, 3) uint8, truth and pred (4, H, W) bool; when empty,
    no overlay figure is written (and a stale one from an earlier run is removed). The
    report is written last, so it never links to a plot that failed.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / REPORT]
    for axis, (_, name, _) in AXES.items():
        save_png(dice_figure(result, tables, axis), folder / name)
        paths.append(folder / name)
    if examples:
        save_png(overlay_figure(examples), folder / OVERLAYS)
        paths.append(folder / OVERLAYS)
    write_text(folder / REPORT, report_text(result, have_overlays=bool(examples)))
    if not examples:
        (folder / OVERLAYS).unlink(missing_ok=True)
    return paths


def format_table(headers, rows) -> str:
    """A Markdown table: headers (n,) and rows of n cells each, every cell shown with str()."""
    lines = [_table_row(headers), _table_row(["---"] * len(headers))]
    lines += [_table_row(row) for row in rows]
    return "\n".join(lines) + "\n"


def _table_row(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def format_value(value) -> str:
    """A grid value: 150 not 150.0, 0.35 not 0.35000000000000003."""
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:.6g}"


def grid_index(values, value) -> int:
    """Index of `value` in a grid list (compared with float tolerance)."""
    hits = np.flatnonzero(np.isclose(np.asarray(values, float), float(value)))
    if len(hits) == 0:
        raise ValueError(f"{value} is not in the grid {list(values)}")
    return int(hits[0])


def plotted(result: dict, c: str) -> dict:
    """The setting of class c the plots go through: the chosen one; for a class chosen empty
    (no setting of the grid), the best without a gate, the "none" rung it was preferred to."""
    chosen = result["classes"][c]
    return chosen["gates"]["none"] if predicts_empty(chosen) else chosen


def chosen_index(result: dict, c: str) -> tuple[int, int, int]:
    """(k, m, a): grid indices of class c's plotted threshold, min_component, min_area."""
    chosen = plotted(result, c)
    return tuple(grid_index(result["grid"][axis], chosen[axis]) for axis in AXES)


def _classes(result: dict) -> list[str]:
    return sorted(result["classes"], key=int)


def _check_table(result: dict, tables: dict, c: str) -> np.ndarray:
    table = np.asarray(tables[c], np.float64)
    shape = tuple(len(result["grid"][axis]) for axis in AXES)
    if table.shape != shape:
        raise ValueError(f"class {c}: Dice table has shape {table.shape}, the grid {shape}")
    return table


def dice_curve(table: np.ndarray, index: tuple[int, int, int], axis: int) -> np.ndarray:
    """The line of a (K, M, A) table through `index` along `axis`: (K,), (M,) or (A,)."""
    where = list(index)
    where[axis] = slice(None)
    return table[tuple(where)]


def dice_figure(result: dict, tables: dict[str, np.ndarray], axis: str) -> Figure:
    """One subplot per class: OOF Dice against grid `axis`, the other two held at the chosen
    values; the chosen point marked, the class's all-empty Dice dashed (for a class chosen
    empty, the point of the best setting without a gate, and the dashed line its choice)."""
    position, _, label = AXES[axis]
    classes = _classes(result)
    rows = (len(classes) + 1) // 2
    fig = Figure(figsize=(11, 3.6 * rows), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, 2, squeeze=False).ravel()
    x = np.asarray(result["grid"][axis], float)
    for ax, c in zip(axes, classes):
        index = chosen_index(result, c)
        y = dice_curve(_check_table(result, tables, c), index, position)
        chosen, empty = plotted(result, c), predicts_empty(result["classes"][c])
        ax.plot(x, y, "-", color=COLORS[(int(c) - 1) % len(COLORS)], marker=".")
        ax.plot(x[index[position]], y[index[position]], "o", ms=9, mfc="none", mec="black",
                label=f"{'no gate' if empty else 'chosen'} {format_value(chosen[axis])}: "
                      f"{format_dice(y[index[position]])}")
        all_empty = result["classes"][c]["all_empty"]
        ax.axhline(all_empty, ls="--", color="grey",
                   label=f"all empty{' (chosen)' if empty else ''}: {format_dice(all_empty)}")
        ax.set_title(f"class {c} ({_held_fixed(chosen, axis)})", fontsize=10)
        ax.set_xlabel(label)
        ax.set_ylabel("OOF Dice")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    for ax in axes[len(classes):]:
        ax.set_visible(False)
    fig.suptitle(f"OOF Dice against {label}")
    return fig


def _held_fixed(chosen: dict, axis: str) -> str:
    return ", ".join(f"{NAMES[other]} {format_value(chosen[other])}"
                     for other in AXES if other != axis)


def report_text(result: dict, have_overlays: bool) -> str:
    """The Markdown of cv_report.md."""
    parts = [
        "# Severstal: Steel Defect Detection: out-of-fold CV report\n",
        _summary(result),
        "## Post-processing per class\n",
        _class_table(result),
        _rule_text(result),
        *(["## Ensemble weights\n", _weights_table(result["weights"])]
          if result.get("weights") else []),
        "## Image-level gates\n",
        _gate_table(result),
        "## Folds\n",
        _fold_table(result),
        "## Grid searched\n",
        _grid_text(result),
        "## Plots\n",
        _plots_text(have_overlays),
        "## How to read it\n",
        _reading_notes(result),
    ]
    return "\n".join(parts)


def _summary(result: dict) -> str:
    classes = result["classes"]
    pairs = sum(int(classes[c]["pairs"]) for c in classes)
    defects = sum(int(classes[c]["defect_pairs"]) for c in classes)
    gain = result["oof_mean_dice"] - result["all_empty_baseline"]
    tta = ", ".join(result.get("tta") or ["none"])
    checkpoints = ", ".join(f"`{p}`" for p in _checkpoints(result)) or "-"
    data = f" Data: `{result['data']}`." if result.get("data") else ""
    return (
        f"Out-of-fold predictions on {result['images']} images ({pairs} (image, class) pairs, "
        f"{defects} of them with a defect) score a mean Dice of "
        f"**{format_dice(result['oof_mean_dice'])}** with the tuned post-processing, "
        f"against {format_dice(result.get('raw_mean_dice'))} for the raw threshold 0.5 with "
        f"no filtering and {format_dice(result['all_empty_baseline'])} for predicting every "
        f"mask empty ({gain:+.4f} over all-empty). TTA views: {tta}. "
        f"Checkpoints: {checkpoints}.{data}\n" + _held_out(result)
    )


def _held_out(result: dict) -> str:
    """The honest estimate (search.held_out), where the result has one."""
    h = result.get("held_out")
    if not h:
        return ""
    how = ("each fold scored with the post-processing tuned on the other folds" if
           h["groups"] == "folds" else "each half of the images scored with the "
           "post-processing tuned on the other half")
    return (f"\nHeld out ({how}): **{format_dice(h['mean_dice'])}**, "
            f"the tuned figure {result['oof_mean_dice'] - h['mean_dice']:+.4f} against it: what "
            "the search fits to the images it is tuned on, beyond what carries over. Per "
            "class: "
            + ", ".join(format_dice(d) for d in h["class_dice"]) + ".\n")


def _checkpoints(result: dict) -> list[str]:
    """Every model the OOF statistics came from (a "weight" where not 1), fold by fold."""
    out = []
    for fold in (result.get("ensemble") or {}).values():
        for role in ("segmenters", "classifiers"):
            out += [m["checkpoint"] + (f" ×{m['weight']:g}" if m["weight"] != 1 else "")
                    for m in fold.get(role) or []]
    return out or list(result.get("checkpoints") or [])


def _weights_table(w: dict) -> str:
    """The segmenters' weightings searched on OOF (oof --weights search), simplest first:
    each one's OOF Dice with its own tuned post-processing, and its paired standard error
    against the best; the chosen one marked."""
    best = w["candidates"][w["best"]]["oof_dice"]
    rows = [[j, ", ".join(format_value(round(x, 4)) for x in c["shares"])
             + (" (equal)" if j == 0 else ""),
             format_dice(c["oof_dice"]), f"{c['oof_dice'] - best:+.4f}",
             f"{c['se']:.4f}", " ".join(["best"] * (j == w["best"]) + ["✓"] * (j == w["chosen"]))]
            for j, c in enumerate(w["candidates"])]
    rule = ("the best" if w["rule"] == "best" else "the simplest within one standard error "
            "of the best (rule one_se)")
    return (f"Weights of {', '.join(f'`{m}`' for m in w['models'])}, as shares, searched on "
            "the OOF data, simplest first (equal, then by distance from equal); each row "
            "tuned with its own post-processing. SE: the standard error of the difference to "
            f"the best over images. Chosen (✓): {rule}.\n\n"
            + format_table(["#", "weights", "OOF Dice", "vs best", "SE", ""], rows))


GATE_TEXT = {"gate": "p_cls < g empties", "scale": "t = t0·c − t0·(c−1)·p_cls",
             "maxprob": "max probability < g empties"}


def _gate_table(result: dict) -> str:
    """Per class, each gate kind at its best setting beside "none": its OOF Dice, and the
    empty pairs it saves and the defect pairs it loses against the "none" choice."""
    rows = []
    for c in _classes(result):
        s = result["classes"][c]
        for name, g in (s.get("gates") or {}).items():
            kind = name.split()[0]
            mark = name == gates.label(s.get("gate") or gates.NONE) and not predicts_empty(s)
            rows.append([c, name + (" ✓" if mark else ""),
                         "" if g["value"] is None else format_value(g["value"]),
                         format_value(g["threshold"]), format_value(g["min_component"]),
                         format_value(g["min_area"]), format_dice(g["dice"]),
                         f"{g['dice'] - s['gates']['none']['dice']:+.4f}",
                         g["empty_saved"], g["defect_lost"], GATE_TEXT.get(kind, "")])
    if not rows:
        return "No image-level signal was recorded with these OOF statistics.\n"
    signals = ", ".join(result.get("signals") or []) or "none"
    return (f"Signals recorded: {signals} (aux: the segmenters' image-level heads, cls: the "
            "classifiers, maxprob: each mask's largest probability). ✓ marks the kind "
            "chosen (none where the class is chosen empty; the rule that chose it is under "
            "\"Post-processing per class\"). Saved: empty pairs "
            "the \"none\" choice predicts non-empty and this one empties; lost: defect "
            "pairs it empties that \"none\" predicts.\n\n"
            + format_table(["class", "gate", "value", "threshold", "min component",
                            "min area", "OOF Dice", "vs none", "empty saved",
                            "defect lost", "rule"], rows))


RULE_NAMES = {"best": "best", "one_se": "one-SE"}  # a class's "rule" as the table shows it


def _class_table(result: dict) -> str:
    """The chosen setting of each class; a class chosen empty shows "empty" for its min
    area (postprocess.json: search.EMPTY_AREA) and no threshold or component size."""
    headers = ["class", "threshold", "min component", "min area", "gate", "OOF Dice",
               "raw Dice", "all-empty Dice", "pairs", "defect pairs", "chosen by"]
    classes = result["classes"]
    rows = []
    for c in _classes(result):
        s = classes[c]
        empty = predicts_empty(s)
        rows.append([c, "-" if empty else format_value(s["threshold"]),
                     "-" if empty else format_value(s["min_component"]),
                     "empty" if empty else format_value(s["min_area"]),
                     gates.describe(s.get("gate") or gates.NONE), format_dice(s["oof_dice"]),
                     format_dice(s.get("raw_dice")), format_dice(s["all_empty"]), s["pairs"],
                     s["defect_pairs"], RULE_NAMES[s.get("rule", "best")]])
    rows.append(["mean", "", "", "", "", format_dice(result["oof_mean_dice"]),
                 format_dice(result.get("raw_mean_dice")),
                 format_dice(result["all_empty_baseline"]),
                 sum(int(s["pairs"]) for s in classes.values()),
                 sum(int(s["defect_pairs"]) for s in classes.values()), ""])
    return format_table(headers, rows)


def rung_label(s: dict, rung: str) -> str:
    """A rung of a class's ladder in words: "empty", "no gate", or the best gated setting
    ("gate cls 0.2")."""
    if rung != "gated":
        return {"empty": "empty", "none": "no gate"}[rung]
    name, g = max(((n, g) for n, g in s["gates"].items() if n != "none"),
                  key=lambda item: item[1]["dice"])  # the first on a tie, as the search
    return name if g["value"] is None else f"{name} {g['value']:g}"


def rule_line(c: str, s: dict, rule: str | None) -> str:
    """Why class c has its setting, in one line: the rung chosen and, under the one-SE rule,
    how far it is from the best rung (or how far the simpler rungs were). rule: the
    search's (postprocess.json's "rule"; None for a file written before the rule)."""
    if "rung" not in s:
        return f"class {c}: {gates.describe(s.get('gate') or gates.NONE)} (the best OOF Dice)"
    chosen = rung_label(s, s["rung"])
    if s["rule"] == "one_se":
        return (f"class {c}: {chosen} (one-SE rule: {s['oof_dice']:.4f} within {s['se']:.4f} "
                f"of the best {s['best_dice']:.4f}, {rung_label(s, s['best_rung'])})")
    text = f"class {c}: {chosen} (the best OOF Dice, {s['oof_dice']:.4f}"
    simpler = list(s["rungs"])[:list(s["rungs"]).index(s["rung"])]
    if rule == "one_se" and simpler:
        text += "; simpler rungs beyond one SE: " + ", ".join(
            f"{rung_label(s, r)} {s['rungs'][r]['dice']:.4f} (SE {s['rungs'][r]['se']:.4f})"
            for r in simpler)
    return text + ")"


def _rule_text(result: dict) -> str:
    """How each class's setting was chosen (search.choose), one line a class."""
    rule = result.get("rule")
    if rule == "one_se":
        how = ("Chosen by the one-SE rule (`--choose one_se`): per class the simplest of "
               "empty (predict nothing), no gate (its best setting) and the best gated "
               "setting whose OOF Dice is within one standard error of the best of the three "
               "(the SE of the per-image Dice differences, paired, over the images).")
    else:
        how = "Chosen by the best OOF Dice" + (" (`--choose best`)." if rule else ".")
    return how + "\n\n" + "".join(f"- {rule_line(c, result['classes'][c], rule)}\n"
                                  for c in _classes(result))


def _fold_table(result: dict) -> str:
    folds = result.get("folds") or {}
    if not folds:
        return "No per-fold scores were recorded.\n"
    rows = [[f, folds[f]["images"], format_dice(folds[f]["mean_dice"])]
            for f in sorted(folds, key=int)]
    return ("Mean Dice of each fold's OOF images with the chosen post-processing.\n\n"
            + format_table(["fold", "images", "mean Dice"], rows))


def _grid_text(result: dict) -> str:
    grid = result["grid"]
    lines = [f"- {NAMES[name]} ({len(grid[name])} values): "
             + ", ".join(format_value(v) for v in grid[name]) for name in AXES]
    total = int(np.prod([len(grid[name]) for name in AXES]))
    lines.append(f"- {total} combinations per class, chosen for each class on its own.")
    return "\n".join(lines) + "\n"


def _plots_text(have_overlays: bool) -> str:
    lines = []
    for axis, (_, name, label) in AXES.items():
        lines.append(f"OOF Dice against the {label}, the other two parameters at each class's "
                     f"chosen values (circle: chosen; dashed: all empty; for a class chosen "
                     f"empty, the circle is its best setting without a gate).\n\n"
                     f"![OOF Dice against {label}]({name})\n")
    if have_overlays:
        lines.append("OOF examples: truth outlined, prediction filled, one colour per class "
                     "(1 red, 2 green, 3 blue, 4 orange).\n\n"
                     f"![OOF examples]({OVERLAYS})\n")
    else:
        lines.append("No OOF examples were given, so no overlay figure was written.\n")
    return "\n".join(lines)


def _reading_notes(result: dict) -> str:
    connectivity = result.get("connectivity", 8)
    return (
        "- Post-processing, per class and in this order: keep the pixels whose probability "
        "is above the threshold; remove the connected components smaller than min component "
        f"pixels ({connectivity}-connected); then empty the whole mask when its remaining "
        "area is below min area pixels.\n"
        "- The metric is the mean Dice over every (image, class) pair, and an empty "
        "prediction on an empty pair scores 1 (Dice 1 on empty pairs): false positives on the "
        "~86% empty pairs decide the score, so a class's Dice is compared with its all-empty "
        "Dice, the score of never predicting it.\n"
        "- Raw Dice is threshold 0.5 with no component or area filtering ('-' when 0.5 or 0 "
        "is not in the grid). The values are chosen on the same OOF predictions they are "
        "scored on, so the OOF Dice is slightly optimistic.\n"
    )
