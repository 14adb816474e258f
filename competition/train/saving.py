"""What a run writes after each epoch, in an order a crash cannot turn into a worse best.pt,
and what a resumed or overwritten run checks and repairs first.

After each epoch (rank 0), in this order, each file atomically:

    kept/epochNNN.pt + kept/index.json   the epochs kept for averaging (keep.py)
    best.previous.pt                     a link to the best.pt about to be replaced
    best.pt                              when the epoch improved the validation score
    last.pt                              everything to continue, recording the best epoch
    (best.previous.pt removed)           and history.csv

last.pt is the commit point: a run killed anywhere before it resumes from the epoch before,
whose best.pt is still on disk, as best.previous.pt where the new best.pt had been written
(`reconcile_best` puts it back). A best.pt that is not the one last.pt records is said in
one line on --resume and repaired where the files allow it.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd

from competition.data.provenance import KEY
from competition.errors import InputError
from competition.files import write_csv
from competition.model import checkpoint
from competition.model import config as config_lib
from competition.model.precision import PRECISION
from competition.train import keep
from competition.train.tracking import EVENTS
from competition.train.runtime import unwrap

BEST, LAST, PREVIOUS = "best.pt", "last.pt", "best.previous.pt"
# what `train --overwrite` removes before the new run writes anything
RUN_FILES = (LAST, BEST, PREVIOUS, "history.csv", "config.json", "averaged.pt",
             "averaged.json", "curves.png")
RUN_FOLDERS = (keep.FOLDER,)


def best_epoch(history: list[dict], best: float) -> int:
    """The epoch whose score is `best`: the first row whose running best reached it (0 for
    a run without epochs). Read from last.pt's history, so also for runs saved before
    last.pt recorded it."""
    return next((int(row["epoch"]) for row in history if row["best"] >= best), 0)


def save_epoch(out: Path, config, parts, model, evaluated, kept, epoch: int, result: dict,
               improved: bool, best: float, history: list, ema_updates: int, dtype,
               rngs: list, split: dict) -> dict:
    """Rank 0, after epoch `epoch` (0-based): the files in the order of the module's
    docstring. `model` is the stepped module (DDP or compiled), `evaluated` the plain one
    validated and kept (the EMA where there is one); `split`: the run's record of its fold
    (provenance.py), in every checkpoint. Returns the kept epochs' record."""
    ema = parts.ema
    weights = {"config": config_lib.to_dict(config), "model": unwrap(model).state_dict(),
               "ema": ema.state_dict() if ema is not None else None,
               "epoch": epoch + 1, "step": parts.scheduler.last_epoch, KEY: split}
    # before last.pt: an epoch recorded but not in last.pt is recorded again on resume
    kept = keep.record(out, kept, epoch + 1, result["score"], lambda: {
        **weights, "model": evaluated.state_dict(), "ema": None, "score": result})
    if improved:
        keep_previous(out)
        checkpoint.save(out / BEST, {**weights, "score": result})
    checkpoint.save(out / LAST, {
        **weights, "ema_updates": ema_updates, "precision": PRECISION[dtype],
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(), "scaler": parts.scaler.state_dict(),
        "best": best, "best_epoch": best_epoch(history, best), "result": result,
        "history": history, "rng": rngs})
    (out / PREVIOUS).unlink(missing_ok=True)
    write_csv(out / "history.csv", pd.DataFrame(history))
    return kept


def keep_previous(out: Path) -> None:
    """best.pt, if any, as best.previous.pt too (a hard link, else a copy) before it is
    replaced: the best.pt last.pt still records, until the new last.pt is written."""
    best, previous = out / BEST, out / PREVIOUS
    previous.unlink(missing_ok=True)
    if not best.is_file():
        return
    try:
        os.link(best, previous)
    except OSError:  # a file system without hard links
        shutil.copyfile(best, previous)


def describe(state: dict | None) -> str:
    return "none" if state is None else f"epoch {state['epoch']} ({score_of(state):.4f})"


def score_of(state: dict) -> float:
    return float(state["score"]["score"])


def read_best(path: Path) -> dict | None:
    """best.pt's epoch and score, None where the file is missing or unreadable."""
    try:
        state = checkpoint.load(path)
        return {"epoch": int(state["epoch"]), "score": state["score"]}
    except (InputError, KeyError, TypeError):
        return None


def reconcile_best(out: Path, state: dict) -> str | None:
    """On --resume: compare best.pt with the best epoch last.pt (`state`) records and put
    right what a killed run left; returns the one line that says what was found and done,
    or None where best.pt is the one recorded."""
    done, best = int(state["epoch"]), float(state["best"])
    wanted = int(state.get("best_epoch") or best_epoch(state["history"], best))
    found = read_best(out / BEST)
    if found is not None and found["epoch"] == wanted and score_of(found) == best:
        (out / PREVIOUS).unlink(missing_ok=True)
        return None
    previous = read_best(out / PREVIOUS)
    if previous is not None and previous["epoch"] == wanted and score_of(previous) == best:
        os.replace(out / PREVIOUS, out / BEST)
        return (f"resume: {out / BEST} held {describe(found)}, an epoch {out / LAST} does not "
                f"record (the run was stopped between the two writes); put back epoch "
                f"{wanted} from {PREVIOUS}")
    if wanted == done and "result" in state:
        checkpoint.save(out / BEST, {k: state[k] for k in ("config", "model", "ema", "epoch",
                                                           "step", KEY) if k in state}
                        | {"score": state["result"]})
        (out / PREVIOUS).unlink(missing_ok=True)
        return (f"resume: {out / BEST} held {describe(found)} and {out / LAST} records epoch "
                f"{wanted} ({best:.4f}) as the best; rewrote {BEST} from {LAST}")
    return (f"warning: {out / BEST} holds {describe(found)} and {out / LAST} records epoch "
            f"{wanted} ({best:.4f}) as the best, which no file on disk holds any more; "
            f"{BEST} is replaced when an epoch scores above {best:.4f}")


def clear_run(out: Path) -> list[str]:
    """`train --overwrite`: remove every file an earlier run left in `out` (so that none of
    them can be mistaken for the new run's: a kill in its first epoch leaves an empty run,
    not a new config.json beside the old checkpoints). Returns the names removed."""
    removed = []
    for name in RUN_FILES:
        if (out / name).is_file():
            (out / name).unlink()
            removed.append(name)
    for name in RUN_FOLDERS:
        if (out / name).is_dir():
            shutil.rmtree(out / name)
            removed.append(name + "/")
    for path in sorted(out.glob(EVENTS)) if out.is_dir() else []:
        path.unlink()
        removed.append(path.name)
    return removed
