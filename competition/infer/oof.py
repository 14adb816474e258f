"""Out-of-fold statistics and the post-processing search on them.

`run`: for each fold k, the fold-k best.pt of every segmentation run (an ensemble of runs
of any architectures, weighted) and of every classifier run predicts fold k's validation
images (with TTA), so the statistics are those of the ensemble's own out-of-fold
probabilities. Per image and class, the area and truth intersection of every
(threshold, min_component) of the grid, and the image-level signals the gates read, are
streamed to STATS/fold<k>/ as the batches come, never the probabilities:
    stats.npy     (N, 4, K, M, 2) int32   area, intersection (postprocess.grid_counts)
    truth.npy     (N, 4) int32            truth areas
    maxprob.npy   (N, 4) float32          the largest pixel probability (gates.py)
    aux.npy       (N, 4) float32          the segmenters' image-level heads (if any has one)
    cls.npy       (N, 4) float32          the classifiers' probabilities (if any were given)
    examples.npz  threshold levels (uint8) and signals of a few images, for the overlays
    meta.json     ImageIds in row order, the grid, TTA views, the checkpoints and weights
With `oof --weights search` (2 or more segmenter runs), the same forwards also give the
statistics of every candidate weighting (ensemble_weights.candidates): candidate 0, equal
weights, is the files above; candidate j's stats.npy, maxprob.npy, aux.npy and examples.npz
are under weights/<j>/, and meta.json's "weight_search" lists the weightings and signals.
tuning.tune then reads those files, chooses the weights where they were searched (the one
standard error rule), each class's post-processing and gate (search.search), and writes
postprocess.json and the CV report (Markdown and PNG plots).
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from competition.data import datasets as data_lib
from competition.errors import InputError
from competition.infer.gates import check_signals
from competition.files import atomic_dir, write_json
from competition.data.provenance import file_digest, split_record
from competition.infer import ensemble_weights
from competition.infer.ensemble import OneBehind, batches, check_splits, load_ensembles
from competition.model.forward import device
from competition.data.labels import CLASSES, by_image, load_train
from competition.data.postprocess import grid_counts, threshold_levels
from competition.infer.search import MIN_COMPONENTS, THRESHOLDS
from competition.data.folds import split
from competition.model.precision import amp_dtype


class NpyStream:
    """A .npy file of known shape written in chunks of rows (axis 0), without holding it."""

    def __init__(self, path: Path, shape: tuple, dtype):
        self.shape, self.dtype, self.rows = tuple(shape), np.dtype(dtype), 0
        self.file = open(path, "wb")
        np.lib.format.write_array_header_1_0(self.file, {
            "descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
            "shape": self.shape})

    def write(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, self.dtype)
        if rows.shape[1:] != self.shape[1:] or self.rows + len(rows) > self.shape[0]:
            raise ValueError(f"rows of shape {rows.shape} do not fit {self.shape}")
        self.file.write(rows.tobytes())
        self.rows += len(rows)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.file.close()
        if exc_type is None and self.rows != self.shape[0]:
            raise RuntimeError(f"{self.file.name}: {self.rows} of {self.shape[0]} rows written")


def example_picks(image_ids: list[str], encoded: dict) -> list[int]:
    """Indices of the first image with each class, and of the first defect-free image."""
    picks = []
    for class_id in CLASSES:
        picks += [i for i, image_id in enumerate(image_ids)
                  if class_id in encoded.get(image_id, {})][:1]
    picks += [i for i, image_id in enumerate(image_ids) if not encoded.get(image_id)][:1]
    return sorted(set(picks))


SIGNALS = ("maxprob", "aux", "cls")  # the (N, 4) image-level files, gates.py
WEIGHTS = "weights"  # fold<k>/weights/<j>/: candidate j's files (oof --weights search)


def candidate_folder(fold_dir: Path, j: int) -> Path:
    """Where candidate j of a weight search keeps the files its weights change (stats.npy,
    maxprob.npy, aux.npy, examples.npz): candidate 0, equal weights, is the fold folder
    itself, so its files are those of `oof` without the search."""
    return Path(fold_dir) if j == 0 else Path(fold_dir) / WEIGHTS / str(j)


def candidate_signals(meta: dict, j: int) -> list[str]:
    """The signals recorded for candidate j of a fold's meta.json (0: the fold's own)."""
    return list(meta.get("signals", [])) if j == 0 else list(
        meta["weight_search"]["signals"][j])


def fold_stats(data: Path, image_ids: list[str], encoded: dict, ckpts, views, out: Path,
               device: torch.device, batch_size: int, workers: int, desc: str,
               thresholds=THRESHOLDS, min_components=MIN_COMPONENTS, weights=None,
               classifiers=(), classifier_weights=None, images=None,
               compile: bool = False, split: dict | None = None,
               candidates=None) -> None:
    """Predict `image_ids` with the segmenters `ckpts` (a path or a list, averaged with
    `weights`) and the `classifiers`, and stream their grid statistics and signals into
    folder `out` (written under a temporary name, renamed when complete). `images`: the
    decoded-image cache of train_images or None; `compile`: torch.compile the models.
    `split`: the fold's record (provenance.py): a model trained on another fold, split or
    dataset is refused, one that records none is said in a warning line; meta.json keeps it.
    `candidates`: weight vectors of the segmenters (ensemble_weights.candidates, equal
    first), each scored from the same forwards (ensemble.predict_weighted): candidate 0's
    files are the folder's own, candidate j's under weights/<j>/ (candidate_folder), listed
    in meta.json's "weight_search"; None: the one ensemble of `weights`."""
    ckpts = [ckpts] if isinstance(ckpts, (str, Path)) else list(ckpts)
    ensemble, cls = load_ensembles(ckpts, device, weights, classifiers, classifier_weights,
                                   compile)
    for line in check_splits((ensemble, cls), split) if split else []:
        print(line, flush=True)
    dataset = data_lib.SteelDataset(data / "train_images", image_ids, encoded, cache=images)
    loader = data_lib.loader(dataset, batch_size, workers, pin_memory=device.type == "cuda")
    n, k, m = len(image_ids), len(thresholds), len(min_components)
    picks = set(example_picks(image_ids, encoded))
    components = np.asarray(min_components, np.int64)
    weightings = None if candidates is None else [[float(w) for w in c] for c in candidates]
    heads = [c.cls_weight > 0 for c in ensemble.configs]
    # a candidate's aux averages the heads of its models of positive weight
    signals = [["maxprob"] + (["aux"] if any(h for h, w in zip(heads, ws or [1] * len(heads))
                                             if w > 0) else []) + (["cls"] if cls else [])
               for ws in weightings or [None]]
    examples = [{} for _ in signals]

    with atomic_dir(out) as tmp:
        folders = [candidate_folder(tmp, j) for j in range(len(signals))]
        for folder in folders[1:]:
            folder.mkdir(parents=True)
        with NpyStream(tmp / "truth.npy", (n, len(CLASSES)), np.int32) as truth, \
                contextlib.ExitStack() as stack, OneBehind() as cpu:
            def stream(path, shape, dtype):
                return stack.enter_context(NpyStream(path, shape, dtype))

            stats = [stream(f / "stats.npy", (n, len(CLASSES), k, m, 2), np.int32)
                     for f in folders]
            # cls is the same for every candidate: the fold folder's alone
            streams = [{name: stream(f / f"{name}.npy", (n, len(CLASSES)), np.float32)
                        for name in names if j == 0 or name != "cls"}
                       for j, (f, names) in enumerate(zip(folders, signals))]

            def consume(levels: list, truth_masks: np.ndarray, index: list[int],
                        values: list) -> None:
                for j, (lv, vals) in enumerate(zip(levels, values)):
                    stats[j].write(grid_counts(lv, truth_masks, k, components))
                    for name, signal in streams[j].items():
                        signal.write(vals[name])
                    examples[j].update({i: (lv[r].copy(), {s: v[r] for s, v in vals.items()})
                                        for r, i in enumerate(index) if i in picks})
                truth.write(truth_masks.sum(axis=(2, 3)))

            # the device's autocast dtype; amp "off" in the config: fp32 (infer.model_dtype)
            for (_, truth_masks, index), pred in batches(
                    ensemble, loader, views, device, amp_dtype("auto", device), desc, cls,
                    weightings):
                preds = pred if weightings else [pred]
                levels = [threshold_levels(p.masks, thresholds).cpu().numpy() for p in preds]
                cpu.submit(consume, levels, truth_masks.numpy(), index.tolist(),
                           [p.signals() for p in preds])
        for folder, names, chosen in zip(folders, signals, examples):
            save_examples(folder / "examples.npz", image_ids, chosen, names)
        write_json(tmp / "meta.json", {
            "image_ids": list(image_ids), "thresholds": list(thresholds),
            "min_components": list(min_components), "tta": list(views),
            "segmenters": members(ensemble), "classifiers": members(cls) if cls else [],
            "signals": signals[0], "data": str(data), "split": split,
            **({"weight_search": {"candidates": weightings, "signals": signals}}
               if weightings else {})})


