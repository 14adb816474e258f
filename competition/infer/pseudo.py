"""Pseudo-labels: an ensemble's confident test predictions as a training set of their own.

`make` (python -m competition pseudo): the ensemble predicts DATA/test_images with the
machinery of `predict` (infer.batches, predict.gated_masks, the post-processing of
postprocess.json: the very masks predict would write) and keeps only the images where every
class is confidently present or confidently absent:

    present  p > high   and the post-processed mask is non-empty
    absent   p < low    and the post-processed mask is empty

p is an image-level probability (`source`): the classifiers' mean (cls, 1st place's rule),
else the segmenters' auxiliary heads (aux), else the largest pixel probability of the
averaged mask (maxprob). A class with low <= p <= high, or whose mask disagrees with p, drops
the whole image. The kept images become a dataset in the Kaggle layout, written under a
temporary name and renamed into place:

    OUT/train.csv       ImageId,ClassId,EncodedPixels: one row per present defect
    OUT/train_images/   symbolic links to DATA/test_images/<id> (hard links, then copies,
                        where the file system has no symbolic links)
    OUT/summary.json    images kept, per class, why the others were dropped, the models

`train --pseudo OUT --pseudo-share S` mixes it in: every training batch of B holds
k = pseudo_per_batch(B, S) pseudo-labelled images and B - k of the fold's training images
(MixedSampler); an epoch is still one pass over the fold's training images. Validation, the
folds and the OOF statistics read the original dataset alone.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from torch.utils.data import Dataset, Sampler

from competition.errors import InputError
from competition.files import atomic_dir, write_csv, write_json
from competition.data.images import check_image, list_images
from competition.data.labels import CLASSES, CURRENT, by_image, load_train

SOURCES = ("cls", "aux", "maxprob")  # the image-level probability the rule reads


@dataclass(frozen=True)
class Rule:
    """When a class of an image counts as confidently present or absent."""
    high: float = 0.95  # present above this (1st place's classifier rule)
    low: float = 0.05  # absent below this
    source: str = "auto"  # cls | aux | maxprob; auto: cls with classifiers, else aux where a
    # segmenter has an image-level head, else maxprob


def check_rule(rule: Rule) -> None:
    """0 <= low < high <= 1 (a NaN fails), and a known source."""
    if not 0.0 <= rule.low < rule.high <= 1.0:
        raise InputError(f"--confident-low {rule.low} --confident-high {rule.high}: need "
                         "0 <= low < high <= 1")
    if rule.source not in ("auto", *SOURCES):
        raise InputError(f"--source {rule.source}: valid: auto, {', '.join(SOURCES)}")


def resolve_source(source: str, has_cls: bool, has_aux: bool) -> str:
    """The source the rule reads: `source`, or for auto the first of cls, aux, maxprob that
    the models given have. A source the models lack is an InputError."""
    if source == "auto":
        return "cls" if has_cls else "aux" if has_aux else "maxprob"
    if source == "cls" and not has_cls:
        raise InputError("--source cls: no classifiers given (--classifiers)")
    if source == "aux" and not has_aux:
        raise InputError("--source aux: none of the segmenters has an image-level head "
                         "(trained with --cls-weight)")
    return source


def select(probs: np.ndarray, nonempty: np.ndarray, high: float, low: float) -> dict:
    """(N, 4) image-level probabilities and (N, 4) bool "the post-processed mask is not
    empty" -> {"present", "absent", "agree": (N, 4) bool, "kept": (N,) bool}: present is
    p > high, absent p < low, agree that the mask says the same (non-empty exactly where
    present), kept that every class of the image agrees. A NaN is neither present nor
    absent: its image is dropped (and `make` refuses non-finite signals before this)."""
    probs, nonempty = np.asarray(probs), np.asarray(nonempty, bool)
    present, absent = probs > high, probs < low
    agree = (present & nonempty) | (absent & ~nonempty)
    return {"present": present, "absent": absent, "agree": agree, "kept": agree.all(axis=1)}


def summarize(selection: dict) -> dict:
    """Counts of a `select` result: images, kept, kept per class (present in a kept image),
    kept defect-free, and per class the images dropped because p was between the
    thresholds (unsure) or the mask disagreed with a confident p (disagree). Classes are
    keyed "1".."4"."""
    kept, present = selection["kept"], selection["present"]
    confident = present | selection["absent"]

    def per_class(flags: np.ndarray) -> dict:
        return {str(c): int(flags[:, c - 1].sum()) for c in CLASSES}
    return {"images": int(len(kept)), "kept": int(kept.sum()),
            "kept_per_class": per_class(kept[:, None] & present),
            "kept_defect_free": int((kept & ~present.any(axis=1)).sum()),
            "unsure_per_class": per_class(~confident),
            "disagree_per_class": per_class(confident & ~selection["agree"])}


def describe(summary: dict) -> str:
    """summarize's counts as a few lines for the terminal."""
    n, kept = summary["images"], summary["kept"]
    lines = [f"kept {kept} of {n} test images ({100 * kept / max(n, 1):.1f}%): "
             f"{summary['kept_defect_free']} defect-free",
             f"{'class':>5} {'kept with it':>12} {'unsure':>7} {'disagree':>8}"]
    for c in map(str, CLASSES):
        lines.append(f"{c:>5} {summary['kept_per_class'][c]:12d} "
                     f"{summary['unsure_per_class'][c]:7d} {summary['disagree_per_class'][c]:8d}")
    return "\n".join(lines)


