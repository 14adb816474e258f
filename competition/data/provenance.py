"""Which split and which dataset trained a model, so that no stage mixes them up.

A run records its split in config.json and in every checkpoint it writes (best.pt, last.pt,
kept epochs, averaged.pt), under the key "split":

    {"fold": 0, "folds_csv": "folds/folds.csv",
     "folds_sha256": "3f2a...",  the whole assignment: sorted "ImageId,fold" lines
     "val_sha256": "9c41...",    the fold's validation ImageIds, sorted, one per line
     "val_images": 80,
     "dataset": {"train_csv_sha256": "b7e0...", "images": 400}}

The folder names `fold<k>` say nothing a stage can trust: a classifier trained on another
split, a folds.csv regenerated after some folds were trained, or `--init-from` of another
fold's model put validation images into training, and the OOF CV is then optimistic by an
amount nobody sees. `oof`, `average`, `pseudo`, `train --init-from` and `train --resume`
compare a model's record with the split they use (`check`) and refuse a difference in one
line naming both files. Digests are of content, never of paths: the same data under another
folder is the same dataset. A model saved before records were kept is accepted with one
warning line (`check` returns it).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from competition.errors import InputError

KEY = "split"  # the record's key in config.json and in checkpoints
DIGITS = 16  # hex digits kept of each sha256: 64 bits, ample against accidental equality


def digest_lines(lines) -> str:
    """sha256 of the lines joined by newlines (sorted by the caller where order is no part
    of the identity), first DIGITS hex digits."""
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:DIGITS]


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, first DIGITS hex digits."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()[:DIGITS]


def dataset_identity(data: str | Path, image_ids: list[str]) -> dict:
    """A dataset's identity: its train.csv's content and how many train images it has."""
    return {"train_csv_sha256": file_digest(Path(data) / "train.csv"), "images": len(image_ids)}


def assignment_digest(folds_csv: str | Path) -> str:
    """The digest of a folds file's whole assignment: its sorted "ImageId,fold" lines."""
    folds = pd.read_csv(folds_csv, usecols=["ImageId", "fold"])
    return digest_lines(sorted(f"{i},{int(k)}" for i, k in zip(folds.ImageId, folds.fold)))


def split_record(data: str | Path, folds_csv: str | Path, fold: int, image_ids: list[str],
                 val_ids: list[str]) -> dict:
    """The record of fold `fold` of `folds_csv` (already checked by folds.split) on dataset
    `data` whose train images are `image_ids`."""
    return {"fold": int(fold), "folds_csv": str(folds_csv),
            "folds_sha256": assignment_digest(folds_csv),
            "val_sha256": digest_lines(sorted(val_ids)), "val_images": len(val_ids),
            "dataset": dataset_identity(data, image_ids)}


def difference(recorded: dict, expected: dict, what: tuple = ("fold", "split", "dataset")) -> str | None:
    """The first way a model's record differs from the split a stage uses, in words, or None.
    `what`: the parts compared, of fold (the fold number), split (the fold's validation set)
    and dataset (train.csv and the image count)."""
    ours, theirs = expected, recorded
    if "dataset" in what and theirs["dataset"] != ours["dataset"]:
        a, b = theirs["dataset"], ours["dataset"]
        return (f"it was trained on another dataset (train.csv {a['train_csv_sha256']}, "
                f"{a['images']} images; here train.csv {b['train_csv_sha256']}, {b['images']} "
                "images)")
    if "fold" in what and theirs["fold"] != ours["fold"]:
        return (f"it was trained as fold {theirs['fold']} of {theirs['folds_csv']}, used here "
                f"as fold {ours['fold']}: its training images include this fold's validation "
                "images")
    if "split" in what and theirs["val_sha256"] != ours["val_sha256"]:
        return (f"it was trained on another split: its fold {theirs['fold']} validation set "
                f"({theirs['val_images']} images, {theirs['folds_csv']}) is not fold "
                f"{ours['fold']} of {ours['folds_csv']} ({ours['val_images']} images): "
                "folds.csv regenerated, or another folds file?")
    return None


