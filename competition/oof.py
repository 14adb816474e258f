"""Out-of-fold statistics and the post-processing search on them.

`run`: each fold's best.pt predicts that fold's validation images (with TTA); per image
and class, the area and truth intersection of every (threshold, min_component) of the grid
are streamed to folds/fold<k>/oof/ as the batches come, never the probabilities:
    stats.npy     (N, 4, K, M, 2) int32   area, intersection (postprocess.grid_counts)
    truth.npy     (N, 4) int32            truth areas
    examples.npz  threshold levels (uint8) of a few images, for the report's overlays
    meta.json     ImageIds in row order, the grid, TTA views, the checkpoint
`tune`: reads those files, chooses each class's post-processing (search.search), and writes
postprocess.json and the CV report (Markdown and PNG plots).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from competition import data as data_lib
from competition.errors import InputError
from competition.files import atomic_dir, write_json
from competition.images import read_image
from competition.infer import OneBehind, batches, device, load_ensemble
from competition.labels import CLASSES, by_image, load_train, masks
from competition.postprocess import clean, grid_counts, threshold_levels
from competition.search import MIN_AREAS, MIN_COMPONENTS, THRESHOLDS, search
from competition.train import amp_dtype, split


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


def fold_stats(data: Path, image_ids: list[str], encoded: dict, ckpt: Path, views, out: Path,
               device: torch.device, batch_size: int, workers: int, desc: str,
               thresholds=THRESHOLDS, min_components=MIN_COMPONENTS) -> None:
    """Predict `image_ids` with `ckpt` and stream their grid statistics into folder `out`
    (written under a temporary name, renamed when complete)."""
    ensemble = load_ensemble([ckpt], device)
    dataset = data_lib.SteelDataset(data / "train_images", image_ids, encoded)
    loader = data_lib.loader(dataset, batch_size, workers, pin_memory=device.type == "cuda")
    n, k, m = len(image_ids), len(thresholds), len(min_components)
    picks, examples = set(example_picks(image_ids, encoded)), {}
    components = np.asarray(min_components, np.int64)

    with atomic_dir(out) as tmp:
        with NpyStream(tmp / "stats.npy", (n, len(CLASSES), k, m, 2), np.int32) as stats, \
                NpyStream(tmp / "truth.npy", (n, len(CLASSES)), np.int32) as truth, \
                OneBehind() as cpu:
            def consume(levels: np.ndarray, truth_masks: np.ndarray, index: list[int]) -> None:
                stats.write(grid_counts(levels, truth_masks, k, components))
                truth.write(truth_masks.sum(axis=(2, 3)))
                examples.update({i: levels[j].copy() for j, i in enumerate(index) if i in picks})

            # the device's autocast dtype; amp "off" in the config: fp32 (infer.model_dtype)
            for (_, truth_masks, index), probs in batches(
                    ensemble, loader, views, device, amp_dtype("auto", device), desc):
                levels = threshold_levels(probs, thresholds).cpu().numpy()
                cpu.submit(consume, levels, truth_masks.numpy(), index.tolist())
        np.savez_compressed(tmp / "examples.npz",
                            image_ids=np.array([image_ids[i] for i in sorted(examples)]),
                            levels=np.stack([examples[i] for i in sorted(examples)])
                            if examples else np.zeros((0, len(CLASSES), 1, 1), np.uint8))
        write_json(tmp / "meta.json", {
            "image_ids": list(image_ids), "thresholds": list(thresholds),
            "min_components": list(min_components), "tta": list(views),
            "checkpoint": str(ckpt), "data": str(data)})


def parse_folds(text: str | None, folds_csv: Path) -> list[int]:
    """'0,2' -> [0, 2]; None -> every fold of folds.csv."""
    if text is None:
        if not folds_csv.is_file():
            raise InputError(f"{folds_csv}: folds file not found; make it with `bash run.sh folds`")
        return sorted(set(pd.read_csv(folds_csv).fold.astype(int)))
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise InputError(f"--folds {text}: expected comma-separated fold numbers, e.g. 0,1,2") from None


def fold_runs(runs: Path, folds_csv: Path, folds: list[int],
              image_ids: list[str]) -> list[tuple[int, list[str], Path]]:
    """(fold, its validation ImageIds, runs/fold<k>/best.pt) of each fold; every checkpoint
    must exist (checked before any is loaded)."""
    ckpts = [runs / f"fold{k}" / "best.pt" for k in folds]
    missing = [str(p) for p in ckpts if not p.is_file()]
    if missing:
        raise InputError(f"{missing[0]}: checkpoint not found ({len(missing)} of {len(ckpts)} "
                         "folds missing); train it with `bash run.sh fold<K>` or pass --folds")
    return [(k, split(folds_csv, k, image_ids)[1], ckpt) for k, ckpt in zip(folds, ckpts)]


def run(data: Path, runs: Path, folds_csv: Path, folds: list[int], views, batch_size: int,
        workers: int) -> None:
    """OOF statistics of every fold in `folds` into runs/fold<k>/oof/."""
    image_ids, labels = load_train(data)
    encoded = by_image(labels)
    for k, val_ids, ckpt in fold_runs(runs, folds_csv, folds, image_ids):
        fold_stats(data, val_ids, encoded, ckpt, views, runs / f"fold{k}" / "oof", device(),
                   batch_size, workers, desc=f"oof fold {k}")
        print(f"fold {k}: {len(val_ids)} validation images -> {runs / f'fold{k}' / 'oof'}; "
              f"peak memory of this process so far {peak_rss_mib():.0f} MiB")


def peak_rss_mib() -> float:
    """The peak resident memory of this process (not its loader workers), in MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_stats(runs: Path, folds: list[int]) -> dict:
    """The OOF files of `folds`, concatenated: stats (N, 4, K, M, 2), truth (N, 4), fold (N,),
    and each fold's meta. Folds scored on another grid or TTA are an error."""
    parts = []
    for k in folds:
        folder = runs / f"fold{k}" / "oof"
        if not (folder / "meta.json").is_file():
            raise InputError(f"{folder}: no OOF statistics; run `python -m competition oof` "
                             f"for fold {k} first")
        meta = json.loads((folder / "meta.json").read_text())
        parts.append((k, meta, np.load(folder / "stats.npy", mmap_mode="r"),
                      np.load(folder / "truth.npy")))
    first = parts[0][1]
    for k, meta, _, _ in parts[1:]:
        for key in ("thresholds", "min_components", "tta"):
            if meta[key] != first[key]:
                raise InputError(f"{runs / f'fold{k}' / 'oof'}: {key} {meta[key]} differs from "
                                 f"fold {parts[0][0]}'s {first[key]}; recompute its OOF")
    return {
        "stats": np.concatenate([p[2] for p in parts]),
        "truth": np.concatenate([p[3] for p in parts]),
        "fold": np.concatenate([np.full(len(p[3]), p[0]) for p in parts]),
        "metas": {p[0]: p[1] for p in parts},
    }


