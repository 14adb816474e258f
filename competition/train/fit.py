"""Train one fold: plain functions, `train_one_epoch`, `evaluate`, `fit`.

One process, or one per GPU under `torchrun --nproc_per_node=N -m competition train ...`
(DDP; only rank 0 writes). Every epoch: train on the crops, validate on full-size images,
write last.pt (and best.pt when the validation score improved: the competition's Dice for a
segmenter, the mean ROC AUC of "class present" for a classifier) and history.csv, each
atomically; with --keep-top/--keep-last, the epochs kept for weight averaging
(keep.py); curves.png and TensorBoard events (tracking.py).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from competition.data import cache as cache_lib
from competition.model import checkpoint
from competition.model import config as config_lib
from competition.train import keep
from competition.data import datasets as data_lib
from competition.train import augment, sampling
from competition.train import pseudo_mix as pseudo_lib
from competition.train import tracking
from competition.errors import InputError
from competition.files import write_csv, write_json
from competition.data.labels import CLASSES, by_image, load_train
from competition.model.forward import NonFiniteLogits, forward_checked
from competition.train.losses import MaskLoss, PresenceLoss, SegmentLoss, presence
from competition.data.metric import dice_from_counts
from competition.model.networks import (check_compiler, compile_model, from_config, param_groups,
                               split_output)
from competition.data.postprocess import binarize, pair_counts
from competition.data.folds import split
from competition.model.precision import PRECISION, amp_dtype
from competition.progress import progress
from competition.train.schedules import build_scheduler, lr_factor


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


def resume_dtype(saved: str, device: torch.device, path: Path) -> torch.dtype | None:
    """The autocast dtype for resuming a run trained in `saved` precision (bf16, fp16 or fp32,
    as recorded in last.pt) on `device`: the same precision, or an InputError when this
    device cannot run it (bf16 runs keep no loss scale, fp16 runs need theirs: switching
    precision mid-run is a different run)."""
    wanted = {v: k for k, v in PRECISION.items()}[saved]
    if wanted is None:
        return None
    if device.type != "cuda":
        raise InputError(f"{path}: the run trained with {saved} mixed precision on a GPU; "
                         f"{device.type} has no {saved} autocast here: resume it on a GPU")
    if wanted == torch.bfloat16 and torch.cuda.get_device_capability(device) < (8, 0):
        major, minor = torch.cuda.get_device_capability(device)
        raise InputError(f"{path}: the run trained in bf16, and {torch.cuda.get_device_name(device)}"
                         f" (compute {major}.{minor}) has no native bf16 (fp16 would need a loss "
                         "scale the run never had): resume it on an Ampere or later GPU, or start "
                         "a new run here")
    return wanted


def saved_precision(state: dict, saved, device: torch.device) -> str:
    """The precision a last.pt (of config `saved`) was trained in. Before it was recorded, an
    fp16 run is the one whose GradScaler state is not empty; any other ran in bf16 or fp32,
    taken as what `device` chooses for its amp (fp32 on the CPU) where that is not fp16."""
    if "precision" in state:
        return state["precision"]
    if state.get("scaler"):
        return "fp16"
    chosen = amp_dtype(saved.amp, device)
    return "bf16" if chosen == torch.float16 else PRECISION[chosen]


def configure_backends(device: torch.device) -> None:
    """cuDNN autotuning: every training batch has the crop's size and every validation batch
    256x1600, so the fastest algorithm for each is searched once and reused."""
    torch.backends.cudnn.benchmark = device.type == "cuda"


CHECK_EVERY = 20  # optimizer updates between host reads of the loss (one sync each)
MAX_SKIPPED_IN_A_ROW = 10  # fp16: updates with a non-finite loss in a row before stopping


def make_ema(model: torch.nn.Module) -> torch.nn.Module:
    """An EMA copy of `model` on its device, out of autograd."""
    ema = copy.deepcopy(model)
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float, first: bool) -> None:
    """ema <- decay * ema + (1 - decay) * model for every float parameter and buffer (BatchNorm
    statistics too), other buffers copied; `first`: copy everything. Our own rather than
    torch's AveragedModel, whose update reads its update counter back from the device
    (`bool(n_averaged == 0)`) or copies it there, on every update; here the count is Python's."""
    ours = [*ema.parameters(), *ema.buffers()]
    theirs = [*model.parameters(), *model.buffers()]
    floats = [(a, b) for a, b in zip(ours, theirs) if a.is_floating_point()]
    others = [(a, b) for a, b in zip(ours, theirs) if not a.is_floating_point()]
    if first:
        others += floats
    elif floats:
        torch._foreach_lerp_([a for a, _ in floats], [b for _, b in floats], 1.0 - decay)
    for a, b in others:
        a.copy_(b)


