"""Checkpoint weight averaging: `python -m competition average --run folds/fold0 --top 5`.

The kept epochs of a run (keep.py: `train --keep-top k --keep-last k`) are averaged weight by
weight (`average_states`), BatchNorm's statistics are re-estimated for the averaged weights
over the fold's training images (`update_bn`), the result is validated by train.evaluate on
the fold's validation images, as every epoch of the run was, and written to RUN/averaged.pt
in best.pt's format (so oof --checkpoint-name averaged.pt, predict and kernel --checkpoints
'folds/fold*/averaged.pt' take it), with RUN/averaged.json: which epochs, the averaged
weights' score beside best.pt's (re-scored here, same device and code), and whether the
average beat it.

Why BatchNorm is re-estimated: the mean of several epochs' weights is a new network whose
activations the averaged running statistics do not describe (a mean of variances of other
networks); the Understanding-Clouds winner averaged his last five epochs and re-estimated
BatchNorm over a training epoch (as SWA does).
"""
from __future__ import annotations

import dataclasses
import itertools
import random
import re
from pathlib import Path

import torch

from competition.model import checkpoint
from competition.model import config as config_lib
from competition.data import datasets as data_lib
from competition.data import provenance
from competition.train import keep
from competition.errors import InputError
from competition.files import write_json
from competition.data.labels import by_image, load_train
from competition.progress import progress

BATCHNORM = torch.nn.modules.batchnorm._BatchNorm  # BatchNorm1d/2d/3d, SyncBatchNorm, timm's


def average_states(states: list[dict], names: list[str] | None = None) -> dict:
    """State dicts of one architecture -> their uniform mean: every floating-point tensor
    (parameters and buffers such as BatchNorm's running statistics) averaged in float64 and
    cast back to its dtype (so n identical tensors give that tensor bit for bit); any other
    tensor (BatchNorm's num_batches_tracked) taken from the first state. Different keys or
    shapes, or a non-finite value in any input or in the mean -> InputError naming the
    checkpoint (`names`, one per state) and the tensor."""
    names = names or [f"state {i}" for i in range(len(states))]
    if not states:
        raise InputError("nothing to average: no checkpoint given")
    first = states[0]
    for state, name in zip(states[1:], names[1:]):
        if state.keys() != first.keys():
            extra = sorted(set(state) ^ set(first))[0]
            raise InputError(f"{name}: its weights are not those of {names[0]} (tensor {extra} "
                             "is in one only): another architecture")
        for key, tensor in state.items():
            if tensor.shape != first[key].shape or tensor.dtype != first[key].dtype:
                raise InputError(f"{name}: {key} is {tuple(tensor.shape)} {tensor.dtype}, "
                                 f"{tuple(first[key].shape)} {first[key].dtype} in {names[0]}: "
                                 "another architecture")
    for state, name in zip(states, names):
        check_finite(state, name)
    out = {}
    for key, tensor in first.items():
        if tensor.is_floating_point():
            mean = torch.stack([s[key].double() for s in states]).mean(0)
            out[key] = mean.to(tensor.dtype)
        else:
            out[key] = tensor.clone()
    check_finite(out, f"the average of {', '.join(names)}")
    return out


def check_finite(state: dict, name: str) -> None:
    """Every floating-point tensor of a state dict finite, or InputError naming the first."""
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise InputError(f"{name}: {key} holds {bad} NaN or inf value(s) of "
                             f"{tensor.numel()}: refused (a diverged epoch?)")


@torch.no_grad()
def update_bn(model: torch.nn.Module, loader, device: torch.device, channels_last: bool,
              dtype: torch.dtype | None = None, batches: int | None = None) -> int:
    """Re-estimate every BatchNorm's running mean and variance for `model`'s weights: reset,
    then the plain mean over `batches` (None: all) batches of the loader's (N, 3, 256, 1600)
    uint8 images of each batch's statistics (momentum None, as torch.optim.swa_utils.update_bn).
    Unlike torch's, only the BatchNorm layers are in training mode: Dropout stays off, as at
    inference (smp's ASPP drops half of its output before the decoder's BatchNorm; with it on,
    that BatchNorm would learn a variance inference never sees), and the images are
    normalised on the device as everywhere else. Parameters and all other buffers are left
    as they are. Returns the number of batches seen (each BatchNorm's num_batches_tracked).

    Why full-size training images without augmentation: the statistics are used at inference
    on full-size 256x1600 images, so they are estimated on those; the training crops are
    centred on defects 60-80% of the time (another pixel distribution) and, for DeepLabV3, the
    image-pooling branch normalises the mean of a whole image, which a 512-wide crop is not.
    The fold's own training images, never its validation images, which score the result."""
    layers = [m for m in model.modules() if isinstance(m, BATCHNORM)]
    if not layers:
        return 0
    momenta = {m: m.momentum for m in layers}
    was_training = model.training
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    seen = 0
    try:
        chosen = itertools.islice(loader, batches) if batches is not None else loader
        total = min(len(loader), batches) if batches is not None else len(loader)
        for images, *_ in progress(chosen, total=total, desc="BatchNorm", unit="batch",
                                   leave=False):
            x = data_lib.normalize(images.to(device, non_blocking=True), channels_last)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                model(x)
            seen += 1
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        model.train(was_training)
    return seen


