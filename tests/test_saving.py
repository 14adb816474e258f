"""Crash-safe saving (train/saving.py): a run killed at any point of an epoch's end and
resumed ends with the best.pt an uninterrupted run ends with; --overwrite clears the old
run's files; a best.pt that is not the one last.pt records is said and repaired."""
import os
import subprocess
import sys

import pytest
import torch

from competition.model import checkpoint
from competition.train import saving
from test_cli import ROOT
from test_train import cli_args, folds_csv  # noqa: F401, F811 (a fixture)

SCORES = "0.5,0.8,0.6"  # epoch 2 is the best, epoch 3 does not improve on it


def probe(synthetic, folds_csv, out, kill="", *extra):
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", PYTHONPATH=str(ROOT),
               KILL_AT=kill, SCORES=SCORES)
    args = [sys.executable, str(ROOT / "tests" / "kill_probe.py"),
            *map(str, cli_args(synthetic, folds_csv, out, "--epochs", 3, *extra))]
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def uninterrupted(synthetic, folds_csv, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("whole") / "run"
    done = probe(synthetic, folds_csv, out)
    assert done.returncode == 0, done.stderr[-2000:]
    return checkpoint.load(out / "best.pt")


@pytest.mark.slow
@pytest.mark.parametrize("kill", ["best.pt:2:after", "last.pt:2:after"])
def test_a_run_killed_at_an_epochs_end_resumes_to_the_same_best(
        synthetic, folds_csv, tmp_path, uninterrupted, kill):  # noqa: F811
    """SIGKILL of a real training process between best.pt and last.pt, and after last.pt,
    of the best epoch (2), then --resume (a kill before best.pt is one mid-epoch, which
    test_train's kill test covers): best.pt holds epoch 2 with
    the uninterrupted run's score and weights, bit for bit (one process, no loader workers:
    exact resume). Before best.pt was written first, a kill between last.pt and best.pt left
    epoch 1 in best.pt for good."""
    out = tmp_path / "run"
    killed = probe(synthetic, folds_csv, out, kill)
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = probe(synthetic, folds_csv, out, "", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    best = checkpoint.load(out / "best.pt")
    assert best["epoch"] == uninterrupted["epoch"] == 2
    assert best["score"]["score"] == uninterrupted["score"]["score"] == 0.8
    assert same_weights(best["model"], uninterrupted["model"])
    assert same_weights(best["ema"], uninterrupted["ema"])
    assert not (out / saving.PREVIOUS).exists()
    assert checkpoint.load(out / "last.pt")["best_epoch"] == 2
    if kill == "best.pt:2:after":  # the one window where best.pt was ahead of last.pt
        assert f"put back epoch 1 from {saving.PREVIOUS}" in resumed.stdout


def fake_best(path, epoch, score):
    checkpoint.save(path, {"config": {}, "model": {"w": torch.full((2,), float(epoch))},
                           "ema": None, "epoch": epoch, "step": epoch * 10,
                           "score": {"score": score}})


def last_state(epoch, best, best_epoch=None, result=None):
    history = [{"epoch": e + 1, "best": b} for e, b in enumerate(best)]
    state = {"config": {}, "model": {"w": torch.full((2,), float(epoch))}, "ema": None,
             "epoch": epoch, "step": epoch * 10, "best": max(best), "history": history}
    if best_epoch is not None:
        state["best_epoch"] = best_epoch
    if result is not None:
        state["result"] = result
    return state


def test_best_epoch_is_the_first_to_reach_the_run_s_best():
    history = [{"epoch": 1, "best": 0.5}, {"epoch": 2, "best": 0.8}, {"epoch": 3, "best": 0.8}]
    assert saving.best_epoch(history, 0.8) == 2
    assert saving.best_epoch(history, 0.5) == 1 and saving.best_epoch([], -1.0) == 0


def test_reconcile_says_nothing_when_best_pt_is_the_recorded_one(tmp_path):
    fake_best(tmp_path / "best.pt", 2, 0.8)
    fake_best(tmp_path / saving.PREVIOUS, 1, 0.5)  # left by a kill after last.pt
    assert saving.reconcile_best(tmp_path, last_state(3, [0.5, 0.8, 0.8])) is None
    assert not (tmp_path / saving.PREVIOUS).exists()


def test_reconcile_puts_back_the_previous_best_after_a_kill_between_the_writes(tmp_path):
    fake_best(tmp_path / "best.pt", 3, 0.9)  # epoch 3 of a run whose last.pt says 2
    fake_best(tmp_path / saving.PREVIOUS, 2, 0.8)
    said = saving.reconcile_best(tmp_path, last_state(2, [0.5, 0.8]))
    assert said.startswith(f"resume: {tmp_path / 'best.pt'} held epoch 3 (0.9000), an epoch")
    assert checkpoint.load(tmp_path / "best.pt")["epoch"] == 2
    assert not (tmp_path / saving.PREVIOUS).exists()


def test_reconcile_rewrites_best_pt_from_last_pt_when_the_last_epoch_is_the_best(tmp_path):
    """A run saved in the old order (last.pt, then best.pt) killed between the two."""
    fake_best(tmp_path / "best.pt", 1, 0.5)
    state = last_state(2, [0.5, 0.8], best_epoch=2, result={"score": 0.8, "mean_dice": 0.8})
    said = saving.reconcile_best(tmp_path, state)
    assert "rewrote best.pt from last.pt" in said and "\n" not in said
    best = checkpoint.load(tmp_path / "best.pt")
    assert best["epoch"] == 2 and best["score"] == {"score": 0.8, "mean_dice": 0.8}
    assert torch.equal(best["model"]["w"], torch.full((2,), 2.0))


def test_reconcile_warns_when_no_file_holds_the_recorded_best(tmp_path):
    fake_best(tmp_path / "best.pt", 1, 0.5)
    said = saving.reconcile_best(tmp_path, last_state(3, [0.5, 0.8, 0.8]))  # best: epoch 2
    assert said.startswith("warning: ") and "records epoch 2 (0.8000)" in said
    assert checkpoint.load(tmp_path / "best.pt")["epoch"] == 1  # nothing better to put there


def test_keep_previous_links_best_pt_and_does_nothing_without_one(tmp_path):
    saving.keep_previous(tmp_path)
    assert not (tmp_path / saving.PREVIOUS).exists()
    fake_best(tmp_path / "best.pt", 1, 0.5)
    saving.keep_previous(tmp_path)
    assert (tmp_path / saving.PREVIOUS).read_bytes() == (tmp_path / "best.pt").read_bytes()


def test_overwrite_clears_every_file_of_the_old_run(tmp_path):
    """averaged.pt above all: `--checkpoint-name averaged.pt` would pick up the old run's."""
    out = tmp_path / "run"
    (out / "kept").mkdir(parents=True)
    names = [*saving.RUN_FILES, "events.out.tfevents.123.host.1.0", "kept/epoch001.pt"]
    for name in names:
        (out / name).write_text("old")
    (out / "notes.txt").write_text("the user's")
    removed = saving.clear_run(out)
    assert sorted(removed) == sorted([*saving.RUN_FILES, "kept/",
                                      "events.out.tfevents.123.host.1.0"])
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert saving.clear_run(tmp_path / "none") == []