class Health:
    """Device-side loss bookkeeping of one epoch, read on the host every CHECK_EVERY updates.

    Per micro-batch: the sum of finite losses (x images) and their image count; per update:
    whether any micro-batch (on any rank) had a non-finite loss, how many such updates were
    skipped, and the longest run of them in a row. Nothing here waits for the device."""

    def __init__(self, device: torch.device, rt):
        zero = functools.partial(torch.zeros, (), device=device)
        self.rt, self.loss, self.images = rt, zero(dtype=torch.float64), zero(dtype=torch.float64)
        self.bad_update, self.skipped = zero(dtype=torch.int64), zero(dtype=torch.int64)
        self.streak, self.worst = zero(dtype=torch.int64), zero(dtype=torch.int64)
        self.last_read = (0.0, 0.0)  # the loss sum and image count at the last read (host)

    def micro(self, loss: torch.Tensor, n: int) -> None:
        value = loss.detach().double()
        finite = torch.isfinite(value)
        self.loss += torch.where(finite, value, 0.0) * n
        self.images += finite * n
        self.bad_update |= ~finite

    def update(self) -> None:
        if self.rt.world > 1:  # a NaN on one rank spoils the averaged gradient of all
            dist.all_reduce(self.bad_update, op=dist.ReduceOp.MAX)
        self.skipped += self.bad_update
        self.streak = (self.streak + 1) * self.bad_update
        self.worst = torch.maximum(self.worst, self.streak)
        self.bad_update.zero_()

    def read(self) -> dict:
        """One host sync (and one all_reduce under DDP, where `skipped` and `worst` are
        already the same on every rank)."""
        packed = torch.stack([self.loss, self.images, self.skipped.double(),
                              self.worst.double()])
        if self.rt.world > 1:
            dist.all_reduce(packed)
            packed[2:] /= self.rt.world
        loss, images, skipped, worst = packed.tolist()
        recent = loss - self.last_read[0], images - self.last_read[1]  # since the last read
        self.last_read = loss, images
        return {"loss": loss / images if images else float("nan"), "skipped": int(skipped),
                "worst": int(worst),
                "interval_loss": recent[0] / recent[1] if recent[1] else float("nan")}


def check_health(h: dict, scaled: bool, epoch: int, step: int) -> None:
    """Under fp16 the GradScaler skips an update whose gradients are not finite: tolerated
    until MAX_SKIPPED_IN_A_ROW in a row. In bf16 or fp32 nothing rescales, so any stops."""
    if h["worst"] >= (MAX_SKIPPED_IN_A_ROW if scaled else 1):
        why = (f"{h['worst']} updates in a row (the fp16 loss scale could not absorb it)"
               if scaled else "bf16/fp32: nothing rescales it")
        raise NonFiniteLoss(f"the loss is not finite (nan or inf) in epoch {epoch + 1} by "
                            f"optimizer step {step}: {why}")


