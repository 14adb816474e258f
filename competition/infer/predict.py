"""Submissions: the fold ensemble with TTA, the tuned post-processing, the numba RLE.

`predict_test` writes the test submission following sample_submission.csv; `predict_oof`
predicts each fold's validation images with that fold's model only and writes them in the
train layout, so `python -m competition score --truth train.csv` gives the offline CV.
Both write through submission.write: validated under a temporary name, then renamed.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from competition.data import datasets as data_lib
from competition.data import submission
from competition.errors import InputError
from competition.infer.gates import decide
from competition.data.images import check_image, list_images
from competition.infer.ensemble import OneBehind, batches, load_ensembles
from competition.model.forward import device
from competition.data.labels import CLASSES, CURRENT, Sample, load_train, read_sample
from competition.data.postprocess import clean, encode_masks
from competition.infer.search import Params
from competition.model.precision import amp_dtype


def project(elapsed: float, done: int, total: int, warm: tuple[float, int]) -> float:
    """Seconds a run of `total` images takes in all: `elapsed` so far, plus the images left
    at the rate measured since the warm-up point `warm` = (seconds, images done then)."""
    rate = (done - warm[1]) / max(elapsed - warm[0], 1e-9)
    return elapsed + (total - done) / rate


class TimeLimit:
    """Stops a prediction that cannot finish in `limit` seconds, as soon as its rate is known.

    The time counts from `start` (a reading of `clock`, time.perf_counter by default; None:
    now): the command's start, so that loading the models, which Kaggle's hour counts too,
    counts. The first batch is start-up (loader workers, cuDNN autotuning), so the rate is
    measured from its end; from the third batch on, every batch projects the whole run
    (`project`). The first projection is printed; a projection past the limit stops the run
    with one line, before anything is written (Kaggle kills a kernel at 60 minutes with no
    message)."""

    def __init__(self, limit: float, total: int, clock=None, start: float | None = None):
        self.limit, self.total = limit, total
        self.clock = clock or time.perf_counter  # looked up now: the command's clock
        self.start = self.clock() if start is None else start
        self.warm, self.batches, self.said = None, 0, False

    def update(self, done: int) -> None:
        """Call after each batch with the number of images done so far."""
        elapsed = self.clock() - self.start
        self.batches += 1
        if self.batches == 1:
            self.warm = (elapsed, done)
        if self.batches < 3 or done >= self.total:
            return
        projected = project(elapsed, done, self.total, self.warm)
        rate = (done - self.warm[1]) / max(elapsed - self.warm[0], 1e-9)
        if not self.said:
            self.said = True
            print(f"time: {rate:.2f} images/s after {done} of {self.total} images; projected "
                  f"{projected / 60:.1f} min for all (limit {self.limit / 60:.1f} min)")
        if projected > self.limit:
            raise InputError(
                f"--time-limit {self.limit / 60:.1f} min: after {done} of {self.total} images "
                f"({rate:.2f} images/s) the whole run projects to {projected / 60:.1f} min; "
                "stopped, nothing written (use fewer models or TTA views)")


def gated_masks(pred, params: Params) -> torch.Tensor:
    """An Output (infer.predict_batch) -> (N, 4, H, W) uint8 masks on its device: each
    class's pixels above its threshold (per image where the class's gate scales it), emptied
    where its gate says so. The comparisons are those of the OOF statistics: `probs > t`
    with t a Python float of the grid, the gate's signal against its value, both float32
    (gates.keep, as the search's bins compare)."""
    thr, kept = decide(params.gate, params.threshold, params.thresholds, pred.signals())
    probs = pred.masks
    per_image = [params.gate[c]["kind"] == "scale" for c in range(probs.shape[1])]
    masks = torch.stack([
        torch.stack([probs[n, c] > float(thr[n, c]) for n in range(len(probs))])
        if per_image[c] else probs[:, c] > float(params.threshold[c])
        for c in range(probs.shape[1])], 1)
    if not kept.all():
        masks &= torch.from_numpy(kept).to(masks.device)[:, :, None, None]
    return masks.to(torch.uint8)


def check_sources(params: Params, ensemble, classifiers, where: str) -> None:
    """The image-level probabilities the gates read must come from the models given."""
    if "cls" in params.needs() and not classifiers:
        raise InputError(f"{where} gates a class on the classifiers' probabilities: pass the "
                         "classifier checkpoints with --classifiers")
    if "aux" in params.needs() and not ensemble.has_heads:
        raise InputError(f"{where} gates a class on the segmenters' image-level heads, and "
                         "none of the segmenters given has one (trained with --cls-weight)")


def load_models(checkpoints: list[Path], params: Params, dev, weights=None, classifiers=(),
                classifier_weights=None, where: str = "postprocess.json", compile: bool = False):
    """(the segmenters' Ensemble, the classifiers' Ensemble or None) on `dev`, checked
    against the sources the gates of `params` read; `compile`: torch.compile'd."""
    ensemble, cls = load_ensembles(checkpoints, dev, weights, classifiers, classifier_weights,
                                   compile)
    check_sources(params, ensemble, cls, where)
    return ensemble, cls


def encode(ensemble, folder: Path, image_ids: list[str], params: Params, views, dev,
           batch_size: int, workers: int, desc: str, out: dict,
           limit: TimeLimit | None = None, classifiers=None,
           signals: dict | None = None, images=None) -> None:
    """Predict `image_ids` of `folder` and put each (ImageId, ClassId)'s RLE into `out`.
    Thresholds and gates are applied on the device (gated_masks); component removal, the
    min-area step and the RLE run on the CPU for batch i while the device computes batch
    i + 1. `limit` is told the images done after every batch. `signals`, where given, gets
    {name: (len(image_ids), 4) float32} of the image-level signals (Output.signals), rows in
    `image_ids` order (NaN where a row was never predicted). `images`: the folder's
    decoded-image cache (cache.ImageCache), read instead of decoding."""
    dataset = data_lib.ImageDataset(folder, image_ids, images)
    loader = data_lib.loader(dataset, batch_size, workers, pin_memory=dev.type == "cuda")

    def finish(masks: np.ndarray, index: list[int]) -> None:
        areas = clean(masks, params.min_component, params.min_area)
        for i, row in zip(index, encode_masks(masks, areas)):
            out.update({(image_ids[i], c): r for c, r in zip(CLASSES, row)})

    # the device's autocast dtype; a model whose config says amp "off" runs in fp32 (model_dtype)
    done = 0
    with OneBehind() as cpu:
        for (_, index), pred in batches(ensemble, loader, views, dev, amp_dtype("auto", dev),
                                        desc, classifiers):
            cpu.submit(finish, gated_masks(pred, params).cpu().numpy(), index.tolist())
            if signals is not None:
                for name, values in pred.signals().items():
                    signals.setdefault(name, np.full((len(image_ids), len(CLASSES)), np.nan,
                                                     np.float32))[index.numpy()] = values
            done += len(index)
            if limit is not None:
                limit.update(done)


def test_sample(data: Path, sample_path: Path | None) -> tuple[Sample, list[str]]:
    """The rows to write and the test images to predict (in the sample's order). Every
    image must exist and be 1600x256 (checked from the headers, before any model runs)."""
    folder = data / "test_images"
    found = list_images(folder)
    if not found:
        raise InputError(f"{folder}: no test images (.jpg/.png)")
    sample_path = sample_path or data / "sample_submission.csv"
    if sample_path.is_file():
        sample = read_sample(sample_path)
    else:  # no sample: every image of the folder, current layout
        print(f"warning: {sample_path} not found: writing rows for the {len(found)} images "
              f"of {folder} in the {','.join(CURRENT)} layout")
        pairs = pd.DataFrame([(i, c) for i in found for c in CLASSES],
                             columns=["ImageId", "ClassId"])
        sample = Sample(CURRENT, "current", pairs)
    image_ids = list(dict.fromkeys(sample.pairs.ImageId))
    missing = sorted(set(image_ids) - set(found))
    if missing:
        raise InputError(f"{sample_path}: no image file {folder / missing[0]} "
                         f"({len(missing)} of {len(image_ids)} missing)")
    for image_id in image_ids:
        check_image(folder / image_id)
    return sample, image_ids


def report_rate(n_images: int, n_models: int, views, seconds: float) -> None:
    print(f"predicted {n_images} images x {n_models} model(s) x {len(views)} view(s) "
          f"({','.join(views)}) in {seconds:.1f} s: {n_images / seconds:.1f} images/s, "
          f"{n_images * n_models * len(views) / seconds:.1f} forward images/s")


def predict_test(data: Path, checkpoints: list[Path], params: Params, views, out: Path,
                 batch_size: int, workers: int, sample_path: Path | None = None,
                 time_limit: float | None = None, weights=None, classifiers=(),
                 classifier_weights=None, where: str = "postprocess.json", images=None,
                 compile: bool = False, started: float | None = None,
                 device_name: str = "auto") -> pd.DataFrame:
    """The segmenters `checkpoints` (weighted by `weights`, default equal) and the
    `classifiers` predict the test images. time_limit: seconds the prediction may take
    (TimeLimit), counted from `started` (a time.perf_counter() reading: the command's start,
    so that reading the inputs and loading the models count; None: from this call); None:
    no limit. `images`: the decoded-image cache of test_images or None; `compile`:
    torch.compile the models; `device_name`: --device (auto | cuda | cpu)."""
    started = time.perf_counter() if started is None else started
    dev = device(device_name)
    sample, image_ids = test_sample(data, sample_path)
    ensemble, cls = load_models(checkpoints, params, dev, weights, classifiers,
                                classifier_weights, where, compile)
    encoded: dict = {}
    start = time.perf_counter()
    limit = None if time_limit is None else TimeLimit(time_limit, len(image_ids),
                                                      start=started)
    encode(ensemble, data / "test_images", image_ids, params, views, dev, batch_size, workers,
           "predict", encoded, limit, cls, images=images)
    report_rate(len(image_ids), len(checkpoints) + len(classifiers), views,
                time.perf_counter() - start)
    return submission.write(out, sample, encoded)


def predict_oof(data: Path, runs, folds_csv: Path, folds: list[int], params: Params,
                views, out: Path, batch_size: int, workers: int,
                where: str = "postprocess.json", images=None,
                compile: bool = False, device_name: str = "auto") -> pd.DataFrame:
    """Each fold's validation images predicted by that fold's models alone: runs is an
    oof.Runs (or one run folder), averaged as `oof` averaged them. `images`: the
    decoded-image cache of train_images or None; `compile`: torch.compile the models;
    `device_name`: --device (auto | cuda | cpu)."""
    from competition.infer.oof import as_runs, fold_runs

    dev = device(device_name)
    image_ids, _ = load_train(data)
    runs = as_runs(runs)
    todo = fold_runs(runs, folds_csv, folds, image_ids)
    ensembles = [load_models(seg, params, dev, list(runs.weights) or None, cls,
                             list(runs.classifier_weights) or None, where, compile)
                 for _, _, seg, cls in todo]
    encoded: dict = {}
    start = time.perf_counter()
    for (k, val_ids, _, _), (ensemble, cls) in zip(todo, ensembles):
        encode(ensemble, data / "train_images", val_ids, params, views, dev, batch_size,
               workers, f"oof fold {k}", encoded, classifiers=cls, images=images)
    n_models = len(runs.segmenters) + len(runs.classifiers)
    report_rate(sum(len(ids) for _, ids, _, _ in todo), n_models, views,
                time.perf_counter() - start)
    pairs = pd.DataFrame([(i, c) for _, ids, _, _ in todo for i in ids for c in CLASSES],
                         columns=["ImageId", "ClassId"])
    return submission.write(out, Sample(CURRENT, "current", pairs), encoded)