def save_examples(path: Path, image_ids: list[str], examples: dict, signals: list[str]) -> None:
    """examples.npz: the threshold levels and signals of the example images, for the
    report's overlays."""
    chosen = sorted(examples)
    np.savez_compressed(path,
                        image_ids=np.array([image_ids[i] for i in chosen]),
                        levels=np.stack([examples[i][0] for i in chosen])
                        if examples else np.zeros((0, len(CLASSES), 1, 1), np.uint8),
                        **{name: np.array([examples[i][1][name] for i in chosen],
                                          np.float32).reshape(-1, len(CLASSES))
                           for name in signals})


def members(ensemble) -> list[dict]:
    """[{"checkpoint", "weight", "sha256"}] of an ensemble's models: the content digest lets
    predict tell the same model under another name from another model (infer/tuned.py)."""
    return [{"checkpoint": str(p), "weight": ensemble.weight(i), "sha256": file_digest(p)}
            for i, p in enumerate(ensemble.paths)]


def parse_folds(text: str | None, folds_csv: Path) -> list[int]:
    """'0,2' -> [0, 2]; None -> every fold of folds.csv."""
    if text is None:
        if not folds_csv.is_file():
            raise InputError(f"{folds_csv}: folds file not found")
        return sorted(set(pd.read_csv(folds_csv).fold.astype(int)))
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise InputError(f"--folds {text}: expected comma-separated fold numbers, e.g. 0,1,2") from None