def train_one_epoch(model, loss_fn, optimizer, scheduler, scaler, ema, loader, config, rt,
                    epoch: int, dtype, ema_updates: int = 0, tracker=tracking.OFF) -> dict:
    """One pass over the training loader: `accumulate` micro-batches per optimizer update,
    the scheduler stepped once per update, the EMA (if any) updated after each. The loss is
    kept on the device and read every CHECK_EVERY updates and at the end (see Health), and
    logged then by `tracker` (before a non-finite loss stops the run, so that it shows).
    Returns mean loss, images, seconds, skipped updates, the EMA's update count and
    first_s, the seconds to the end of the first update (a compiled model compiles then)."""
    model.train()
    updates = len(loader) // config.accumulate
    batches = itertools.islice(loader, updates * config.accumulate)
    bar = progress(batches, total=updates * config.accumulate, desc=f"epoch {epoch + 1} train",
                   unit="batch", disable=not rt.main, leave=False)
    health, scaled = Health(rt.device, rt), scaler.is_enabled()
    seen, start, h, first = 0, time.perf_counter(), {}, None
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
        health.micro(loss, len(images))
        seen += len(images)
        if not last_micro:
            continue
        if config.clip_grad_norm > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        health.update()
        if ema is not None:
            update_ema(ema, unwrap(model), config.ema_decay, first=ema_updates == 0)
            ema_updates += 1
        first = first or time.perf_counter() - start
        done = (i + 1) // config.accumulate
        if done % CHECK_EVERY == 0 or done == updates:
            h = health.read()
            rate = seen * rt.world / (time.perf_counter() - start)
            tracker.interval(scheduler.last_epoch, h, optimizer.param_groups, rate)
            check_health(h, scaled, epoch, scheduler.last_epoch)
            bar.set_postfix(loss=f"{h['loss']:.4f}", lr=f"{optimizer.param_groups[-1]['lr']:.2e}",
                            img_s=f"{rate:.1f}", skipped=h["skipped"], refresh=False)
    seconds = time.perf_counter() - start
    return {"loss": h.get("loss", float("nan")), "images": seen * rt.world, "seconds": seconds,
            "skipped": h.get("skipped", 0), "ema_updates": ema_updates, "first_s": first}


class NonFiniteLoss(Exception):
    pass


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under torch.compile's wrapper and DDP, whose state_dict keys are
    those of from_config's model (no `_orig_mod.` or `module.` prefix)."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def same_on_every_rank(module: torch.nn.Module, rt) -> None:
    """Broadcast rank 0's parameters and buffers of `module` to every rank. Under DDP each
    rank updates its own BatchNorm statistics (DDP only broadcasts rank 0's at the start of a
    forward) and each rank's EMA averages its own; validating without this would score a mix
    of slightly different models, not the one rank 0 saves."""
    if rt.world > 1:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, 0)


def roc_auc(probs, labels) -> float | None:
    """ROC AUC of (n,) scores against (n,) {0, 1} labels: the chance that a positive scores
    above a negative (ties count half; sklearn's roc_auc_score), or None when the labels hold
    one value only (no pair to rank: undefined, and never NaN)."""
    labels = np.asarray(labels, bool)
    if labels.all() or not labels.any():
        return None
    from sklearn.metrics import roc_auc_score  # training only: inference never loads sklearn

    return float(roc_auc_score(labels, np.asarray(probs, np.float64)))


def best_f1(probs, labels) -> tuple[float | None, float | None]:
    """(n,) probabilities and (n,) {0, 1} labels -> (threshold, F1) of the prediction
    `probs > threshold` with the highest F1 = 2 TP / (2 TP + FP + FN) over every cut of the
    sorted probabilities; (None, None) when no label is 1 (F1 undefined).

    The threshold lies halfway between the lowest probability called positive and the next
    lower one, so `>` and `>=` agree on these data; when all are called positive, halfway
    between the lowest and 0 (-0.5 if the lowest is 0). Among cuts of equal F1 the highest
    threshold (fewest positives) wins."""
    p, y = np.asarray(probs, np.float64), np.asarray(labels, bool)
    if not y.any():
        return None, None
    order = np.argsort(-p, kind="stable")
    p, y = p[order], y[order]
    ends = np.flatnonzero(np.append(p[1:] != p[:-1], True))  # last of each run of equal values
    f1 = 2 * np.cumsum(y)[ends] / (ends + 1 + y.sum())  # predicted positives: ends + 1
    k = int(np.argmax(f1))  # the first maximum: the highest threshold
    lowest = p[ends[k]]
    below = p[ends[k] + 1] if ends[k] + 1 < len(p) else 0.0 if lowest > 0 else -1.0
    return float((lowest + below) / 2), float(f1[k])


def gather_rows(parts: list[np.ndarray], columns: int, rt) -> np.ndarray:
    """This rank's (n_i, columns) arrays -> every rank's rows, (sum of n, columns), in rank
    order (a collective under DDP: all ranks call it, with or without rows)."""
    rows = np.concatenate(parts) if parts else np.zeros((0, columns))
    if rt.world == 1:
        return rows
    every = [None] * rt.world
    dist.all_gather_object(every, rows)
    return np.concatenate(every)