def check(path, recorded: dict | None, expected: dict,
          what: tuple = ("fold", "split", "dataset")) -> str | None:
    """Refuse (InputError, one line naming the model's file and the folds file) a model whose
    record differs from `expected`; a model without a record (saved before this version) ->
    the warning line to print; a matching one -> None."""
    if recorded is None:
        return (f"warning: {path} does not record the split it was trained on (saved before "
                f"splits were recorded): not checked against fold {expected['fold']} of "
                f"{expected['folds_csv']}")
    said = difference(recorded, expected, what)
    if said:
        raise InputError(f"{path}: {said}")
    return None


def common(models: list[tuple]) -> tuple[dict | None, str | None]:
    """[(file, its record or None)] of an ensemble that predicts images none of them trained
    on (pseudo-labels of the test images) -> (the split and dataset they share: {"folds_sha256",
    "dataset"}, or None where none records one; the warning line for those that record
    none, or None). Models of one ensemble come from one split of one dataset: another is
    refused in one line naming both files."""
    known = [(path, record) for path, record in models if record is not None]
    for path, record in known[1:]:
        first_path, first = known[0]
        for key, what in (("dataset", "dataset"), ("folds_sha256", "split (folds file)")):
            if record[key] != first[key]:
                raise InputError(f"{path}: trained on another {what} than {first_path} "
                                 f"({record['folds_csv']} against {first['folds_csv']}): the "
                                 "models of one ensemble must share their folds")
    missing = [path for path, record in models if record is None]
    warning = (f"warning: {missing[0]}" + (f" and {len(missing) - 1} more models"
                                           if len(missing) > 1 else "")
               + " record no split (saved before splits were recorded): not checked to share "
               "one split" if missing else None)
    shared = ({"folds_sha256": known[0][1]["folds_sha256"], "dataset": known[0][1]["dataset"]}
              if known else None)
    return shared, warning


def trained_folds(runs, folds=None) -> tuple[Path, str]:
    """The folds file that the runs (folders of fold<k>/) were trained on, read from the
    record in each fold's config.json (`folds`: those folds only; None: every fold<k>/), and
    where it was read. The runs must agree (one split: the same assignment digest) and the
    file must still hold that assignment; otherwise one line naming both files. Runs that
    record none (saved before records were kept) fall back to RUN/folds.csv, the old default.
    """
    import json

    records = []
    for run in map(Path, runs):
        folders = ([run / f"fold{k}" for k in folds] if folds is not None
                   else sorted(p for p in run.glob("fold*") if p.is_dir()))
        for config in (folder / "config.json" for folder in folders):
            if config.is_file():
                record = json.loads(config.read_text()).get(KEY)
                if record:
                    records.append((config, record))
    if not records:
        legacy = Path(runs[0]) / "folds.csv"
        if legacy.is_file():
            return legacy, f"{legacy.parent} (its runs record no folds file)"
        raise InputError(f"{runs[0]}: its runs record no folds file (no fold<K>/config.json "
                         "with a split, saved before records were kept) and there is no "
                         f"{legacy}: pass --folds-csv FILE, the folds file they trained on")
    (first, record), digest = records[0], records[0][1]["folds_sha256"]
    for config, other in records[1:]:
        if other["folds_sha256"] != digest:
            raise InputError(f"{config}: trained on another split ({other['folds_csv']}) than "
                             f"{first} ({record['folds_csv']}): the runs of one OOF must "
                             "share their folds")
    path = Path(record["folds_csv"])
    if not path.is_file():
        raise InputError(f"{first}: trained on the folds file {path}, which is not found "
                         f"(from another folder?): pass --folds-csv FILE, that file or a copy "
                         f"of it (its assignment digest is {digest})")
    now = assignment_digest(path)
    if now != digest:
        raise InputError(f"{path}: changed since {first} was trained on it (assignment digest "
                         f"{now}, recorded {digest}): regenerated? pass --folds-csv FILE, the "
                         "folds file the runs trained on")
    return path, str(first)
