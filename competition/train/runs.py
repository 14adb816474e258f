"""The runs table: one row per training run below some folders, read from the files on disk.

A run is a folder with config.json and history.csv (what `train` writes for a segmenter or a
classifier; its task is in config.json). Its row:

    run         its path below the folder searched
    task        segment | classify
    model       arch/encoder (a classifier: its encoder)
    preset      the preset the config started from (its name field)
    epochs      epochs done (history.csv) / planned (config.json)
    best_epoch  the epoch best.pt was kept at: the first of the best validation score
    metric      dice (segmenters: the competition's mean Dice, val_dice) | auc (classifiers:
                the mean ROC AUC, val_auc; an undefined one counts 0, as train does)
    best        that score at best_epoch, and c1..c4 the class scores there (dice_k, auc_k)
    oof_cv      the OOF CV of the run (below), oof_in the folder of the postprocess.json
    options     the config's fields that differ from its preset's values, key=value (not
                name, nor the RUNTIME_FIELDS: they change no result); a name that is no
                preset (today) is compared with TrainConfig's defaults

OOF CV: `oof` records in OUT/postprocess.json its oof_mean_dice and, per fold, the
checkpoints it averaged ("ensemble"). A run's oof_cv is the best oof_mean_dice among the
postprocess.json files below the submission folders in which the run's checkpoint (best.pt,
or averaged.pt) is its fold's only segmenter; classifiers may be there too (they only gate
its masks). A 5-fold oof thus gives each of its five runs the CV of the five. The paths in
postprocess.json are those oof was given, relative to the folder it ran in (the repository
root): run `runs` from there as well.

Only config.json, history.csv and postprocess.json are read, never a model. A file that
cannot be read is an InputError naming it: a table with a silently missing run would mislead.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from competition.model.config import PRESETS, TrainConfig, build_config, differing, from_saved, to_dict
from competition.errors import InputError
from competition.data import provenance
from competition.data.labels import CLASSES

COLUMNS = ("run", "task", "model", "preset", "epochs", "best_epoch", "metric", "best",
           *(f"c{c}" for c in CLASSES), "oof_cv", "oof_in", "options")
DESCENDING = {"best", *(f"c{c}" for c in CLASSES), "oof_cv"}  # scores: the best first
METRICS = {"segment": ("dice", "val_dice", "dice_{}"),  # name, history column, per class
           "classify": ("auc", "val_auc", "auc_{}")}


def find_runs(folder: Path) -> list[Path]:
    """The run folders at or below `folder`, sorted."""
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    return sorted(p.parent for p in folder.rglob("config.json")
                  if (p.parent / "history.csv").is_file())


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{path}: unreadable: {' '.join(str(e).split())}") from None


def read_history(path: Path, task: str) -> pd.DataFrame:
    """history.csv with at least one epoch and the columns of `task`'s scores."""
    try:
        history = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, ValueError) as e:  # pandas' parser errors too
        raise InputError(f"{path}: unreadable: {' '.join(str(e).split())}") from None
    _, score, per_class = METRICS[task]
    needed = ["epoch", score, *(per_class.format(c) for c in CLASSES)]
    missing = [c for c in needed if c not in history.columns]
    if missing or history.empty:
        raise InputError(f"{path}: not a {task} run's history.csv of train: "
                         + (f"no column {missing[0]!r}" if missing else "no epoch"))
    return history