@dataclass
class Predictions:
    """An ensemble's test predictions: `encoded` (ImageId, ClassId) -> RLE of the
    post-processed mask ('' empty), `signals` {name: (N, 4) float32} rows in `image_ids`
    order, the source the rule reads, and the models' files."""
    image_ids: list[str]
    encoded: dict
    signals: dict
    source: str
    models: dict


def test_images(data: Path) -> list[str]:
    """Every image of DATA/test_images (sorted), each checked to be 1600x256."""
    folder = data / "test_images"
    image_ids = list_images(folder)
    if not image_ids:
        raise InputError(f"{folder}: no test images (.jpg/.png)")
    for image_id in image_ids:
        check_image(folder / image_id)
    return image_ids


def predict(data: Path, checkpoints: list[Path], params, views, batch_size: int, workers: int,
            weights=None, classifiers=(), classifier_weights=None,
            where: str = "postprocess.json", source: str = "auto") -> Predictions:
    """Run the ensemble on every test image as `predict` does (predict.load_models,
    predict.encode), keeping the image-level signals beside the masks' RLE. `source` is
    resolved (resolve_source) once the models are loaded, before any image is predicted."""
    from competition.infer import predict as predict_lib
    from competition.infer.gates import check_signals
    from competition.infer.ensemble import device

    image_ids = test_images(data)
    dev = device()
    ensemble, cls = predict_lib.load_models(checkpoints, params, dev, weights, classifiers,
                                            classifier_weights, where)
    source = resolve_source(source, cls is not None, ensemble.has_heads)
    encoded, signals = {}, {}
    predict_lib.encode(ensemble, data / "test_images", image_ids, params, views, dev,
                       batch_size, workers, "pseudo", encoded, classifiers=cls, signals=signals)
    check_signals(signals, len(image_ids), "pseudo: the ensemble's image-level signals")
    models = {"segmenters": [{"checkpoint": str(p), "weight": ensemble.weight(i)}
                             for i, p in enumerate(ensemble.paths)],
              "classifiers": [{"checkpoint": str(p), "weight": cls.weight(i)}
                              for i, p in enumerate(cls.paths)] if cls else []}
    return Predictions(image_ids, encoded, signals, source, models)


def nonempty(pred: Predictions) -> np.ndarray:
    """(N, 4) bool: the post-processed mask of (image, class) is not empty."""
    return np.array([[pred.encoded[(i, c)] != "" for c in CLASSES] for i in pred.image_ids])