def image_scores(probs: np.ndarray, labels: np.ndarray, f1: bool) -> dict:
    """(N, C) image-level probabilities and (N, C) {0, 1} presence labels -> per class the
    ROC AUC (None for a class whose labels are all 0 or all 1: skipped), mean_auc over the
    classes that have one (None when none has), and with `f1` the best_f1 threshold and F1
    per class (None for a class without positives)."""
    auc = {str(c): roc_auc(probs[:, i], labels[:, i]) for i, c in enumerate(CLASSES)}
    defined = [v for v in auc.values() if v is not None]
    result = {"auc": auc, "mean_auc": float(np.mean(defined)) if defined else None}
    if f1:
        best = {str(c): best_f1(probs[:, i], labels[:, i]) for i, c in enumerate(CLASSES)}
        result["f1"] = {c: f for c, (_, f) in best.items()}
        result["f1_threshold"] = {c: t for c, (t, _) in best.items()}
    return result


@torch.no_grad()
def evaluate(model, loader, loss_fn, config, rt, dtype) -> dict:
    """Full-size validation of any model (model.split_output) -> a dict with the mean loss,
    `images` and `score`, the number best.pt is kept for:

    - segmenters: the competition's mean Dice over (image, class) pairs under the default
      post-processing (config.val_threshold and val_min_area), per-class Dice and the
      all-empty baseline on the same pairs; score = mean_dice. With an image-level head
      (cls_weight > 0) also image_scores: per-class ROC AUC of the head and mean_auc.
    - classifiers (task classify): image_scores with the best-F1 threshold and F1 per class;
      score = mean_auc, or 0.0 when no class has both labels in the validation images.

    A forward whose logits overflow under fp16 is recomputed in fp32 (infer.forward_checked),
    never scored as NaN. Each rank scores its own images; the sums are reduced and the
    image-level probabilities gathered, so the result does not depend on the number of ranks.
    """
    model.eval()
    counts, probs, labels, loss_sum, seen = [], [], [], 0.0, 0
    for images, masks, _ in progress(loader, desc="validate", unit="batch", disable=not rt.main,
                                     leave=False):
        images = data_lib.normalize(images.to(rt.device), config.channels_last)
        masks = masks.to(rt.device)
        out = forward_checked(model, images, dtype)  # an fp16 overflow is redone in fp32
        loss_sum += loss_fn(out, masks).item() * len(images)
        seen += len(images)
        mask_logits, image_logits = split_output(out)
        if mask_logits is not None:
            pred = binarize(torch.sigmoid(mask_logits), config.val_threshold, config.val_min_area)
            counts.append(pair_counts(pred, masks).cpu().numpy())  # (N, C, 3)
        if image_logits is not None:
            probs.append(torch.sigmoid(image_logits).cpu().numpy())  # (N, C)
            labels.append(presence(masks).cpu().numpy())
    k = len(CLASSES)
    counts = np.concatenate(counts) if counts else np.zeros((0, k, 3), np.int64)
    dice = dice_from_counts(counts[..., 0], counts[..., 1], counts[..., 2])  # (N, C)
    # per class: Dice sum, empty-truth pairs, pairs; then the loss sum and the image count
    sums = np.concatenate([dice.sum(0), (counts[..., 2] == 0).sum(0), np.full(k, len(counts)),
                           [loss_sum, seen]]).astype(np.float64)
    if rt.world > 1:
        reduced = torch.from_numpy(sums).to(rt.device)
        dist.all_reduce(reduced)
        sums = reduced.cpu().numpy()
    result = {"loss": float(sums[-2] / max(sums[-1], 1)), "images": int(sums[-1])}
    if config.task == "segment":
        dice_sum, empty, pairs = sums[:k], sums[k:2 * k], sums[2 * k:3 * k]
        result.update({
            "mean_dice": float(dice_sum.sum() / pairs.sum()),
            "per_class": {str(c): float(dice_sum[i] / pairs[i]) for i, c in enumerate(CLASSES)},
            "all_empty_baseline": float(empty.sum() / pairs.sum())})
    if config.task == "classify" or config.cls_weight > 0:
        result.update(image_scores(gather_rows(probs, k, rt), gather_rows(labels, k, rt),
                                   f1=config.task == "classify"))
    result["score"] = (result["mean_dice"] if config.task == "segment" else
                       result["mean_auc"] if result["mean_auc"] is not None else 0.0)
    return result


def make_model(config, device: torch.device, encoder_weights: str | None = None):
    """The config's model on `device`, channels_last when the config asks for it."""
    model = from_config(config, encoder_weights).to(device)
    return model.to(memory_format=torch.channels_last) if config.channels_last else model