def overlays(runs: Path, folds: list[int], data: Path, result: dict, limit: int = 5) -> list[dict]:
    """Report examples: the stored levels of a few OOF images turned into masks with the
    chosen post-processing, beside the image and its truth. One per class, then one
    defect-free, taken from the folds in order."""
    encoded = by_image(load_train(data, check_images=False)[1])
    thresholds = result["grid"]["threshold"]
    chosen = [result["classes"][str(c)] for c in CLASSES]
    level_index = np.array([thresholds.index(v["threshold"]) for v in chosen])
    candidates = []
    for k in folds:
        stored = np.load(runs / f"fold{k}" / "oof" / "examples.npz")
        candidates += [(k, str(i), lv) for i, lv in zip(stored["image_ids"], stored["levels"])]
    wanted, out = [*CLASSES, 0], []  # 0: defect-free
    for k, image_id, levels in candidates:
        present = set(encoded.get(image_id, {})) or {0}
        hit = next((w for w in wanted if w in present), None)
        if hit is None or len(out) >= limit:
            continue
        wanted.remove(hit)
        pred = (levels > level_index[:, None, None]).astype(np.uint8)[None]
        clean(pred, [v["min_component"] for v in chosen], [v["min_area"] for v in chosen])
        out.append({"image_id": image_id, "fold": k,
                    "image": read_image(data / "train_images" / image_id),
                    "truth": masks(encoded.get(image_id, {})).astype(bool),
                    "pred": pred[0].astype(bool)})
    return out


def tune(runs: Path, folds: list[int], out: Path, min_areas=None,
         data: Path | None = None) -> dict:
    """Search the OOF statistics of `folds`; write out/postprocess.json and out/cv_report/."""
    from competition.report import write_report

    st = load_stats(runs, folds)
    meta = st["metas"][folds[0]]
    grid = {"threshold": meta["thresholds"], "min_component": meta["min_components"],
            "min_area": sorted(set(int(a) for a in min_areas or MIN_AREAS))}
    result, tables = search(st["stats"], st["truth"], st["fold"], grid)
    data = Path(data or meta["data"])
    result = {"version": 1, "connectivity": 8, **result, "tta": meta["tta"],
              "checkpoints": [st["metas"][k]["checkpoint"] for k in folds], "data": str(data)}
    examples = overlays(runs, folds, data, result)
    with atomic_dir(out / "cv_report") as tmp:
        write_report(tmp, result, tables, examples)
    write_json(out / "postprocess.json", result)
    return result