def text(value) -> str:
    """A config value as the command line writes it: 1,2,3 for a tuple, true/false."""
    if isinstance(value, (tuple, list)):
        return ",".join(text(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if value != "" else '""'


def options(config: TrainConfig) -> str:
    """The fields (outside name and RUNTIME_FIELDS) that differ from the config's preset, or
    from the defaults where its name is no preset: what the run's command line changed. A
    demo run then shows its two or three options, not the preset's fifteen."""
    base = build_config(config.name) if config.name in PRESETS else TrainConfig()
    values = to_dict(config)
    return " ".join(f"{k}={text(values[k])}" for k in differing(base, config) if k != "name")


def number(value) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def run_row(folder: Path, name: str) -> dict:
    """One run's row (oof_cv and oof_in empty: table fills them)."""
    saved = read_json(folder / "config.json")
    config = from_saved({k: v for k, v in saved.items() if k != provenance.KEY}
                        if isinstance(saved, dict) else saved, folder / "config.json")
    history = read_history(folder / "history.csv", config.task)
    metric, score, per_class = METRICS[config.task]
    scores = history[score].fillna(0.0)  # train scores a classifier without an AUC 0
    best = history.loc[scores.idxmax()]  # the first best: best.pt is kept on improvement
    return {"run": name, "task": config.task,
            "model": (config.encoder if config.task == "classify" else
                      f"{config.arch}/{config.encoder}"),
            "preset": config.name, "epochs": (int(history.epoch.iloc[-1]), config.epochs),
            "best_epoch": int(best.epoch), "metric": metric, "best": float(scores.max()),
            **{f"c{c}": number(best[per_class.format(c)]) for c in CLASSES},
            "oof_cv": None, "oof_in": None, "options": options(config)}


def oof_results(folders: list[Path]) -> dict[Path, tuple[float, str]]:
    """Run folder (resolved) -> (its best OOF CV, the folder of that postprocess.json), over
    the postprocess.json files below `folders` in which the run is its fold's only segmenter
    (of equal CVs, the least deep file's, e.g. OUT/ before OUT/<gate kind>/). One without an ensemble (written before oof recorded it) names no run."""
    found: dict[Path, tuple[float, str]] = {}
    paths = {p for folder in folders for p in folder.rglob("postprocess.json")}
    for path in sorted(paths, key=lambda p: (len(p.parts), p)):  # ties: the shallowest
        result = read_json(path)
        if not isinstance(result, dict) or "ensemble" not in result:
            continue
        try:
            cv = float(result["oof_mean_dice"])
            alone = [members["segmenters"][0]["checkpoint"]
                     for members in result["ensemble"].values()
                     if len(members["segmenters"]) == 1]
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise InputError(f"{path}: not a postprocess.json of oof ({type(e).__name__} "
                             f"{e})") from None
        for checkpoint in alone:
            run = Path(checkpoint).resolve().parent
            if run not in found or cv > found[run][0]:
                found[run] = (cv, str(path.parent))
    return found


def table(folders: list[Path], submissions: list[Path]) -> list[dict]:
    """The rows of every run below `folders`, by name; names are relative to their folder
    (prefixed with it when there are several folders)."""
    oof = oof_results(submissions)
    rows = []
    for folder in folders:
        for run in find_runs(folder):
            name = run.relative_to(folder).as_posix()
            name = (folder / name).as_posix() if len(folders) > 1 or name == "." else name
            cv, where = oof.get(run.resolve(), (None, None))
            rows.append({**run_row(run, name), "oof_cv": cv, "oof_in": where})
    return rows


def sort_rows(rows: list[dict], column: str) -> list[dict]:
    """Rows sorted by `column`: scores descending, the rest ascending; empty cells last;
    ties keep their order."""
    if column not in COLUMNS:
        raise InputError(f"--sort {column}: unknown column; valid: {', '.join(COLUMNS)}")
    present = sorted((r for r in rows if r[column] is not None), key=lambda r: r[column],
                     reverse=column in DESCENDING)
    return present + [r for r in rows if r[column] is None]


def cell(value) -> str:
    """A value as the table prints it: scores to 4 decimals, epochs as done/planned, - for
    none."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, tuple):
        return "/".join(map(str, value))
    return str(value)


def as_text(rows: list[dict]) -> str:
    """Plain aligned columns: text to the left, numbers to the right."""
    cells = [list(COLUMNS)] + [[cell(r[c]) for c in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    numeric = [all(isinstance(r[c], (int, float, tuple)) or r[c] is None for r in rows)
               for c in COLUMNS]
    return "\n".join("  ".join(v.rjust(w) if n else v.ljust(w)
                               for v, w, n in zip(line, widths, numeric)).rstrip()
                     for line in cells)


def as_markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(cell(r[c]) for c in COLUMNS) + " |"
                              for r in rows])


def as_frame(rows: list[dict]) -> pd.DataFrame:
    """The rows for a CSV: full precision, epochs as done/planned, empty cells empty."""
    return pd.DataFrame([{c: cell(r[c]) if isinstance(r[c], tuple) else r[c] for c in COLUMNS}
                         for r in rows], columns=list(COLUMNS))
