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

`train --pseudo OUT --pseudo-share S` mixes it into training (train/pseudo_mix.py, which
reads OUT from disk: training never imports this module).
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from competition.errors import InputError
from competition.files import atomic_dir, write_csv, write_json
from competition.data import provenance
from competition.data.images import check_image, list_images
from competition.data.labels import CLASSES, CURRENT

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
            where: str = "postprocess.json", source: str = "auto",
            device_name: str = "auto") -> Predictions:
    """Run the ensemble on every test image as `predict` does (predict.load_models,
    predict.encode), keeping the image-level signals beside the masks' RLE. `source` is
    resolved (resolve_source) once the models are loaded, before any image is predicted."""
    from competition.infer import predict as predict_lib
    from competition.infer.gates import check_signals
    from competition.model.forward import device

    dev = device(device_name)
    image_ids = test_images(data)
    ensemble, cls = predict_lib.load_models(checkpoints, params, dev, weights, classifiers,
                                            classifier_weights, where)
    source = resolve_source(source, cls is not None, ensemble.has_heads)
    shared, warning = provenance.common([(p, r) for e in (ensemble, cls) if e is not None
                                         for p, r in zip(e.paths, e.splits)])
    if warning:
        print(warning, flush=True)
    encoded, signals = {}, {}
    predict_lib.encode(ensemble, data / "test_images", image_ids, params, views, dev,
                       batch_size, workers, "pseudo", encoded, classifiers=cls, signals=signals)
    check_signals(signals, len(image_ids), "pseudo: the ensemble's image-level signals")
    models = {"segmenters": [{"checkpoint": str(p), "weight": ensemble.weight(i)}
                             for i, p in enumerate(ensemble.paths)],
              "classifiers": [{"checkpoint": str(p), "weight": cls.weight(i)}
                              for i, p in enumerate(cls.paths)] if cls else [],
              provenance.KEY: shared}
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
         classifier_weights=None, where: str = "postprocess.json",
         device_name: str = "auto") -> dict:
    """The pseudo command: predict, select by `rule`, write the dataset; returns its summary.
    Nothing is written when no image passes (an empty dataset trains nothing)."""
    check_rule(rule)
    check_out(out, data)
    pred = predict(data, checkpoints, params, views, batch_size, workers, weights,
                   classifiers, classifier_weights, where, rule.source, device_name)
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
