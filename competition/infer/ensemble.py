"""Inference: a fold ensemble with flip TTA -> averaged sigmoid probabilities, batch by batch.

Each batch is decoded once (loader workers), sent to the device as uint8, normalised there,
and every TTA view of it goes through every model in one forward per model; the flips are
undone on the probabilities before they are averaged. Nothing is kept between batches, so
memory does not grow with the number of images.

Mixed precision never passes NaN on: a forward whose logits hold a NaN or an inf (an fp16
overflow, e.g. of weights trained in bf16 run on a T4) is recomputed in fp32
(`forward_checked`), and a model that is non-finite in fp32 too is an error naming its file.
"""
from __future__ import annotations

import glob
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from competition.data import provenance
from competition.model import checkpoint
from competition.data import datasets as data_lib
from competition.errors import InputError
from competition.model import forward
from competition.model.forward import (NonFiniteLogits, dtype_name, forward_checked,
                                       model_dtype)
from competition.model.networks import split_output
from competition.progress import progress

# TTA view -> the image axes it flips, of (N, C, H, W). A flip is its own inverse.
TTA = {"none": (), "hflip": (3,), "vflip": (2,), "hvflip": (2, 3)}


def parse_tta(text: str | list, source: str = "--tta") -> tuple[str, ...]:
    """'none,hflip' -> ('none', 'hflip'); an unknown or repeated view is an InputError whose
    message starts with `source` (the option, or the file the views came from)."""
    views = tuple(v.strip() for v in text.split(",")) if isinstance(text, str) else tuple(text)
    unknown = [v for v in views if v not in TTA]
    if unknown or not views:
        raise InputError(f"{source} {','.join(views)}: unknown view "
                         f"{unknown[0] if unknown else ''!r}; valid: {', '.join(TTA)} "
                         "(comma-separated)")
    if len(set(views)) != len(views):
        raise InputError(f"{source} {','.join(views)}: a view is repeated")
    return views


def flip(x: torch.Tensor, view: str) -> torch.Tensor:
    return x.flip(TTA[view]) if TTA[view] else x


@dataclass
class Ensemble:
    """Models in eval mode on one device, with their configs, the checkpoint files they came
    from (named in errors; empty for models built in memory) and their weights in the average
    (empty: equal). Segmenters may differ in architecture, encoder, crop size and output
    stride: each predicts full-size (N, 4, 256, 1600) probabilities, which are averaged."""
    models: list
    configs: list
    paths: list = field(default_factory=list)
    weights: list = field(default_factory=list)
    splits: list = field(default_factory=list)  # each checkpoint's record (provenance.py)

    def weight(self, i: int) -> float:
        return float(self.weights[i]) if self.weights else 1.0

    @property
    def has_heads(self) -> bool:
        """Whether any model has an image-level head (trained with cls_weight > 0)."""
        return any(c.cls_weight > 0 for c in self.configs)


WEIGHTS_OPTION = {"--checkpoints": "--weights", "--classifiers": "--classifier-weights"}


def checkpoint_paths(pattern: str, weights: str | None = None,
                     option: str = "--checkpoints") -> tuple[list[Path], list[float]]:
    """A glob ('folds/fold*/best.pt') or comma-separated globs -> sorted existing files and
    their weights. `weights`: one number per comma-separated part (a run), shared equally by
    the files it matches, so a run of five folds weighs what a run of one does; None: every
    file 1 (the plain mean over files)."""
    parts = [part.strip() for part in pattern.split(",") if part.strip()]
    per_part = [1.0] * len(parts)
    if weights is not None:
        named = WEIGHTS_OPTION[option]
        try:
            per_part = [float(w) for w in weights.split(",")]
        except ValueError:
            raise InputError(f"{named} {weights}: expected comma-separated numbers") from None
        if len(per_part) != len(parts) or not all(w > 0 for w in per_part):
            raise InputError(f"{named} {weights}: needs one positive weight per part of "
                             f"{option} ({len(parts)})")
    paths, out = [], []
    for part, w in zip(parts, per_part):
        found = sorted(glob.glob(part))
        if not found:
            raise InputError(f"{option} {part}: no such checkpoint file "
                             "(train folds first: bash run.sh fold0 ...)")
        paths.extend(Path(p) for p in found)
        out.extend([w / len(found) if weights is not None else 1.0] * len(found))
    return paths, out