def make_loss(config, device: torch.device) -> torch.nn.Module:
    """The task's loss on `device`, called as loss_fn(model output, (N, 4, H, W) masks) -> ()
    float32: a segmenter's config.loss, a weighted sum of losses.LOSSES (+ cls_weight x its
    head's BCE against class presence), a classifier's BCE against class presence
    (losses.presence). An unknown loss name is an InputError."""
    if config.task == "classify":
        return PresenceLoss().to(device)
    masks = MaskLoss(config_lib.parse_loss(config.loss), config.pos_weight, config.focal_gamma)
    return SegmentLoss(masks, config.cls_weight).to(device)


def full_size_loader(config, data: Path, ids, encoded, rt: Runtime, batch_size: int,
                     drop_last: bool = False, images=None):
    """This rank's share of `ids` as full-size 256x1600 images, unaugmented, in order:
    validation, and BatchNorm re-estimation (average.py, `drop_last`). `images`: the
    decoded-image cache of train_images (cache.ImageCache) or None."""
    dataset = data_lib.SteelDataset(data / "train_images", ids[rt.rank::rt.world], encoded,
                                    cache=images)
    return data_lib.loader(dataset, batch_size, config.num_workers, drop_last=drop_last,
                           pin_memory=rt.device.type == "cuda", persistent=True)


def build_loaders(config, data: Path, train_ids, val_ids, encoded, rt: Runtime, pseudo=None,
                  images=None):
    """Training crops from a per-epoch sampler sharded by rank (and drop_last: DeepLabV3's
    image pooling cannot train on a batch of one), full-size validation split by rank.
    `pseudo` (a pseudo.PseudoSet): mixed into every training batch (pseudo.mix), never
    into validation. `images`: the decoded-image cache of train_images, read by both
    (the pseudo-labelled images are decoded)."""
    folder = data / "train_images"
    transform = augment.train_transform(config)
    train_set = data_lib.SteelDataset(folder, train_ids, encoded, transform, config.seed, images)
    weights = (sampling.balance_weights(sampling.has_defect(train_ids, encoded))
               if config.balance else None)
    sampler = sampling.train_sampler(train_set, config.seed, rt.rank, rt.world, weights)
    if pseudo is not None:
        train_set, sampler = pseudo_lib.mix(train_set, sampler.sampler, pseudo, transform,
                                            config, rt.rank, rt.world)
    pin = rt.device.type == "cuda"
    train_loader = data_lib.loader(train_set, config.batch_size, config.num_workers,
                                   sampler=sampler, drop_last=True, pin_memory=pin,
                                   persistent=True)
    val_loader = full_size_loader(config, data, val_ids, encoded, rt, config.val_batch_size,
                                  images=images)
    if len(train_loader) < config.accumulate:
        raise InputError(f"{len(train_ids)} training images give {len(train_loader)} batches "
                         f"of {config.batch_size} per process: fewer than one optimizer update "
                         f"(--accumulate {config.accumulate}); lower --batch-size")
    return train_loader, val_loader


def resolve_config(config, out: Path, resume: bool, overwrite: bool, explicit: dict):
    """The config to run with, the state to resume from and its saved config (both None for
    a new run).

    A new run refuses an output folder that holds a run unless `overwrite`; a resumed run
    takes its config from last.pt, and any option given that differs is an error, except a
    larger --epochs (extending a run whose curve still rises: the schedule is re-planned)."""
    last = out / "last.pt"
    if not resume:
        if last.exists() and not overwrite:
            raise InputError(f"{out} already holds a run ({last}): pass --resume to continue "
                             "it, --overwrite to start again, or --out for another folder")
        if config.init_from and Path(config.init_from).resolve().parent == out.resolve():
            raise InputError(f"--init-from {config.init_from} lies in --out {out}, which the "
                             "new run writes over: give the new run another --out")
        return config, None, None
    state = checkpoint.load(last)
    saved = checkpoint.config_of(state, last)
    wanted = config_lib.from_dict({**config_lib.to_dict(saved), **explicit})
    if wanted.epochs < saved.epochs:
        raise InputError(f"{last}: cannot resume with --epochs {wanted.epochs}, fewer than the "
                         f"run's {saved.epochs} (a run can be extended, not shortened)")
    diffs = config_lib.differences(saved, dataclasses.replace(wanted, epochs=saved.epochs))
    if diffs:
        raise InputError(f"{last}: cannot resume with another config ({diffs[0]}"
                         + (f", and {len(diffs) - 1} more" if len(diffs) > 1 else "") + ")")
    return wanted, state, saved


