"""run.sh, the front door: every stage that reads a dataset takes --data as the CLI does.

Each test runs a copy of run.sh in a folder of its own (its folds/ and submissions/ stay
there), with the package linked in and a `.venv` whose python is this interpreter, marked
set up for the current requirements.txt so that `setup` installs nothing.
"""
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def front(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("run.sh", "requirements.txt"):
        shutil.copy(ROOT / name, root / name)
    (root / "competition").symlink_to(ROOT / "competition")
    venv = root / ".venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    digest = hashlib.sha256((ROOT / "requirements.txt").read_bytes()).hexdigest()
    (venv / ".requirements.sha256").write_text(digest + "\n")
    return root


def run_sh(root, *args, data=None):
    env = {k: v for k, v in os.environ.items() if k != "DATA"}
    if data is not None:
        env["DATA"] = str(data)
    return subprocess.run(["bash", str(root / "run.sh"), *map(str, args)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_folds_takes_data_from_the_command_line(front, synthetic):
    out = run_sh(front, "folds", "--data", synthetic, "--n-folds", "3", "--out", "f.csv")
    assert out.returncode == 0, out.stderr
    assert "setup: installing" not in out.stdout  # the venv was reused
    folds = pd.read_csv(front / "f.csv")
    assert sorted(folds.ImageId) == sorted(p.name for p in (synthetic / "train_images").iterdir())
    assert sorted(set(folds.fold)) == [0, 1, 2]
    out = run_sh(front, "folds", f"--data={synthetic}", "--n-folds", "2", "--out", "g.csv")
    assert out.returncode == 0, out.stderr
    assert sorted(set(pd.read_csv(front / "g.csv").fold)) == [0, 1]


@pytest.mark.parametrize("stage", ["folds", "fold0", "oof"])
def test_a_missing_dataset_is_one_line_naming_the_folder_given(front, tmp_path, stage):
    missing = tmp_path / "no-such-data"
    out = run_sh(front, stage, "--data", missing)
    assert out.returncode == 2
    assert out.stderr.startswith(f"error: no Kaggle data in {missing} (no train.csv)")
    assert len(out.stderr.strip().splitlines()) == 1
    out = run_sh(front, stage, data=missing)  # DATA= still works
    assert out.returncode == 2 and f"no Kaggle data in {missing} " in out.stderr


def test_fold_k_makes_the_folds_of_the_dataset_given(front, synthetic):
    """fold0 --data: folds/folds.csv is made from that dataset, and train gets it (a config
    train refuses stops the run right after, with train's own one line)."""
    out = run_sh(front, "fold0", "--data", synthetic, "--epochs", "0")
    assert out.returncode == 2, out.stderr
    assert "epochs 0: must be at least 1" in out.stderr
    folds = pd.read_csv(front / "folds" / "folds.csv")
    assert len(folds) == len(list((synthetic / "train_images").iterdir()))


def test_oof_takes_data_from_the_command_line(front, synthetic):
    out = run_sh(front, "oof", "--data", synthetic, "--runs", "no-such-runs")
    assert out.returncode == 2
    assert "no Kaggle data" not in out.stderr
    assert "no-such-runs" in out.stderr and "no run folder" in out.stderr