ROLE = {"segment": ("segmenter", "--checkpoints"), "classify": ("classifier", "--classifiers")}


def load_ensemble(paths: list[Path], device: torch.device, weights: list[float] | None = None,
                  task: str = "segment", compile: bool = False) -> Ensemble:
    """Load every checkpoint (EMA weights where kept). Each must be of `task` (a classifier
    among the segmenters, or the reverse, is an error naming the option it belongs to).
    `compile`: each model torch.compile'd (model.compile_model), compiled at its first batch."""
    from competition.model.networks import compile_model

    models, configs, splits = [], [], []
    for path in paths:
        model, config, split = checkpoint.model_and_split(path, device)
        if config.task != task:
            role, option = ROLE[config.task]
            raise InputError(f"{path}: a {role} (task {config.task}) among the {ROLE[task][0]}s;"
                             f" pass it with {option}")
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        models.append(compile_model(model, device) if compile else model)
        configs.append(config)
        splits.append(split)
    return Ensemble(models, configs, list(paths), list(weights or []), splits)


def load_ensembles(segmenters: list[Path], device: torch.device, weights=None, classifiers=(),
                   classifier_weights=None, compile: bool = False):
    """(the segmenters' Ensemble, the classifiers' Ensemble or None where there are none):
    what oof and predict average, each loaded by load_ensemble."""
    cls = (load_ensemble(list(classifiers), device, classifier_weights, "classify", compile)
           if classifiers else None)
    return load_ensemble(segmenters, device, weights, compile=compile), cls


def check_splits(ensembles, expected: dict, what=("fold", "split", "dataset")) -> list[str]:
    """Every model of `ensembles` (Ensembles or None) against the split a stage uses
    (provenance.check): a difference is refused; the warning lines of models that record
    none are returned, one per model."""
    return [said for ensemble in ensembles if ensemble is not None
            for path, split in zip(ensemble.paths, ensemble.splits)
            if (said := provenance.check(path, split, expected, what))]


@dataclass
class Output:
    """What an ensemble predicts for a batch of N images, on the device, float32: `masks`
    (N, 4, H, W) the segmenters' weighted mean probability over models and views; `maxprob`
    (N, 4) its maximum over the pixels; `aux` (N, 4) the weighted mean of the image-level
    heads of the segmenters that have one; `cls` (N, 4) the classifiers' weighted mean
    (None where no model gives it)."""
    masks: torch.Tensor
    maxprob: torch.Tensor
    aux: torch.Tensor | None = None
    cls: torch.Tensor | None = None

    def signals(self) -> dict:
        """{"maxprob", "aux", "cls": (N, 4) float32 numpy} for the gates (those at hand)."""
        return {k: getattr(self, k).cpu().numpy() for k in ("maxprob", "aux", "cls")
                if getattr(self, k) is not None}


def run_model(ensemble: Ensemble, m: int, batch: torch.Tensor, dtype):
    """Model m of the ensemble on a (V*N, 3, H, W) batch -> (mask logits or None, image
    logits or None), float32, checked (forward_checked; an error names its file)."""
    model, config = ensemble.models[m], ensemble.configs[m]
    inputs = batch.contiguous(memory_format=torch.channels_last) if config.channels_last \
        else batch
    try:
        return split_output(forward_checked(model, inputs, model_dtype(config, dtype)))
    except NonFiniteLogits as e:
        name = ensemble.paths[m] if ensemble.paths else f"model {m} of the ensemble"
        raise NonFiniteLogits(f"{name}: {e}") from None


class Mean:
    """A running weighted mean of tensors."""

    def __init__(self):
        self.total, self.weight = None, 0.0

    def add(self, x: torch.Tensor, w: float) -> None:
        x = x if w == 1.0 else x * w
        self.total = x if self.total is None else self.total + x
        self.weight += w

    def value(self) -> torch.Tensor | None:
        return None if self.total is None else self.total / self.weight


@torch.no_grad()
def predict_batch(ensemble: Ensemble, images: torch.Tensor, views: tuple[str, ...],
                  dtype: torch.dtype | None, classifiers: Ensemble | None = None) -> Output:
    """(N, 3, H, W) uint8 images on the device -> Output: sigmoids averaged over models
    (weighted) and TTA views, each view's flip undone on the masks (image-level
    probabilities need no undoing). `dtype`: the device's autocast dtype (None: fp32), used
    by every model whose config allows it (model_dtype); every forward is checked."""
    return predict_weighted(ensemble, images, views, dtype, classifiers)[0]


