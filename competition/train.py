"""Train one fold: plain functions, `train_one_epoch`, `evaluate`, `fit`.

One process, or one per GPU under `torchrun --nproc_per_node=N -m competition train ...`
(DDP; only rank 0 writes). Every epoch: train on the crops, validate on full-size images
with the competition metric, write last.pt (and best.pt when the validation Dice improved)
and history.csv, each atomically.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from competition import checkpoint, config as config_lib, data as data_lib
from competition.errors import InputError
from competition.files import write_csv, write_json
from competition.labels import CLASSES, by_image, load_train
from competition.losses import DiceBCELoss
from competition.metric import dice_from_counts
from competition.model import from_config, param_groups
from competition.postprocess import binarize, pair_counts
from competition.progress import progress
from competition.schedules import build_scheduler


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: its rank among `world` processes and its device."""
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def runtime() -> Runtime:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK: join the process group (nccl on CUDA, else
    gloo). Otherwise one process on the first GPU, or the CPU."""
    if "RANK" not in os.environ:
        return Runtime(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(rank, world, device)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for config.amp on this device (None: full fp32)."""
    if device.type != "cuda" or amp == "off":
        return None
    # bf16 where the GPU has it natively (Ampere, compute 8.0, and later); Kaggle's T4 and
    # P100 do not, and torch.cuda.is_bf16_supported() would say yes there (emulation)
    if amp == "fp16" or (amp == "auto" and torch.cuda.get_device_capability(device) < (8, 0)):
        return torch.float16
    return torch.bfloat16


def split(folds_csv: str | Path, fold: int, image_ids: list[str]) -> tuple[list[str], list[str]]:
    """folds.csv and a fold number -> (train ImageIds, validation ImageIds)."""
    path = Path(folds_csv)
    if not path.is_file():
        raise InputError(f"{path}: folds file not found; make it with `bash run.sh folds` "
                         "or `python -m competition folds --data DIR`")
    folds = pd.read_csv(path)
    if not {"ImageId", "fold"} <= set(folds.columns):
        raise InputError(f"{path}: needs columns ImageId and fold, found {list(folds.columns)}")
    present = sorted(set(folds.fold))
    if fold not in present:
        raise InputError(f"{path}: no fold {fold}; the folds are {present}")
    unknown = sorted(set(folds.ImageId) - set(image_ids))
    if unknown:
        raise InputError(f"{path}: ImageId {unknown[0]} has no image in the dataset "
                         f"({len(unknown)} such): folds.csv of another dataset?")
    val = folds.ImageId[folds.fold == fold].tolist()
    train = folds.ImageId[folds.fold != fold].tolist()
    if not train or not val:
        raise InputError(f"{path}: fold {fold} leaves {len(train)} train and {len(val)} "
                         "validation images; both must be non-empty")
    return train, val


def train_one_epoch(model, loss_fn, optimizer, scheduler, scaler, ema, loader, config, rt,
                    epoch: int, dtype) -> dict:
    """One pass over the training loader: `accumulate` micro-batches per optimizer update,
    the scheduler stepped once per update. Returns mean loss, images and seconds."""
    model.train()
    updates = len(loader) // config.accumulate
    batches = itertools.islice(loader, updates * config.accumulate)
    bar = progress(batches, total=updates * config.accumulate, desc=f"epoch {epoch + 1} train",
                   unit="batch", disable=not rt.main, leave=False)
    total, seen, start = 0.0, 0, time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    for i, (images, masks, _) in enumerate(bar):
        images = data_lib.normalize(images.to(rt.device, non_blocking=True), config.channels_last)
        masks = masks.to(rt.device, non_blocking=True)
        last_micro = (i + 1) % config.accumulate == 0
        sync = model.no_sync() if rt.world > 1 and not last_micro else contextlib.nullcontext()
        with sync:
            with torch.autocast(rt.device.type, dtype=dtype, enabled=dtype is not None):
                loss = loss_fn(model(images), masks)
            scaler.scale(loss / config.accumulate).backward()
        if last_micro:
            if config.clip_grad_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if ema is not None:
                ema.update_parameters(unwrap(model))
        value = loss.detach().float()
        if rt.world > 1:
            dist.all_reduce(value)
            value /= rt.world
        value = value.item()
        if not math.isfinite(value):
            raise NonFiniteLoss(value, epoch, scheduler.last_epoch)
        total += value * len(images)
        seen += len(images)
        rate = seen * rt.world / (time.perf_counter() - start)
        bar.set_postfix(loss=f"{total / seen:.4f}", lr=f"{optimizer.param_groups[-1]['lr']:.2e}",
                        img_s=f"{rate:.1f}", refresh=False)
    seconds = time.perf_counter() - start
    return {"loss": total / max(seen, 1), "images": seen * rt.world, "seconds": seconds}


class NonFiniteLoss(Exception):
    def __init__(self, value: float, epoch: int, step: int):
        super().__init__(f"loss is {value} in epoch {epoch + 1} after optimizer step {step}")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