def load_kept(run: Path, entries: list[dict]) -> tuple[list[dict], list[str],
                                                     config_lib.TrainConfig, int | None, list]:
    """The kept files of `entries` -> (their weights, their paths, the config and optimizer
    step of the latest, the split each records (provenance.py) or None). Configs that differ in anything but the epochs (a run extended on
    resume) and the fields that change no result -> InputError naming the two files."""
    paths = [str(Path(run) / keep.FOLDER / e["file"]) for e in entries]
    states, configs, steps, splits = [], [], [], []
    for path in paths:
        state = checkpoint.load(path)
        configs.append(checkpoint.config_of(state, path))
        states.append(state.get("ema") or state["model"])
        steps.append(state.get("step"))
        splits.append(state.get(provenance.KEY))
    for path, config in zip(paths[1:], configs[1:]):
        diffs = config_lib.differences(dataclasses.replace(configs[0], epochs=config.epochs),
                                       config)
        if diffs:
            raise InputError(f"{path}: another config than {paths[0]} ({diffs[0]}): only "
                             "weights of one run can be averaged")
    latest = max(range(len(entries)), key=lambda i: entries[i]["epoch"])
    return states, paths, configs[latest], steps[latest], splits


def fold_from_name(run: Path) -> int | None:
    match = re.fullmatch(r"fold(\d+)", Path(run).resolve().name)
    return int(match.group(1)) if match else None


