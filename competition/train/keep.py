"""The epochs a run keeps for weight averaging (`train --keep-top k --keep-last k`).

Each kept epoch is one file RUN/kept/epochNNN.pt in best.pt's format (config, the evaluated
weights: the EMA where the run keeps one, else the model; epoch, step, score), so any of them
works wherever best.pt does. RUN/kept/index.json lists them beside every epoch's validation
score and where the run's data came from:

    {"fold": 0, "data": "input/synthetic", "folds_csv": "folds/demo/folds.csv",
     "keep_top": 5, "keep_last": 5,
     "scores": [[1, 0.81], [2, 0.84], ...],             every epoch of the run, in order
     "kept": [{"epoch": 2, "score": 0.84, "file": "epoch002.pt"}, ...]}

An epoch is kept while it is among the `keep_top` best scores of the run so far (ties: the
earlier epoch, as best.pt) or among its `keep_last` last epochs; an epoch in both is stored
once. `average --top k` takes the k best epochs of "scores" and `--last k` the k last, and
refuses when any of them was not kept (say --keep-top was lower for part of the run).

Crash safety, per epoch: the new epoch's file is written (atomically), then the index
(atomically), then the files the index no longer lists are deleted. A crash between these
steps leaves files the index does not list (deleted at the next epoch), never an index entry
without its file. train.fit records an epoch before it writes last.pt; an epoch recorded but
not in last.pt is dropped on --resume (`resumed`) and recorded again, so nothing is lost or
listed twice.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from competition.errors import InputError
from competition.files import write_json

FOLDER = "kept"
INDEX = "index.json"
FILE = re.compile(r"epoch\d+\.pt")
STALE_TEMP = re.compile(r"\.epoch\d+\.pt\..*\.tmp")  # atomic_path's, left by a killed process


def file_name(epoch: int) -> str:
    return f"epoch{epoch:03d}.pt"


def ranked(scores: list[tuple[int, float]]) -> list[int]:
    """[(epoch, score)] -> epochs from the best score down; ties go to the earlier epoch (as
    best.pt, replaced only by a strictly higher score); a non-finite score ranks last."""
    def key(item):
        epoch, score = item
        return (-score if math.isfinite(score) else math.inf, epoch)
    return [epoch for epoch, _ in sorted(scores, key=key)]


def top_epochs(scores: list[tuple[int, float]], k: int) -> list[int]:
    """The k best epochs, best first."""
    return ranked(scores)[:k] if k > 0 else []


def last_epochs(scores: list[tuple[int, float]], k: int) -> list[int]:
    """The k last epochs, last first."""
    return sorted((epoch for epoch, _ in scores), reverse=True)[:k] if k > 0 else []


def to_keep(scores: list[tuple[int, float]], keep_top: int, keep_last: int) -> set[int]:
    """Every epoch's (epoch, score) so far -> the epochs to keep: the keep_top best and the
    keep_last last."""
    return set(top_epochs(scores, keep_top)) | set(last_epochs(scores, keep_last))


def empty(fold: int, data, folds_csv, keep_top: int, keep_last: int) -> dict:
    return {"fold": fold, "data": str(data), "folds_csv": str(folds_csv),
            "keep_top": keep_top, "keep_last": keep_last, "scores": [], "kept": []}


def read(run: Path) -> dict:
    """RUN/kept/index.json -> the index; none, or unreadable -> InputError."""
    path = Path(run) / FOLDER / INDEX
    if not path.is_file():
        raise InputError(f"{run}: no kept weights ({path} not found); train the run with "
                         "--keep-top K and/or --keep-last K to keep epochs for averaging")
    try:
        index = json.loads(path.read_text())
        index["scores"] = [(int(e), float(s)) for e, s in index["scores"]]
        index["kept"] = [dict(k, epoch=int(k["epoch"])) for k in index["kept"]]
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: not an index of kept weights ({e})") from None
    return index


def resumed(run: Path, done: int, fold: int, data, folds_csv, keep_top: int,
            keep_last: int) -> dict:
    """The index a run resumed after `done` epochs continues: the one on disk without any
    epoch past `done` (recorded before a crash that came before last.pt) and without entries
    whose file is gone, or a new one when there is none. Written with the next epoch."""
    try:
        index = read(run)
    except InputError:
        return empty(fold, data, folds_csv, keep_top, keep_last)
    folder = Path(run) / FOLDER
    return {**index, "fold": fold, "data": str(data), "folds_csv": str(folds_csv),
            "keep_top": keep_top, "keep_last": keep_last,
            "scores": [(e, s) for e, s in index["scores"] if e <= done],
            "kept": [k for k in index["kept"]
                     if k["epoch"] <= done and (folder / k["file"]).is_file()]}


def record(run: Path, index: dict, epoch: int, score: float, weights) -> dict:
    """Add `epoch` (its validation `score`) to the run's kept weights; `weights()` gives the
    dict to save (best.pt's format), called only when the epoch is kept. Writes the epoch's
    file, then the index, then deletes what the index no longer lists (see the module's
    docstring). Returns the new index. A run that keeps nothing and has no kept/ folder
    writes nothing."""
    folder = Path(run) / FOLDER
    scores = [(e, s) for e, s in index["scores"] if e != epoch] + [(epoch, float(score))]
    if not (index["keep_top"] or index["keep_last"] or folder.exists()):
        return {**index, "scores": scores}
    keep = to_keep(scores, index["keep_top"], index["keep_last"])
    kept = [k for k in index["kept"] if k["epoch"] in keep and k["epoch"] != epoch]
    if epoch in keep:
        from competition.model import checkpoint  # torch: loaded by the callers anyway

        checkpoint.save(folder / file_name(epoch), weights())
        kept.append({"epoch": epoch, "score": float(score), "file": file_name(epoch)})
    new = {**index, "scores": scores, "kept": sorted(kept, key=lambda k: k["epoch"])}
    write_json(folder / INDEX, {**new, "scores": [list(s) for s in scores]})
    listed = {k["file"] for k in new["kept"]}
    for path in folder.iterdir():
        if (FILE.fullmatch(path.name) and path.name not in listed) or \
                STALE_TEMP.fullmatch(path.name):
            path.unlink(missing_ok=True)
    return new


def select(run: Path, index: dict, top: int | None = None, last: int | None = None) -> list[dict]:
    """The kept entries `average --top k` (the k best epochs of the whole run, best first) or
    `--last k` (the k last, last first) averages. Fewer epochs than asked, or an epoch among
    them that was not kept -> InputError."""
    k, which = (top, "top") if top is not None else (last, "last")
    scores = index["scores"]
    if k < 1:
        raise InputError(f"--{which} {k}: must be at least 1")
    if len(scores) < k:
        raise InputError(f"{run}: --{which} {k} asks for {k} epochs and the run has "
                         f"{len(scores)} recorded in {Path(run) / FOLDER / INDEX}")
    epochs = top_epochs(scores, k) if which == "top" else last_epochs(scores, k)
    by_epoch = {e["epoch"]: e for e in index["kept"]}
    missing = [e for e in epochs if e not in by_epoch]
    if missing:
        raise InputError(f"{run}: --{which} {k} needs epochs {sorted(epochs)} and "
                         f"{len(missing)} of them (epoch {missing[0]}) were not kept (the run "
                         f"keeps --keep-top {index['keep_top']} --keep-last {index['keep_last']};"
                         f" kept: {sorted(by_epoch) or 'none'})")
    return [by_epoch[e] for e in epochs]