def check_out(out: Path, data: Path) -> None:
    """`out` is replaced whole: never the dataset or a folder holding it, and never an
    existing folder that is not a pseudo-label dataset (one with summary.json)."""
    o, d = out.resolve(), data.resolve()
    if o == d or o in d.parents:
        raise InputError(f"--out {out}: would replace {data}, the dataset read; pick another "
                         "folder, e.g. input/pseudo")
    if out.exists() and not (out / "summary.json").is_file() and (
            not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out {out}: exists and is not a pseudo-label dataset (no "
                         "summary.json); nothing written: pick another folder or remove it")


LINKS = ("symlink", "hardlink", "copy")


def link(source: Path, target: Path, kind: str = "symlink") -> str:
    """Put `source` at `target`: a symbolic link to its absolute path, else (a file system
    without them) a hard link, else a copy; from `kind` on. Returns the kind made."""
    for k in LINKS[LINKS.index(kind):]:
        try:
            if k == "symlink":
                os.symlink(source.resolve(), target)
            elif k == "hardlink":
                os.link(source, target)
            else:
                shutil.copy2(source, target)
            return k
        except OSError:
            if k == "copy":
                raise
    raise AssertionError("unreachable")


def write_dataset(out: Path, data: Path, pred: Predictions, kept: np.ndarray,
                  summary: dict) -> str:
    """The kept images of `pred` as a dataset in the Kaggle layout at `out` (replaced whole,
    renamed into place when complete): train.csv (current layout, one row per present
    defect, images in test-set order, classes in order), train_images/ (links to
    DATA/test_images) and summary.json (`summary` and the kind of links). Returns that kind."""
    kept_ids = [i for i, k in zip(pred.image_ids, kept) if k]
    rows = [(i, c, pred.encoded[(i, c)]) for i in kept_ids for c in CLASSES
            if pred.encoded[(i, c)]]
    kind = "symlink"
    with atomic_dir(out) as tmp:
        (tmp / "train_images").mkdir()
        for image_id in kept_ids:
            kind = link(data / "test_images" / image_id, tmp / "train_images" / image_id, kind)
        write_csv(tmp / "train.csv", pd.DataFrame(rows, columns=list(CURRENT)))
        write_json(tmp / "summary.json", {**summary, "links": kind})
    return kind


def make(data: Path, checkpoints: list[Path], params, views, out: Path, rule: Rule,
         batch_size: int, workers: int, weights=None, classifiers=(),
         classifier_weights=None, where: str = "postprocess.json") -> dict:
    """The pseudo command: predict, select by `rule`, write the dataset; returns its summary.
    Nothing is written when no image passes (an empty dataset trains nothing)."""
    check_rule(rule)
    check_out(out, data)
    pred = predict(data, checkpoints, params, views, batch_size, workers, weights,
                   classifiers, classifier_weights, where, rule.source)
    source = pred.source
    selection = select(pred.signals[source], nonempty(pred), rule.high, rule.low)
    summary = {**summarize(selection),
               "rule": {"source": source, "high": rule.high, "low": rule.low,
                        "agree": "post-processed mask non-empty exactly where p > high"},
               "data": str(data), "postprocess": str(where), "tta": list(views), **pred.models}
    print(describe(summary) + f"\n(rule: {source} > {rule.high} present, < {rule.low} absent, "
          "the post-processed mask agreeing)")
    if not summary["kept"]:
        raise InputError(f"no test image of {data} has every class confidently present or "
                         f"absent ({source} outside [{rule.low}, {rule.high}] and the mask "
                         "agreeing): nothing written; widen --confident-low/--confident-high")
    summary["links"] = write_dataset(out, data, pred, selection["kept"], summary)
    return summary


# ---- training: the pseudo-labelled set mixed into every batch ----

@dataclass(frozen=True)
class PseudoSet:
    """A pseudo-labelled dataset read for training: its folder, ImageIds and masks."""
    folder: Path
    image_ids: list
    encoded: dict


def load(folder: str | Path, train_ids: list[str], data: Path) -> PseudoSet:
    """Read a pseudo-labelled dataset (load_train: train.csv of either layout, every image
    present and 1600x256). Its ImageIds must differ from every image of `data` (train and
    validation: `train_ids` is all of DATA/train_images), so that no pseudo-labelled image
    can be mistaken for one of the folds. Errors are one line starting with --pseudo."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--pseudo {folder}: no such folder (make it with `python -m "
                         "competition pseudo`)")
    try:
        image_ids, labels = load_train(folder)
    except InputError as e:
        raise InputError(f"--pseudo: {e}") from None
    both = sorted(set(image_ids) & set(train_ids))
    if both:
        raise InputError(f"--pseudo: {folder / 'train_images' / both[0]}: the same ImageId is "
                         f"an image of {data / 'train_images'} ({len(both)} such); "
                         "pseudo-labelled images must have names of their own")
    return PseudoSet(folder, image_ids, by_image(labels))


class Concat(Dataset):
    """Datasets of (image, masks, i) items one after the other: item i of the whole is item
    i - offset of its part, returned with i. Keys may be (epoch, position, i), as
    data.SteelDataset takes them: the augmentation is seeded from (epoch, position) alone,
    whichever part the image comes from."""

    def __init__(self, parts: list):
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, key):
        epoch, position, i = key if isinstance(key, tuple) else (0, key, key)
        part = int(np.searchsorted(self.offsets, i, side="right")) - 1
        image, masks, _ = self.parts[part][(epoch, position, i - int(self.offsets[part]))]
        return image, masks, i


class MixedSampler(Sampler):
    """Keys (epoch, position, index) for a Concat of [labelled, pseudo-labelled] whose every
    run of `batch_size` keys (a batch of a DataLoader with drop_last) holds batch_size - k
    labelled items, in the order `base` gives them (a per-epoch sampler of this rank's
    shard: data.train_sampler's DistributedSampler or WeightedEpochSampler), then k
    pseudo-labelled ones (indices offset + j).

    An epoch is one pass of `base`: len(base) // (batch_size - k) batches. The pseudo-labelled
    items are drawn in one global order per epoch, from (seed, epoch) alone: random
    permutations of the set, one after the other, as long as all ranks need; rank r takes
    every world-th from r, so ranks draw disjoint items as long as the set is larger than
    what an epoch uses (else it is cycled: an image comes back only after the whole set).
    Positions are global too (rank + j * world): every item of an epoch has its own."""

    def __init__(self, base, n_pseudo: int, offset: int, batch_size: int, k: int, seed: int,
                 rank: int = 0, world: int = 1):
        if not 1 <= k < batch_size or n_pseudo < 1:
            raise ValueError(f"k {k} of batch_size {batch_size}, {n_pseudo} pseudo items")
        self.base, self.n_pseudo, self.offset = base, n_pseudo, offset
        self.batch_size, self.k, self.seed = batch_size, k, seed
        self.rank, self.world, self.epoch = rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.base.set_epoch(epoch)

    def batches(self) -> int:
        return len(self.base) // (self.batch_size - self.k)

    def pseudo_order(self, per_rank: int) -> np.ndarray:
        """This rank's `per_rank` pseudo-labelled indices (0-based in the pseudo set)."""
        rng = np.random.default_rng([self.seed, self.epoch, 1])  # [seed, epoch]: the base's
        total = per_rank * self.world
        if total == 0:
            return np.zeros(0, np.int64)
        cycles = -(-total // self.n_pseudo)
        order = np.concatenate([rng.permutation(self.n_pseudo) for _ in range(cycles)])
        return order[:total][self.rank::self.world]

    def __iter__(self):
        m, k = self.batch_size - self.k, self.k
        n = self.batches()
        labelled = list(self.base)[:n * m]
        pseudo = self.pseudo_order(n * k) + self.offset
        j = 0
        for b in range(n):
            for i in [*labelled[b * m:(b + 1) * m], *pseudo[b * k:(b + 1) * k]]:
                yield self.epoch, self.rank + j * self.world, int(i)
                j += 1

    def __len__(self) -> int:
        return self.batches() * self.batch_size


def mix(train_set, base_sampler, pseudo: PseudoSet, transform, config, rank: int = 0,
        world: int = 1) -> tuple[Concat, MixedSampler]:
    """The training set and sampler with `pseudo` mixed in: Concat([train_set, pseudo's
    images with `transform`]) and a MixedSampler of config.batch_size holding
    config.pseudo_per_batch pseudo-labelled images per batch."""
    from competition.model.config import pseudo_per_batch
    from competition.data.datasets import SteelDataset

    extra = SteelDataset(pseudo.folder / "train_images", pseudo.image_ids, pseudo.encoded,
                         transform, config.seed)
    k = pseudo_per_batch(config.batch_size, config.pseudo_share)
    sampler = MixedSampler(base_sampler, len(extra), len(train_set), config.batch_size, k,
                           config.seed, rank, world)
    return Concat([train_set, extra]), sampler