def per_class(values: dict) -> str:
    """{"1": 0.91, "2": None, ...} -> '1:0.910 2:- ...' (None: undefined for that class)."""
    return " ".join(f"{c}:{'-' if v is None else f'{v:.3f}'}" for c, v in values.items())


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def describe(result: dict) -> str:
    """evaluate's result as the middle of an epoch's line."""
    if "mean_dice" not in result:  # a classifier
        return (f"val auc {fmt(result['mean_auc'])} [{per_class(result['auc'])}] "
                f"f1 [{per_class(result['f1'])}] at [{per_class(result['f1_threshold'])}]")
    line = (f"val dice {result['mean_dice']:.4f} [{per_class(result['per_class'])}] "
            f"(all-empty {result['all_empty_baseline']:.4f})")
    if "auc" in result:
        line += f" head auc {fmt(result['mean_auc'])} [{per_class(result['auc'])}]"
    return line


def history_columns(result: dict) -> dict:
    """evaluate's result -> its history.csv columns: val_loss; val_dice, dice_1..4, all_empty
    (segmenters); val_auc (the mean), auc_1..4 (a head or a classifier); f1_1..4 and
    f1_threshold_1..4 (classifiers). An undefined value (one label only) is None."""
    row = {"val_loss": result["loss"]}
    if "mean_dice" in result:
        row.update({"val_dice": result["mean_dice"],
                    **{f"dice_{c}": v for c, v in result["per_class"].items()},
                    "all_empty": result["all_empty_baseline"]})
    if "auc" in result:
        row.update({"val_auc": result["mean_auc"],
                    **{f"auc_{c}": v for c, v in result["auc"].items()}})
    if "f1" in result:
        row.update({**{f"f1_{c}": v for c, v in result["f1"].items()},
                    **{f"f1_threshold_{c}": v for c, v in result["f1_threshold"].items()}})
    return row


def summary(row: dict) -> str:
    """The last history row of a run -> its best score in words: Dice against the all-empty
    baseline (segmenters; with a head, the last epoch's AUC too), mean ROC AUC and the last
    epoch's best F1 per class (classifiers)."""
    if "val_dice" not in row:
        f1 = per_class({str(c): row[f"f1_{c}"] for c in CLASSES})
        return (f"best val AUC {row['best']:.4f} (mean over the classes with both labels); "
                f"epoch {row['epoch']}: best F1 per class {f1}")
    head = f"; epoch {row['epoch']}: head AUC {fmt(row['val_auc'])}" if "val_auc" in row else ""
    return (f"best val dice {row['best']:.4f} against the all-empty baseline "
            f"{row['all_empty']:.4f} ({row['best'] - row['all_empty']:+.4f})" + head)


def schedule_args(config, updates: int) -> dict:
    """build_scheduler's arguments for `config` with `updates` optimizer updates per epoch."""
    total = config.epochs * updates
    return dict(schedule=config.schedule, total_steps=total, min_factor=config.min_lr_factor,
                warmup_steps=min(round(config.warmup_epochs * updates), total))


def announce_extension(saved, config, state: dict, updates: int) -> None:
    """A run resumed with more epochs than it was planned for is re-planned for the new end
    (as timm and torchvision's references do): from the current step on, the LR follows the
    schedule of the longer run, so a cosine that had reached its floor rises to where the
    longer cosine is at this step and decays to the new end. Said once."""
    if config.epochs == saved.epochs:
        return
    step = state["step"]
    old = lr_factor(step, **schedule_args(saved, updates))
    new = lr_factor(step, **schedule_args(config, updates))
    print(f"resume: extending the run from {saved.epochs} to {config.epochs} epochs: the "
          f"{config.schedule} schedule is re-planned to end at step {config.epochs * updates}; "
          f"at step {step} the LR factor goes from {old:.4g} to {new:.4g}", flush=True)


def gather_rng(rt) -> list[dict]:
    """Every rank's own generator states, in rank order (a collective: all ranks call it)."""
    mine = checkpoint.rng_state(rt.device)
    if rt.world == 1:
        return [mine]
    states = [None] * rt.world
    dist.all_gather_object(states, mine)
    return states