@dataclass(frozen=True)
class Runs:
    """The runs an OOF ensemble averages: folders of fold<k>/best.pt, segmentation runs
    (any architectures) and classifier runs, each with its weight in its own average.
    `name`: the segmenters' checkpoint file in fold<k>/ (averaged.pt: `average`'s)."""
    segmenters: tuple[Path, ...]
    weights: tuple[float, ...] = ()
    classifiers: tuple[Path, ...] = ()
    classifier_weights: tuple[float, ...] = ()
    name: str = "best.pt"
    search_weights: bool = False  # oof --weights search: the OOF data chooses the weights

    def of_fold(self, k: int) -> tuple[list[Path], list[Path]]:
        return ([r / f"fold{k}" / self.name for r in self.segmenters],
                [r / f"fold{k}" / "best.pt" for r in self.classifiers])


def as_runs(runs) -> Runs:
    return runs if isinstance(runs, Runs) else Runs((Path(runs),))


def fold_runs(runs, folds_csv: Path, folds: list[int],
              image_ids: list[str]) -> list[tuple[int, list[str], list[Path], list[Path]]]:
    """(fold, its validation ImageIds, the fold's segmenter checkpoints, its classifier
    checkpoints) of each fold; every checkpoint must exist (checked before any is loaded)."""
    runs = as_runs(runs)
    todo = [(k, *runs.of_fold(k)) for k in folds]
    ckpts = [p for _, seg, cls in todo for p in seg + cls]
    missing = [str(p) for p in ckpts if not p.is_file()]
    if missing:
        make = ("train it with `bash run.sh fold<K>`" if missing[0].endswith("best.pt") else
                "make it (`python -m competition average --run RUN/fold<K> --top K`)")
        raise InputError(f"{missing[0]}: checkpoint not found ({len(missing)} of {len(ckpts)} "
                         f"missing); {make} or pass --folds")
    return [(k, split(folds_csv, k, image_ids)[1], seg, cls) for k, seg, cls in todo]


def run(data: Path, runs, folds_csv: Path, folds: list[int], views, batch_size: int,
        workers: int, stats_dir: Path, images=None, compile: bool = False,
        device_name: str = "auto") -> None:
    """OOF statistics of every fold in `folds` into STATS/fold<k>/ (each folder replaced
    whole); runs: a Runs, or one run folder. images, compile: as fold_stats's;
    device_name: --device (auto | cuda | cpu)."""
    dev = device(device_name)
    runs = as_runs(runs)
    image_ids, labels = load_train(data)
    encoded = by_image(labels)
    for k, val_ids, seg, cls in fold_runs(runs, folds_csv, folds, image_ids):
        out = stats_dir / f"fold{k}"
        searched = runs.search_weights and len(seg) >= 2
        fold_stats(data, val_ids, encoded, seg, views, out, dev, batch_size, workers,
                   desc=f"oof fold {k}",
                   weights=None if searched else list(runs.weights) or None,
                   classifiers=cls, classifier_weights=list(runs.classifier_weights) or None,
                   images=images, compile=compile,
                   split=split_record(data, folds_csv, k, image_ids, val_ids),
                   candidates=ensemble_weights.candidates(len(seg)) if searched else None)
        print(f"fold {k}: {len(val_ids)} validation images -> {out}; "
              f"peak memory of this process so far {peak_rss_mib():.0f} MiB")


