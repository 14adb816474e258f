"""Inference: a fold ensemble with flip TTA -> averaged sigmoid probabilities, batch by batch.

Each batch is decoded once (loader workers), sent to the device as uint8, normalised there,
and every TTA view of it goes through every model in one forward per model; the flips are
undone on the probabilities before they are averaged. Nothing is kept between batches, so
memory does not grow with the number of images.
"""
from __future__ import annotations

import glob
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from competition import checkpoint, data as data_lib
from competition.errors import InputError
from competition.progress import progress

# TTA view -> the image axes it flips, of (N, C, H, W). A flip is its own inverse.
TTA = {"none": (), "hflip": (3,), "vflip": (2,), "hvflip": (2, 3)}


def device() -> torch.device:
    """The first GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
    """Models of one architecture, in eval mode on one device, with their configs."""
    models: list
    configs: list


def checkpoint_paths(pattern: str) -> list[Path]:
    """A glob ('folds/fold*/best.pt') or comma-separated paths -> sorted existing files."""
    paths = []
    for part in pattern.split(","):
        found = sorted(glob.glob(part.strip()))
        if not found:
            raise InputError(f"--checkpoints {part.strip()}: no such checkpoint file "
                             "(train folds first: bash run.sh fold0 ...)")
        paths.extend(Path(p) for p in found)
    return paths


def load_ensemble(paths: list[Path], device: torch.device) -> Ensemble:
    """Load every checkpoint (EMA weights where kept). All must share architecture and
    encoder: averaging the probabilities of unlike models is an error, not a silent mix."""
    models, configs = [], []
    for path in paths:
        model, config = checkpoint.model_from(path, device)
        if configs and (config.arch, config.encoder) != (configs[0].arch, configs[0].encoder):
            raise InputError(f"{path}: {config.arch}/{config.encoder} differs from "
                             f"{paths[0]}: {configs[0].arch}/{configs[0].encoder}; an ensemble "
                             "takes checkpoints of one architecture")
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        models.append(model)
        configs.append(config)
    return Ensemble(models, configs)


@torch.no_grad()
def probabilities(ensemble: Ensemble, images: torch.Tensor, views: tuple[str, ...],
                  dtype: torch.dtype | None) -> torch.Tensor:
    """(N, 3, H, W) uint8 images on the device -> (N, 4, H, W) float32 probabilities: the
    mean over models and TTA views of sigmoid(logits), each view's flip undone."""
    x = data_lib.normalize(images)
    batch = torch.cat([flip(x, v) for v in views])  # (V*N, 3, H, W): one forward per model
    n = len(images)
    total = None
    for model, config in zip(ensemble.models, ensemble.configs):
        inputs = batch.contiguous(memory_format=torch.channels_last) if config.channels_last \
            else batch
        with torch.autocast(images.device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(inputs)
        probs = torch.sigmoid(logits.float())
        for i, view in enumerate(views):
            p = flip(probs[i * n:(i + 1) * n], view)
            total = p if total is None else total + p
    return total / (len(ensemble.models) * len(views))


def batches(ensemble: Ensemble, loader, views: tuple[str, ...], device: torch.device,
            dtype: torch.dtype | None, desc: str):
    """Yield (loader item, (N, 4, H, W) probabilities on the device) for every batch, with a
    progress bar showing images per second."""
    bar = progress(loader, desc=desc, unit="batch")
    seen, start = 0, time.perf_counter()
    for item in bar:
        images = item[0].to(device, non_blocking=True)
        yield item, probabilities(ensemble, images, views, dtype)
        seen += len(images)
        bar.set_postfix(img_s=f"{seen / (time.perf_counter() - start):.1f}", refresh=False)


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
