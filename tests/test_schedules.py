import io
import pickle

import pytest
import torch

from competition.train import schedules
from competition.errors import InputError
from competition.train.schedules import build_scheduler, lr_factor

TOTAL, WARMUP, MIN = 40, 8, 0.05


def optimizer(*lrs):
    """SGD with one single-parameter group per base LR."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0])


def run(opt, scheduler, steps):
    """LRs of each group in use at updates 0..steps-1: list of lists."""
    lrs = []
    for _ in range(steps):
        lrs.append([group["lr"] for group in opt.param_groups])
        opt.step()
        scheduler.step()
    return lrs


def test_warmup_by_hand():
    # start 0.01, 10 steps: halfway is 0.01 + 0.99 * 5 / 10 = 0.505
    assert schedules.warmup(0, 10) == pytest.approx(0.01)
    assert schedules.warmup(5, 10) == pytest.approx(0.505)
    assert schedules.warmup(10, 10) == 1.0
    assert schedules.warmup(4, 8, start_factor=0.0) == pytest.approx(0.5)
    assert schedules.warmup(0, 0) == 1.0  # no warmup


def test_cosine_by_hand():
    assert schedules.cosine(0.0, 0.1) == pytest.approx(1.0)
    assert schedules.cosine(0.5, 0.0) == pytest.approx(0.5)  # (1 + cos(pi/2)) / 2
    assert schedules.cosine(1 / 3, 0.0) == pytest.approx(0.75)  # (1 + cos(pi/3)) / 2 = 1.5 / 2
    assert schedules.cosine(0.5, 0.2) == pytest.approx(0.6)  # 0.2 + 0.8 * 0.5
    assert schedules.cosine(1.0, 0.1) == pytest.approx(0.1)


def test_poly_by_hand():
    assert schedules.poly(0.25, 0.0, power=1.0) == pytest.approx(0.75)  # 1 - 0.25
    assert schedules.poly(0.75, 0.2, power=2.0) == pytest.approx(0.25)  # 0.2 + 0.8 * 0.25**2
    assert schedules.poly(0.0, 0.1) == 1.0
    assert schedules.poly(1.0, 0.1) == pytest.approx(0.1)


def test_flat_cosine_by_hand():
    assert schedules.flat_cosine(0.3, 0.0, flat_fraction=0.5) == 1.0
    assert schedules.flat_cosine(0.5, 0.0, flat_fraction=0.5) == 1.0
    # 0.75 is halfway through the cosine part [0.5, 1]: cosine(0.5, 0) = 0.5
    assert schedules.flat_cosine(0.75, 0.0, flat_fraction=0.5) == pytest.approx(0.5)
    # flat_fraction 0 is plain cosine
    assert schedules.flat_cosine(1 / 3, 0.0, flat_fraction=0.0) == pytest.approx(0.75)
    assert schedules.flat_cosine(1.0, 0.1) == pytest.approx(0.1)


def test_lr_factor_by_hand():
    kw = dict(schedule="cosine", total_steps=110, warmup_steps=10, min_factor=0.0)
    assert lr_factor(5, **kw) == pytest.approx(0.505)  # warmup halfway
    assert lr_factor(10, **kw) == 1.0                  # warmup done, progress 0
    assert lr_factor(60, **kw) == pytest.approx(0.5)   # progress (60 - 10) / 100 = 0.5
    assert lr_factor(110, **kw) == pytest.approx(0.0)
    assert lr_factor(500, **kw) == pytest.approx(0.0)  # clamped past the end
    # options reach the decay: poly power 1, progress (35 - 10) / 100 = 0.25 -> 0.75
    assert lr_factor(35, schedule="poly", total_steps=110, warmup_steps=10, min_factor=0.0,
                     power=1.0) == pytest.approx(0.75)
    # no decay steps at all: straight to min_factor at the end of warmup
    assert lr_factor(10, schedule="poly", total_steps=10, warmup_steps=10, min_factor=0.3) == 0.3


@pytest.mark.parametrize("schedule", sorted(schedules.DECAYS))
def test_curve_shape(schedule):
    base = 0.1
    opt = optimizer(base)
    lrs = [lr for lr, in run(opt, build_scheduler(opt, schedule=schedule, total_steps=TOTAL,
                                                  warmup_steps=WARMUP, min_factor=MIN),
                             TOTAL + 5)]
    rising, decaying = lrs[:WARMUP + 1], lrs[WARMUP:]
    assert lrs[0] == pytest.approx(base * 0.01)
    assert all(a < b for a, b in zip(rising, rising[1:]))
    assert lrs[WARMUP] == base  # the peak, exactly
    assert all(a >= b for a, b in zip(decaying, decaying[1:]))
    assert lrs[TOTAL] == pytest.approx(base * MIN)
    assert lrs[TOTAL:] == [lrs[TOTAL]] * 5  # stays at the floor


@pytest.mark.parametrize("schedule", sorted(schedules.DECAYS))
def test_scheduler_follows_lr_factor_in_every_group(schedule):
    opt = optimizer(0.1, 0.01)
    lrs = run(opt, build_scheduler(opt, schedule=schedule, total_steps=TOTAL, warmup_steps=WARMUP,
                                   min_factor=MIN), TOTAL + 2)
    for step, (first, second) in enumerate(lrs):
        factor = lr_factor(step, schedule=schedule, total_steps=TOTAL, warmup_steps=WARMUP,
                           min_factor=MIN)
        assert first == 0.1 * factor
        assert second == 0.01 * factor
        assert first / second == pytest.approx(10.0)


@pytest.mark.parametrize("k", [3, WARMUP, 25])
def test_resume_gives_the_uninterrupted_curve(k):
    settings = dict(schedule="flat_cosine", total_steps=TOTAL, warmup_steps=WARMUP,
                    min_factor=MIN, flat_fraction=0.3)
    opt = optimizer(0.1, 0.02)
    uninterrupted = run(opt, build_scheduler(opt, **settings), TOTAL + 2)

    opt = optimizer(0.1, 0.02)
    scheduler = build_scheduler(opt, **settings)
    before = run(opt, scheduler, k)
    buffer = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)

    opt = optimizer(0.1, 0.02)
    scheduler = build_scheduler(opt, **settings)
    opt.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    after = run(opt, scheduler, TOTAL + 2 - k)
    assert before + after == uninterrupted


def test_scheduler_factor_pickles():
    scheduler = build_scheduler(optimizer(0.1), schedule="poly", total_steps=10, warmup_steps=2)
    factor = pickle.loads(pickle.dumps(scheduler.lr_lambdas[0]))
    assert [factor(s) for s in range(12)] == [scheduler.lr_lambdas[0](s) for s in range(12)]


def test_unknown_schedule_lists_the_valid_ones():
    with pytest.raises(InputError, match="cosine, poly, flat_cosine") as e:
        build_scheduler(optimizer(0.1), schedule="step", total_steps=10, warmup_steps=2)
    assert "'step'" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(InputError, match="cosine, poly, flat_cosine"):
        lr_factor(0, schedule="step", total_steps=10, warmup_steps=2)


@pytest.mark.parametrize("settings", [
    dict(schedule="cosine", total_steps=10, warmup_steps=11),
    dict(schedule="cosine", total_steps=0, warmup_steps=0),
    dict(schedule="cosine", total_steps=10, warmup_steps=-1),
    dict(schedule="cosine", total_steps=10, warmup_steps=2, min_factor=1.5),
    dict(schedule="cosine", total_steps=10, warmup_steps=2, power=2.0),  # not a cosine option
    dict(schedule="poly", total_steps=10, warmup_steps=2, power=0.0),
    dict(schedule="flat_cosine", total_steps=10, warmup_steps=2, flat_fraction=1.0),
])
def test_bad_settings_fail_when_built(settings):
    with pytest.raises(InputError):
        build_scheduler(optimizer(0.1), **settings)