def restore_rng(saved, rt) -> None:
    """This rank's entry of last.pt's RNG states (one dict in checkpoints before per-rank
    states); a rank the saved run did not have keeps the seed's state, said once."""
    states = [saved] if isinstance(saved, dict) else list(saved)
    if len(states) != rt.world and rt.main:
        print(f"resume: last.pt holds the RNG states of {len(states)} process(es), this run has "
              f"{rt.world}: the random streams (dropout) differ from the original run's")
    if rt.rank < len(states):
        checkpoint.set_rng_state(states[rt.rank], rt.device)


def compile_line(trained: dict, config, rt) -> str:
    """The compile time of a run's first epoch apart from its steady speed: the first
    update's seconds (compiling the training step, and the loaders' start-up) against the
    images per second of the others."""
    first, per_update = trained["first_s"], config.batch_size * config.accumulate * rt.world
    rest, seconds = trained["images"] - per_update, trained["seconds"] - first
    speed = f"{rest / seconds:.1f} img/s" if rest > 0 and seconds > 0 else "-"
    return (f"compile: the first update took {first:.1f} s (compiling the training step; the "
            f"loaders' start-up too), the other updates of the epoch ran at {speed}; the first "
            "validation compiles the full-size forward")


def fit(config, data: str | Path, fold: int, out: str | Path, folds_csv: str | Path,
        resume: bool = False, overwrite: bool = False, explicit: dict | None = None) -> dict:
    """Train `fold` of `folds_csv` on dataset `data` into `out`; returns the last epoch's
    history row. Everything that can fail on bad input is checked before the first write."""
    rt = runtime()
    data, out = Path(data), Path(out)
    config, state, saved = resolve_config(config, out, resume, overwrite, explicit or {})
    loss_fn = make_loss(config, rt.device)  # an unknown loss name stops here, before any work
    if config.compile:
        check_compiler(rt.device)
    dtype = (amp_dtype(config.amp, rt.device) if state is None else
             resume_dtype(saved_precision(state, saved, rt.device), rt.device, out / "last.pt"))
    image_ids, labels = load_train(data)
    train_ids, val_ids = split(folds_csv, fold, image_ids)
    encoded = by_image(labels)
    pseudo = pseudo_lib.load(config.pseudo, image_ids, data) if config.pseudo else None
    images = cache_lib.open_cache(config.cache, data / "train_images", config.cache_dir,
                                  config.num_workers)  # too big: refused before any decoding
    configure_backends(rt.device)
    torch.manual_seed(config.seed)
    model = make_model(config, rt.device, "none" if config.init_from else None)
    started = (checkpoint.init_weights(model, config.init_from, config)
               if config.init_from and state is None else None)  # resumed: from last.pt
    encoder_params, head_params = param_groups(model)
    optimizer = torch.optim.AdamW([{"params": encoder_params, "lr": config.encoder_lr},
                                   {"params": head_params, "lr": config.lr}],
                                  weight_decay=config.weight_decay)
    train_loader, val_loader = build_loaders(config, data, train_ids, val_ids, encoded, rt,
                                             pseudo, images)
    updates = len(train_loader) // config.accumulate
    if state is not None:
        announce_extension(saved, config, state, updates)
    scheduler = build_scheduler(optimizer, **schedule_args(config, updates))
    scaler = torch.amp.GradScaler(rt.device.type, enabled=dtype == torch.float16)
    ema = make_ema(model) if config.ema_decay > 0 else None

    start_epoch, best, history, ema_updates = 0, -1.0, [], 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs,
                                       scheduler.lr_lambdas):  # the plan's LR (re-planned?)
            group["lr"] = base * factor(scheduler.last_epoch)
        if state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
            ema_updates = state["ema_updates"]
        start_epoch, best, history = state["epoch"], state["best"], state["history"]
        restore_rng(state["rng"], rt)
    kept = (keep.resumed(out, start_epoch, fold, data, folds_csv, config.keep_top,
                         config.keep_last) if state is not None else
            keep.empty(fold, data, folds_csv, config.keep_top, config.keep_last))
    if rt.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    evaluated = ema if ema is not None else unwrap(model)  # validated and kept: plain modules
    validated = evaluated
    if config.compile:  # checkpoints are saved from the plain modules (unwrap)
        model, validated = compile_model(model, rt.device), compile_model(evaluated, rt.device)

    if rt.main:
        print("config:\n" + "\n".join(f"  {k:<22} {v}" for k, v in
                                        config_lib.to_dict(config).items()))
        print(f"fold {fold}: {len(train_ids)} train / {len(val_ids)} validation images; "
              f"{rt.world} process(es) on {rt.device}, amp {PRECISION[dtype]}; {updates} updates "
              f"per epoch, epochs {start_epoch + 1}..{config.epochs}"
              + (f" (resumed from {out / 'last.pt'})" if state is not None else ""))
        if started:
            print(started)
        if images is not None:
            print(images.describe())
        if pseudo is not None:
            k = config_lib.pseudo_per_batch(config.batch_size, config.pseudo_share)
            print(f"pseudo-labels: {len(pseudo.image_ids)} images of {pseudo.folder}, {k} in "
                  f"every batch of {config.batch_size} (share {k / config.batch_size:.3f} for "
                  f"pseudo_share {config.pseudo_share}); never validated on")
        write_json(out / "config.json", config_lib.to_dict(config))

    tracker = (tracking.start(out, config, state["step"] if state is not None else None, fold,
                              data / "train_images", val_ids, encoded, rt.device)
               if rt.main else tracking.OFF)
    row = history[-1] if history else {}
    for epoch in tracker.epochs(start_epoch, config.epochs):  # closes its writer at the end
        sampling.set_epoch(train_loader, epoch)
        try:
            trained = train_one_epoch(model, loss_fn, optimizer, scheduler, scaler, ema,
                                      train_loader, config, rt, epoch, dtype, ema_updates,
                                      tracker)
        except NonFiniteLoss as e:
            kept = (f"the last good checkpoint {out / 'last.pt'} (epoch {epoch}) is kept"
                    if epoch > start_epoch or state is not None else "no checkpoint was written")
            raise InputError(f"{out}: {e}: stopped; {kept}. Try a lower --lr or --amp off") from None
        ema_updates = trained["ema_updates"]
        if config.compile and epoch == start_epoch and rt.main:
            print(compile_line(trained, config, rt), flush=True)
        same_on_every_rank(evaluated, rt)
        try:
            result = evaluate(validated, val_loader, loss_fn, config, rt, dtype)
        except NonFiniteLogits as e:
            raise InputError(f"{out}: validation after epoch {epoch + 1}: {e}; stopped, the "
                             f"last checkpoint written is kept. Try a lower --lr") from None
        improved = result["score"] > best
        best = max(best, result["score"])
        row = {"epoch": epoch + 1, "step": scheduler.last_epoch,
               "lr": optimizer.param_groups[-1]["lr"], "train_loss": trained["loss"],
               **history_columns(result), "best": best,
               "images_per_s": trained["images"] / trained["seconds"],
               "epoch_s": trained["seconds"], "skipped_steps": trained["skipped"],
               "planned_epochs": config.epochs}
        history.append(row)
        rngs = gather_rng(rt)
        if rt.main:
            weights = {"config": config_lib.to_dict(config), "model": unwrap(model).state_dict(),
                       "ema": ema.state_dict() if ema is not None else None,
                       "epoch": epoch + 1, "step": scheduler.last_epoch}
            # before last.pt: an epoch recorded but not in last.pt is recorded again on resume
            kept = keep.record(out, kept, epoch + 1, result["score"], lambda: {
                **weights, "model": evaluated.state_dict(), "ema": None, "score": result})
            checkpoint.save(out / "last.pt", {
                **weights, "ema_updates": ema_updates, "precision": PRECISION[dtype],
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "best": best, "history": history, "rng": rngs})
            if improved:
                checkpoint.save(out / "best.pt", {**weights, "score": result})
            write_csv(out / "history.csv", pd.DataFrame(history))
            skipped = (f" ({trained['skipped']} updates skipped: non-finite loss)"
                       if trained["skipped"] else "")
            print(f"epoch {epoch + 1}/{config.epochs} loss {trained['loss']:.4f} "
                  f"{describe(result)} lr {row['lr']:.2e} {row['images_per_s']:.1f} img/s"
                  + skipped + (" *best" if improved else ""), flush=True)
            tracker.epoch(history, history_columns(result), evaluated, dtype)
    return row