def average_run(run: str | Path, top: int | None = None, last: int | None = None,
                bn_batches: int | None = None, data=None, fold: int | None = None,
                folds_csv=None, batch_size: int | None = None, workers: int | None = None,
                out=None, device: torch.device | None = None) -> dict:
    """Average the kept epochs `top` (the k best) or `last` (the k last) of `run`, re-estimate
    BatchNorm on `bn_batches` batches of the fold's training images (None: all of them; 0:
    keep the averaged statistics), validate, and write `out` (default RUN/averaged.pt) and
    its .json beside it. data, fold, folds_csv: default those the run trained on (its
    kept/index.json). Everything that can fail on bad input fails before anything is written.
    Returns what the .json holds."""
    from competition.model.forward import device as default_device
    from competition.model.precision import amp_dtype
    from competition.data.folds import split
    from competition.train.evaluate import evaluate
    from competition.train.fit import build_loaders, full_size_loader, make_loss
    from competition.train.runtime import Runtime

    run = Path(run)
    out = Path(out) if out else run / "averaged.pt"
    if (top is None) == (last is None):
        raise InputError("give one of --top K and --last K")
    if bn_batches is not None and bn_batches < 0:
        raise InputError(f"--bn-batches {bn_batches}: must be 0 (keep the averaged statistics) "
                         "or more")
    index = keep.read(run)
    entries = keep.select(run, index, top, last)
    states, paths, config, step, splits = load_kept(run, entries)
    mode, k = ("top", top) if top is not None else ("last", last)
    if not (run / "best.pt").is_file():
        raise InputError(f"{run / 'best.pt'}: not found; the average is compared with it")
    best_model, best_config = checkpoint.model_from(run / "best.pt")
    if best_model.state_dict().keys() != states[0].keys():
        raise InputError(f"{run / 'best.pt'}: another architecture than the kept weights")
    weights = average_states(states, paths)

    device = device or default_device()
    fold = fold if fold is not None else index.get("fold", fold_from_name(run))
    data = data if data is not None else index.get("data")
    folds_csv = Path(folds_csv or index.get("folds_csv") or run.parent / "folds.csv")
    if fold is None or data is None:
        raise InputError(f"{run}: which fold and dataset? pass --fold and --data")
    data = Path(data)
    image_ids, labels = load_train(data)
    train_ids, val_ids = split(folds_csv, fold, image_ids)
    record = provenance.split_record(data, folds_csv, fold, image_ids, val_ids)
    best_state = checkpoint.load(run / "best.pt")
    best_split = best_state.get(provenance.KEY)
    warnings = [said for path, split_of in [*zip(paths, splits), (run / "best.pt", best_split)]
                if (said := provenance.check(path, split_of, record))]
    if warnings:  # a run saved before splits were recorded: one line for the run
        print(warnings[0] + (f" (nor do {len(warnings) - 1} more of {run}'s files)"
                             if len(warnings) > 1 else ""))
    encoded = by_image(labels)
    saved = config
    changes = {"num_workers": workers} if workers is not None else {}
    if batch_size is not None:
        changes["val_batch_size"] = batch_size
    config = dataclasses.replace(config, **changes)  # runtime fields: no result changes
    rt = Runtime(device=device)
    dtype = amp_dtype(config.amp, device)
    bn_size = config.val_batch_size
    if bn_batches != 0 and bn_size < 2 and any(isinstance(m, BATCHNORM)
                                               for m in best_model.modules()):
        raise InputError(f"--batch-size {bn_size}: BatchNorm statistics need batches of 2 or "
                         "more images (a batch of one has no variance to estimate)")
    shuffled = random.Random(config.seed).sample(train_ids, len(train_ids))
    bn_loader = full_size_loader(config, data, shuffled, encoded, rt, bn_size, drop_last=True)
    if bn_batches != 0 and len(bn_loader) == 0:
        raise InputError(f"{len(train_ids)} training images make no full batch of {bn_size}: "
                         "lower --batch-size")
    _, val_loader = build_loaders(config, data, train_ids, val_ids, encoded, rt)
    loss_fn = make_loss(config, device)

    from competition.model.networks import from_config

    model = from_config(config, encoder_weights="none")
    model.load_state_dict(weights)
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    seen = (update_bn(model, bn_loader, device, config.channels_last, dtype, bn_batches)
            if bn_batches != 0 else 0)
    averaged = {key: t.detach().cpu() for key, t in model.state_dict().items()}
    check_finite(averaged, f"{run}: the averaged weights after BatchNorm re-estimation")
    result = evaluate(model, val_loader, loss_fn, config, rt, dtype)

    best_model = best_model.to(device)
    if best_config.channels_last:
        best_model = best_model.to(memory_format=torch.channels_last)
    best_result = evaluate(best_model, val_loader, loss_fn, config, rt, dtype)
    summary = {
        "run": str(run), "mode": mode, "k": k, "epochs": [e["epoch"] for e in entries],
        "epoch_scores": [e["score"] for e in entries], "files": paths,
        "bn_batches": seen, "bn_images": seen * bn_size, "fold": fold, "data": str(data),
        "folds_csv": str(folds_csv), "device": str(device),
        "score": result["score"], "best_epoch": best_state.get("epoch"),
        "best_score": best_result["score"],
        "best_score_recorded": (best_state.get("score") or {}).get("score"),
        "gain": result["score"] - best_result["score"],
        "beat_best": result["score"] > best_result["score"], "result": result}
    checkpoint.save(out, {"config": config_lib.to_dict(saved), "model": averaged, "ema": None,
                          "epoch": max(summary["epochs"]), "step": step, "score": result,
                          provenance.KEY: record,
                          "averaged": {k: v for k, v in summary.items() if k != "result"}})
    write_json(out.with_suffix(".json"), summary)
    return summary


def describe(summary: dict) -> str:
    """average_run's summary as the lines the command prints."""
    what = "mean Dice" if "mean_dice" in summary["result"] else "mean AUC"
    epochs = ",".join(str(e) for e in summary["epochs"])
    bn = (f"BatchNorm re-estimated on {summary['bn_batches']} batches ({summary['bn_images']} "
          "full-size training images)" if summary["bn_batches"] else
          "BatchNorm statistics averaged (not re-estimated)")
    verdict = ("the average beats best.pt" if summary["beat_best"] else
               "the average does not beat best.pt")
    return (f"{summary['run']}: averaged the {summary['mode']} {summary['k']} epochs "
            f"({epochs}); {bn}\n"
            f"validation {what}: averaged {summary['score']:.4f}, best.pt (epoch "
            f"{summary['best_epoch']}) {summary['best_score']:.4f}: {summary['gain']:+.4f}, "
            f"{verdict}")
