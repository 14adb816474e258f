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
    """Models of one architecture, in eval mode on one device, with their configs and the
    checkpoint files they came from (named in errors; empty for models built in memory)."""
    models: list
    configs: list
    paths: list = field(default_factory=list)


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
    return Ensemble(models, configs, list(paths))


class NonFiniteLogits(InputError):
    """A model's logits hold a NaN or an inf in fp32: its weights are broken."""


recomputed = 0  # forwards that forward_checked recomputed in fp32, in this process


def dtype_name(dtype: torch.dtype | None) -> str:
    """torch.float16 -> 'float16'; None -> 'fp32'."""
    return str(dtype).removeprefix("torch.") if dtype else "fp32"


def autocast_forward(model, inputs: torch.Tensor, dtype: torch.dtype | None):
    """model(inputs) under autocast `dtype` (None: autocast disabled, fp32) -> float32: a
    tensor, or a tuple of tensors for a model with an image-level head (model.split_output)."""
    with torch.autocast(inputs.device.type, dtype=dtype, enabled=dtype is not None):
        out = model(inputs)
    return tuple(o.float() for o in out) if isinstance(out, (tuple, list)) else out.float()


def all_finite(out) -> bool:
    """Whether every value of a tensor or a tuple of tensors is finite (one host sync)."""
    parts = out if isinstance(out, tuple) else (out,)
    return bool(torch.stack([torch.isfinite(o).all() for o in parts]).all())


def count_bad(out) -> tuple[int, int]:
    """(non-finite values, all values) of a tensor or a tuple of tensors."""
    parts = out if isinstance(out, tuple) else (out,)
    return (sum(int((~torch.isfinite(o)).sum()) for o in parts),
            sum(o.numel() for o in parts))


def forward_checked(model, inputs: torch.Tensor, dtype: torch.dtype | None):
    """model(inputs) under autocast `dtype` (None: fp32) -> its float32 logits, e.g.
    (N, 3, H, W) normalised images -> (N, 4, H, W) logits (a tuple of tensors for a model
    with an image-level head, (N, 4) for a classifier: model.split_output).

    Logits with a NaN or an inf (an overflow in `dtype`) are recomputed in fp32, autocast
    disabled, for this forward alone: the first time in the process says so on stderr, and
    the module's `recomputed` counts every such forward. Logits that are non-finite in fp32
    too raise NonFiniteLogits (an InputError): a NaN probability exceeds no threshold, so
    passing it on would write a valid, all-empty submission. The check reads one bool back
    from the device: one sync per forward, acceptable in inference (the probabilities go to
    the CPU every batch anyway). Call it under torch.no_grad() for inference."""
    global recomputed
    logits = autocast_forward(model, inputs, dtype)
    if all_finite(logits):
        return logits
    if dtype is not None:
        logits = autocast_forward(model, inputs, None)
        recomputed += 1
        if recomputed == 1:
            print(f"warning: {dtype_name(dtype)} autocast gave non-finite logits (an "
                  "overflow): the batch was recomputed in fp32 (said once; later ones are "
                  "counted)", file=sys.stderr)
        if all_finite(logits):
            return logits
    bad, total = count_bad(logits)
    raise NonFiniteLogits(f"the model produces non-finite logits in fp32{' too' if dtype else ''}"
                          f" ({bad} of {total} values NaN or inf): its weights are "
                          "broken (a diverged run?); retrain it or leave it out")


def model_dtype(config, dtype: torch.dtype | None) -> torch.dtype | None:
    """The autocast dtype a model runs in: None (fp32) where its config says amp "off",
    else `dtype`, the device's own choice (train.amp_dtype("auto", device): bf16 from
    Ampere on, fp16 on a T4, None on the CPU) whatever the run trained in: a T4 has no
    native bf16, so weights trained in bf16 run in fp16 there (forward_checked catches an
    overflow)."""
    return None if config.amp == "off" else dtype


@torch.no_grad()
def probabilities(ensemble: Ensemble, images: torch.Tensor, views: tuple[str, ...],
                  dtype: torch.dtype | None) -> torch.Tensor:
    """(N, 3, H, W) uint8 images on the device -> (N, 4, H, W) float32 probabilities: the
    mean over models and TTA views of sigmoid(logits), each view's flip undone. `dtype`:
    the device's autocast dtype (None: fp32), used by every model whose config allows it
    (model_dtype); every forward is checked (forward_checked)."""
    x = data_lib.normalize(images)
    batch = torch.cat([flip(x, v) for v in views])  # (V*N, 3, H, W): one forward per model
    n = len(images)
    total = None
    for m, (model, config) in enumerate(zip(ensemble.models, ensemble.configs)):
        inputs = batch.contiguous(memory_format=torch.channels_last) if config.channels_last \
            else batch
        try:
            logits = forward_checked(model, inputs, model_dtype(config, dtype))
        except NonFiniteLogits as e:
            name = ensemble.paths[m] if ensemble.paths else f"model {m} of the ensemble"
            raise NonFiniteLogits(f"{name}: {e}") from None
        probs = torch.sigmoid(logits)
        for i, view in enumerate(views):
            p = flip(probs[i * n:(i + 1) * n], view)
            total = p if total is None else total + p
    return total / (len(ensemble.models) * len(views))


def batches(ensemble: Ensemble, loader, views: tuple[str, ...], device: torch.device,
            dtype: torch.dtype | None, desc: str):
    """Yield (loader item, (N, 4, H, W) probabilities on the device) for every batch, with a
    progress bar showing images per second. At the end, says on stderr how many of its
    forwards were recomputed in fp32 (forward_checked), when any were."""
    bar = progress(loader, desc=desc, unit="batch")
    seen, forwards, before, start = 0, 0, recomputed, time.perf_counter()
    for item in bar:
        images = item[0].to(device, non_blocking=True)
        yield item, probabilities(ensemble, images, views, dtype)
        seen += len(images)
        forwards += len(ensemble.models)
        bar.set_postfix(img_s=f"{seen / (time.perf_counter() - start):.1f}", refresh=False)
    if recomputed > before:
        print(f"warning: {desc}: {recomputed - before} of {forwards} batch forwards gave "
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