def peak_rss_mib() -> float:
    """The peak resident memory of this process (not its loader workers), in MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_stats(stats_dir: Path, folds: list[int], candidate: int = 0) -> dict:
    """The OOF files of `folds` under STATS/fold<k>/, concatenated: stats (N, 4, K, M, 2),
    truth (N, 4), fold (N,), signals {name: (N, 4)} (those every fold has), and each fold's
    meta. Folds scored on another grid, TTA, ensemble or weight search are an error; so is a
    signal that is not finite. `candidate`: the weighting of an `oof --weights search`
    whose statistics and signals are taken (candidate_folder; 0: the folder's own)."""
    parts = []
    for k in folds:
        folder = stats_dir / f"fold{k}"
        if not (folder / "meta.json").is_file():
            raise InputError(f"{folder}: no OOF statistics; run `python -m competition oof` "
                             f"for fold {k} first")
        meta = json.loads((folder / "meta.json").read_text())
        own = candidate_folder(folder, candidate)
        signals = {name: np.load((folder if name == "cls" else own) / f"{name}.npy")
                   for name in candidate_signals(meta, candidate)}
        truth = np.load(folder / "truth.npy")
        check_signals(signals, len(truth), str(own))
        parts.append((k, meta, np.load(own / "stats.npy", mmap_mode="r"), truth, signals))
    first = parts[0][1]
    for k, meta, *_ in parts[1:]:
        for key in ("thresholds", "min_components", "tta", "signals", "weight_search"):
            if meta.get(key) != first.get(key):
                raise InputError(f"{stats_dir / f'fold{k}'}: {key} {meta.get(key)} differs from "
                                 f"fold {parts[0][0]}'s {first.get(key)}; recompute its OOF")
        for key, (mine, theirs) in same_ensemble(first, meta).items():
            if mine != theirs:
                raise InputError(f"{stats_dir / f'fold{k}'}: {key} {theirs}, fold "
                                 f"{parts[0][0]}'s {mine}: the OOF of another ensemble or "
                                 "dataset; recompute it with the same --runs, --weights "
                                 "and data")
    return {
        "stats": np.concatenate([p[2] for p in parts]),
        "truth": np.concatenate([p[3] for p in parts]),
        "fold": np.concatenate([np.full(len(p[3]), p[0]) for p in parts]),
        "signals": {name: np.concatenate([p[4][name] for p in parts])
                    for name in candidate_signals(first, candidate)},
        "metas": {p[0]: p[1] for p in parts},
    }


def same_ensemble(first: dict, other: dict) -> dict:
    """What two folds' meta.json must share to be searched together -> {what: (first's,
    other's)}: the runs (each model's run folder and file name, and its weight), and the
    split and dataset where both record them (older folders do not)."""
    def runs(meta: dict, role: str) -> list:
        return [f"{Path(m['checkpoint']).parent.parent}/fold<k>/{Path(m['checkpoint']).name}"
                f" x{m['weight']:g}" for m in meta.get(role) or []]

    pairs = {f"{role} runs": (runs(first, role), runs(other, role))
             for role in ("segmenters", "classifiers")}
    if first.get("split") and other.get("split"):
        for key, what in (("dataset", "dataset"), ("folds_sha256", "split (folds file)")):
            pairs[what] = (first["split"][key], other["split"][key])
    return pairs


def weighed_runs(runs, result: dict):
    """`runs` (a Runs, or one run folder) as `result` (a postprocess.json) chose to weigh
    them: the chosen weight of each segmenter run, a run of weight 0 left out, so that
    oof.csv is predicted by the ensemble the post-processing was tuned on. Unchanged where
    the result chose no weights, or chose them for other runs."""
    runs = as_runs(runs)
    chosen = result.get("weights")
    if not chosen or [str(r) for r in runs.segmenters] != chosen["models"]:
        return runs
    weights = chosen["candidates"][chosen["chosen"]]["weights"]
    kept = [(r, float(w)) for r, w in zip(runs.segmenters, weights) if w > 0]
    return replace(runs, segmenters=tuple(r for r, _ in kept),
                   weights=tuple(w for _, w in kept), search_weights=False)