@torch.no_grad()
def predict_weighted(ensemble: Ensemble, images: torch.Tensor, views: tuple[str, ...],
                     dtype: torch.dtype | None, classifiers: Ensemble | None = None,
                     weightings=None) -> list[Output]:
    """predict_batch for several weightings of the segmenters from the same forwards: one
    Output per weight vector of `weightings` (one weight per segmenter, a model of weight 0
    left out of that average; None: the ensemble's own weights alone). Each average is
    accumulated in the order and arithmetic of the ensemble run with those weights, so
    `oof --weights search` scores each candidate on the very probabilities `predict` gives
    it. The classifiers' average is shared by every Output."""
    x = data_lib.normalize(images)
    batch = torch.cat([flip(x, v) for v in views])  # (V*N, 3, H, W): one forward per model
    n, v = len(images), len(views)
    weightings = weightings or [[ensemble.weight(m) for m in range(len(ensemble.models))]]
    masks, aux, cls = [Mean() for _ in weightings], [Mean() for _ in weightings], Mean()
    for m in range(len(ensemble.models)):
        logits, labels = run_model(ensemble, m, batch, dtype)
        probs = torch.sigmoid(logits)
        unflipped = [flip(probs[i * n:(i + 1) * n], view) for i, view in enumerate(views)]
        head = None if labels is None else torch.sigmoid(labels).view(v, n, -1).mean(0)
        for weights, mask_mean, aux_mean in zip(weightings, masks, aux):
            w = float(weights[m])
            if w == 0:
                continue
            for p in unflipped:
                mask_mean.add(p, w)
            if head is not None:
                aux_mean.add(head, w)
    for m in range(len(classifiers.models) if classifiers else 0):
        _, labels = run_model(classifiers, m, batch, dtype)
        cls.add(torch.sigmoid(labels).view(v, n, -1).mean(0), classifiers.weight(m))
    out = []
    for mask_mean, aux_mean in zip(masks, aux):
        mean = mask_mean.value()
        out.append(Output(mean, mean.amax(dim=(2, 3)), aux_mean.value(), cls.value()))
    return out


def probabilities(ensemble: Ensemble, images: torch.Tensor, views: tuple[str, ...],
                  dtype: torch.dtype | None) -> torch.Tensor:
    """(N, 3, H, W) uint8 images on the device -> (N, 4, H, W) float32 probabilities: the
    masks of predict_batch."""
    return predict_batch(ensemble, images, views, dtype).masks


def batches(ensemble: Ensemble, loader, views: tuple[str, ...], device: torch.device,
            dtype: torch.dtype | None, desc: str, classifiers: Ensemble | None = None,
            weightings=None):
    """Yield (loader item, Output on the device) for every batch, with a progress bar
    showing images per second; with `weightings` (predict_weighted), (loader item, one
    Output per weighting). At the end, says on stderr how many of its forwards were
    recomputed in fp32 (forward_checked), when any were."""
    bar = progress(loader, desc=desc, unit="batch")
    seen, forwards, before, start = 0, 0, forward.recomputed, time.perf_counter()
    for item in bar:
        images = item[0].to(device, non_blocking=True)
        yield item, (predict_batch(ensemble, images, views, dtype, classifiers)
                     if weightings is None else
                     predict_weighted(ensemble, images, views, dtype, classifiers, weightings))
        seen += len(images)
        forwards += len(ensemble.models) + (len(classifiers.models) if classifiers else 0)
        bar.set_postfix(img_s=f"{seen / (time.perf_counter() - start):.1f}", refresh=False)
    if forward.recomputed > before:
        print(f"warning: {desc}: {forward.recomputed - before} of {forwards} batch forwards gave "
              f"non-finite logits under {dtype_name(dtype)} autocast and were "
              "recomputed in fp32", file=sys.stderr)


class OneBehind:
    """Run calls on one background thread, at most one pending, so the CPU post-processes
    batch i while the device computes batch i + 1 (the numba kernels release the GIL). An
    error in a call is raised at the next `submit` or on leaving the `with` block."""

    def __init__(self):
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending = None

    def submit(self, fn, *args) -> None:
        self.wait()
        self.pending = self.pool.submit(fn, *args)

    def wait(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                self.wait()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
