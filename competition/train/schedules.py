"""Learning-rate schedules: linear warmup, then a decay picked by name.

Every schedule is a multiplier of the optimizer's base LR as a function of the number of
optimizer updates done so far. The decays are pure functions of `progress` in [0, 1] that
go from 1.0 to `min_factor`; `lr_factor` puts warmup in front of any of them, and
`build_scheduler` wraps it in a LambdaLR, so a training loop only ever calls
`scheduler.step()` once per optimizer update and never looks at the schedule's name.
"""
from __future__ import annotations

import functools
import math

import torch

from competition.errors import InputError


def warmup(step: int, warmup_steps: int, start_factor: float = 0.01) -> float:
    """Linear from start_factor at step 0 to 1.0 at step == warmup_steps (1.0 beyond, or when
    warmup_steps == 0)."""
    if step >= warmup_steps:
        return 1.0
    return start_factor + (1.0 - start_factor) * step / warmup_steps


def cosine(progress: float, min_factor: float) -> float:
    """Half cosine from 1.0 at progress 0 to min_factor at progress 1."""
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def poly(progress: float, min_factor: float, power: float = 0.9) -> float:
    """min_factor + (1 - min_factor) * (1 - progress) ** power; power > 0."""
    if power <= 0:
        raise InputError(f"poly power {power}: must be > 0")
    return min_factor + (1.0 - min_factor) * (1.0 - progress) ** power


def flat_cosine(progress: float, min_factor: float, flat_fraction: float = 0.5) -> float:
    """1.0 while progress <= flat_fraction, then cosine over the rest down to min_factor."""
    if not 0 <= flat_fraction < 1:
        raise InputError(f"flat_cosine flat_fraction {flat_fraction}: must be in [0, 1)")
    if progress <= flat_fraction:
        return 1.0
    return cosine((progress - flat_fraction) / (1.0 - flat_fraction), min_factor)


DECAYS = {"cosine": cosine, "poly": poly, "flat_cosine": flat_cosine}


def _decay(schedule: str):
    if schedule not in DECAYS:
        raise InputError(f"unknown schedule {schedule!r}: choose one of {', '.join(DECAYS)}")
    return DECAYS[schedule]


def lr_factor(step: int, *, schedule: str, total_steps: int, warmup_steps: int,
              min_factor: float = 0.01, **options) -> float:
    """Multiplier of the base LR after `step` optimizer updates.

    warmup() for step < warmup_steps, then DECAYS[schedule](progress, min_factor, **options)
    with progress = (step - warmup_steps) / (total_steps - warmup_steps) clamped to [0, 1]
    (1 when there are no decay steps). Ends at min_factor at step == total_steps and stays there.
    """
    decay = _decay(schedule)
    if step < warmup_steps:
        return warmup(step, warmup_steps)
    decay_steps = total_steps - warmup_steps
    progress = 1.0 if decay_steps <= 0 else min(max((step - warmup_steps) / decay_steps, 0.0), 1.0)
    return decay(progress, min_factor, **options)


def build_scheduler(optimizer: torch.optim.Optimizer, *, schedule: str, total_steps: int,
                    warmup_steps: int, min_factor: float = 0.01,
                    **options) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR over lr_factor; call .step() once per optimizer update.

    Every param group keeps its own base LR, scaled by the same factor. The factor is a
    functools.partial, so the scheduler pickles and its state_dict round-trips. Bad settings
    (schedule name, step counts, min_factor, decay options) fail here, not mid-training.
    """
    _decay(schedule)
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise InputError(f"warmup_steps {warmup_steps}, total_steps {total_steps}: "
                         f"need 0 <= warmup_steps <= total_steps and total_steps >= 1")
    if not 0 <= min_factor <= 1:
        raise InputError(f"min_factor {min_factor}: must be in [0, 1]")
    factor = functools.partial(lr_factor, schedule=schedule, total_steps=total_steps,
                               warmup_steps=warmup_steps, min_factor=min_factor, **options)
    try:
        factor(total_steps)
    except TypeError as e:
        raise InputError(f"schedule {schedule!r} options {options}: {e}") from None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