@torch.no_grad()
def evaluate(model, loader, loss_fn, config, rt, dtype) -> dict:
    """Full-size validation under the default post-processing (config.val_threshold and
    val_min_area): the competition's mean Dice over (image, class) pairs, per-class Dice,
    the all-empty baseline on the same pairs, and the mean loss. Each rank scores its own
    images; the sums are reduced, so the result does not depend on the number of ranks."""
    model.eval()
    counts, loss_sum = [], 0.0
    for images, masks, _ in progress(loader, desc="validate", unit="batch", disable=not rt.main,
                                     leave=False):
        images = data_lib.normalize(images.to(rt.device), config.channels_last)
        masks = masks.to(rt.device)
        with torch.autocast(rt.device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(images).float()
        loss_sum += loss_fn(logits, masks).item() * len(images)
        pred = binarize(torch.sigmoid(logits), config.val_threshold, config.val_min_area)
        counts.append(pair_counts(pred, masks).cpu().numpy())  # (N, C, 3)
    counts = np.concatenate(counts) if counts else np.zeros((0, len(CLASSES), 3), np.int64)
    dice = dice_from_counts(counts[..., 0], counts[..., 1], counts[..., 2])  # (N, C)
    # per class: Dice sum, empty-truth pairs, pairs; then the loss sum and the image count
    sums = np.concatenate([dice.sum(0), (counts[..., 2] == 0).sum(0), np.full(
        len(CLASSES), len(counts)), [loss_sum, len(counts)]]).astype(np.float64)
    if rt.world > 1:
        reduced = torch.from_numpy(sums).to(rt.device)
        dist.all_reduce(reduced)
        sums = reduced.cpu().numpy()
    k = len(CLASSES)
    dice_sum, empty, pairs = sums[:k], sums[k:2 * k], sums[2 * k:3 * k]
    return {
        "loss": float(sums[-2] / max(sums[-1], 1)),
        "mean_dice": float(dice_sum.sum() / pairs.sum()),
        "per_class": {str(c): float(dice_sum[i] / pairs[i]) for i, c in enumerate(CLASSES)},
        "all_empty_baseline": float(empty.sum() / pairs.sum()),
        "images": int(sums[-1]),
    }


def make_model(config, device: torch.device, encoder_weights: str | None = None):
    """The config's model on `device`, channels_last when the config asks for it."""
    model = from_config(config, encoder_weights).to(device)
    return model.to(memory_format=torch.channels_last) if config.channels_last else model


def make_loss(config, device: torch.device) -> DiceBCELoss:
    return DiceBCELoss(config.dice_weight, config.bce_weight, config.pos_weight).to(device)


def build_loaders(config, data: Path, train_ids, val_ids, encoded, rt: Runtime):
    """Training crops from a per-epoch sampler sharded by rank (and drop_last: DeepLabV3's
    image pooling cannot train on a batch of one), full-size validation split by rank."""
    folder = data / "train_images"
    train_set = data_lib.SteelDataset(folder, train_ids, encoded,
                                      data_lib.train_transform(config))
    weights = (data_lib.balance_weights(data_lib.has_defect(train_ids, encoded))
               if config.balance else None)
    sampler = data_lib.train_sampler(train_set, config.seed, rt.rank, rt.world, weights)
    pin = rt.device.type == "cuda"
    train_loader = data_lib.loader(train_set, config.batch_size, config.num_workers,
                                   sampler=sampler, drop_last=True, pin_memory=pin)
    val_set = data_lib.SteelDataset(folder, val_ids[rt.rank::rt.world], encoded)
    val_loader = data_lib.loader(val_set, config.val_batch_size, config.num_workers,
                                 pin_memory=pin)
    if len(train_loader) < config.accumulate:
        raise InputError(f"{len(train_ids)} training images give {len(train_loader)} batches "
                         f"of {config.batch_size} per process: fewer than one optimizer update "
                         f"(--accumulate {config.accumulate}); lower --batch-size")
    return train_loader, val_loader


def resolve_config(config, out: Path, resume: bool, overwrite: bool, explicit: dict):
    """The config to run with and the state to resume from (None for a new run).

    A new run refuses an output folder that holds a run unless `overwrite`; a resumed run
    takes its config from last.pt, and any option given that differs is an error."""
    last = out / "last.pt"
    if not resume:
        if last.exists() and not overwrite:
            raise InputError(f"{out} already holds a run ({last}): pass --resume to continue "
                             "it, --overwrite to start again, or --out for another folder")
        return config, None
    state = checkpoint.load(last)
    saved = checkpoint.config_of(state, last)
    wanted = config_lib.from_dict({**config_lib.to_dict(saved), **explicit})
    diffs = config_lib.differences(saved, wanted)
    if diffs:
        raise InputError(f"{last}: cannot resume with another config ({diffs[0]}"
                         + (f", and {len(diffs) - 1} more" if len(diffs) > 1 else "") + ")")
    return wanted, state


def describe(result: dict) -> str:
    classes = " ".join(f"{c}:{v:.3f}" for c, v in result["per_class"].items())
    return (f"val dice {result['mean_dice']:.4f} [{classes}] "
            f"(all-empty {result['all_empty_baseline']:.4f})")


def fit(config, data: str | Path, fold: int, out: str | Path, folds_csv: str | Path,
        resume: bool = False, overwrite: bool = False, explicit: dict | None = None) -> dict:
    """Train `fold` of `folds_csv` on dataset `data` into `out`; returns the last epoch's
    history row. Everything that can fail on bad input is checked before the first write."""
    rt = runtime()
    data, out = Path(data), Path(out)
    config, state = resolve_config(config, out, resume, overwrite, explicit or {})
    image_ids, labels = load_train(data)
    train_ids, val_ids = split(folds_csv, fold, image_ids)
    encoded = by_image(labels)
    torch.manual_seed(config.seed)
    model = make_model(config, rt.device)
    encoder_params, head_params = param_groups(model)
    optimizer = torch.optim.AdamW([{"params": encoder_params, "lr": config.encoder_lr},
                                   {"params": head_params, "lr": config.lr}],
                                  weight_decay=config.weight_decay)
    train_loader, val_loader = build_loaders(config, data, train_ids, val_ids, encoded, rt)
    updates = len(train_loader) // config.accumulate
    scheduler = build_scheduler(optimizer, schedule=config.schedule,
                                total_steps=config.epochs * updates,
                                warmup_steps=min(round(config.warmup_epochs * updates),
                                                 config.epochs * updates),
                                min_factor=config.min_lr_factor)
    dtype = amp_dtype(config.amp, rt.device)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=dtype == torch.float16)
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay),
                         use_buffers=True) if config.ema_decay > 0 else None)
    loss_fn = make_loss(config, rt.device)

    start_epoch, best, history = 0, -1.0, []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.module.load_state_dict(state["ema"])
            ema.n_averaged.fill_(state["ema_updates"])
        start_epoch, best, history = state["epoch"], state["best"], state["history"]
        checkpoint.set_rng_state(state["rng"])
    if rt.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)

    if rt.main:
        print("config:\n" + "\n".join(f"  {k:<22} {v}" for k, v in
                                        config_lib.to_dict(config).items()))
        print(f"fold {fold}: {len(train_ids)} train / {len(val_ids)} validation images; "
              f"{rt.world} process(es) on {rt.device}, amp {dtype or 'off'}; {updates} updates "
              f"per epoch, epochs {start_epoch + 1}..{config.epochs}"
              + (f" (resumed from {out / 'last.pt'})" if state is not None else ""))
        write_json(out / "config.json", config_lib.to_dict(config))

    row = history[-1] if history else {}
    for epoch in range(start_epoch, config.epochs):
        data_lib.reseed_loader(train_loader, config.seed, epoch, rt.rank)
        try:
            trained = train_one_epoch(model, loss_fn, optimizer, scheduler, scaler, ema,
                                      train_loader, config, rt, epoch, dtype)
        except NonFiniteLoss as e:
            kept = (f"the last good checkpoint {out / 'last.pt'} (epoch {epoch}) is kept"
                    if epoch > start_epoch or state is not None else "no checkpoint was written")
            raise InputError(f"{out}: {e}: stopped; {kept}. Try a lower --lr or --amp off") from None
        result = evaluate(ema.module if ema is not None else unwrap(model), val_loader, loss_fn,
                          config, rt, dtype)
        improved = result["mean_dice"] > best
        best = max(best, result["mean_dice"])
        row = {"epoch": epoch + 1, "step": scheduler.last_epoch,
               "lr": optimizer.param_groups[-1]["lr"], "train_loss": trained["loss"],
               "val_loss": result["loss"], "val_dice": result["mean_dice"],
               **{f"dice_{c}": v for c, v in result["per_class"].items()},
               "all_empty": result["all_empty_baseline"], "best": best,
               "images_per_s": trained["images"] / trained["seconds"],
               "epoch_s": trained["seconds"]}
        history.append(row)
        if rt.main:
            weights = {"config": config_lib.to_dict(config), "model": unwrap(model).state_dict(),
                       "ema": ema.module.state_dict() if ema is not None else None,
                       "epoch": epoch + 1, "step": scheduler.last_epoch}
            checkpoint.save(out / "last.pt", {
                **weights, "ema_updates": int(ema.n_averaged) if ema is not None else 0,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "best": best, "history": history,
                "rng": checkpoint.rng_state()})
            if improved:
                checkpoint.save(out / "best.pt", {**weights, "score": result})
            write_csv(out / "history.csv", pd.DataFrame(history))
            print(f"epoch {epoch + 1}/{config.epochs} loss {trained['loss']:.4f} "
                  f"{describe(result)} lr {row['lr']:.2e} {row['images_per_s']:.1f} img/s"
                  + (" *best" if improved else ""), flush=True)
    return row
