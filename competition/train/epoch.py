"""One training epoch: crops through the model, the loss, the optimizer and the schedule,
with gradient accumulation, mixed precision and an EMA of the weights; the loss is read on
the host only every CHECK_EVERY updates, and a run whose loss stops being finite stops."""
from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import time

import torch
import torch.distributed as dist

from competition.data import datasets as data_lib
from competition.progress import progress
from competition.train import tracking
from competition.train.runtime import unwrap


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
