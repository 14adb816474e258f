"""The stages as a user runs them: `python -m competition ...` in a subprocess."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd=ROOT):
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    return subprocess.run([sys.executable, "-m", "competition", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def test_help_lists_the_stages():
    out = run("--help")
    assert out.returncode == 0
    for stage in ("synth", "folds", "check", "baseline", "validate", "score", "train", "oof",
                  "search", "predict", "bench"):
        assert stage in out.stdout


def test_folds_score_validate_chain(synthetic, tmp_path):
    folds = tmp_path / "folds.csv"
    out = run("folds", "--data", synthetic, "--n-folds", "3", "--seed", "1", "--out", folds)
    assert out.returncode == 0, out.stderr
    assert "all" in out.stdout and folds.exists()
    again = tmp_path / "again.csv"
    run("folds", "--data", synthetic, "--n-folds", "3", "--seed", "1", "--out", again)
    assert folds.read_bytes() == again.read_bytes()

    sub = tmp_path / "empty.csv"
    assert run("baseline", "--sample", synthetic / "sample_submission.csv", "--out", sub
               ).returncode == 0
    out = run("validate", "--submission", sub, "--sample", synthetic / "sample_submission.csv")
    assert out.returncode == 0 and "valid, 48 rows" in out.stdout

    # the truth scored against itself is perfect; the empty submission scores the baseline
    out = run("score", "--truth", synthetic / "test_truth.csv", "--submission",
              synthetic / "test_truth.csv", "--json")
    assert out.returncode == 0, out.stderr
    perfect = json.loads(out.stdout.strip().splitlines()[-1])
    out = run("score", "--truth", synthetic / "test_truth.csv", "--submission", sub, "--json")
    empty = json.loads(out.stdout.strip().splitlines()[-1])
    assert empty["pairs"] == 48 and set(empty["per_class"]) == {"1", "2", "3", "4"}
    assert empty["mean_dice"] == pytest.approx(empty["all_empty_baseline"])
    assert 0.5 < empty["mean_dice"] < 1.0
    # the truth file lists only present defects: scored over its own images only
    assert perfect["mean_dice"] == 1.0


def test_check_decodes_everything(synthetic):
    out = run("check", "--data", synthetic)
    assert out.returncode == 0, out.stderr
    assert "60 train images" in out.stdout and "12 test images" in out.stdout


def run_here(capsys, *args):
    """`run` in this process (no interpreter start-up): exit status, stdout and stderr."""
    from types import SimpleNamespace

    from competition.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)


def one_line_error(out, *parts):
    """Exit 2, no traceback, one `error:` line (the last; a progress bar may precede it)."""
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert "Traceback" not in out.stderr, out.stderr
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], out.stderr
    for part in parts:
        assert str(part) in lines[-1]


def test_bad_inputs_give_one_line_and_exit_2(tmp_path, synthetic, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("ImageId,ClassId,EncodedPixels\na.jpg,3,10 5 12 1\n")
    # bench rle --real reads its file before timing anything
    one_line_error(run_here(capsys, "bench", "rle", "--real", bad), bad, "line 2", "'12 1'")
    (tmp_path / "none.csv").write_text("ImageId,ClassId,EncodedPixels\n")
    one_line_error(run_here(capsys, "bench", "rle", "--real", tmp_path / "none.csv"),
                   "no masks to time")
    one_line_error(run("score", "--truth", bad, "--submission", bad), bad, "line 2", "'12 1'")
    one_line_error(run("folds", "--data", tmp_path / "nowhere"), "nowhere")
    one_line_error(run("validate", "--submission", bad, "--sample",
                       synthetic / "sample_submission.csv"), bad, "line 2")
    one_line_error(run("synth", "--out", tmp_path / "s", "--train", "0"), "--train 0")


def test_score_against_the_truth_of_other_images_is_refused(tmp_path, capsys):
    """Every pair would be empty against empty: a perfect 1.00000 that means nothing."""
    submission, truth = tmp_path / "submission.csv", tmp_path / "truth.csv"
    submission.write_text("ImageId,ClassId,EncodedPixels\na.jpg,1,1 3\na.jpg,2,\n")
    truth.write_text("ImageId,ClassId,EncodedPixels\nb.jpg,1,1 3\n")
    out = run_here(capsys, "score", "--truth", truth, "--submission", submission)
    one_line_error(out, truth, submission, "none of the 1 images")
    assert out.stdout == "" and len(out.stderr.splitlines()) == 1, "one line, nothing else"
    # a truth file without rows is the truth of images without defects: scored
    truth.write_text("ImageId,ClassId,EncodedPixels\n")
    assert run_here(capsys, "score", "--truth", truth, "--submission", submission
                    ).returncode == 0


def test_failed_stage_keeps_previous_output(tmp_path, synthetic):
    out_csv = tmp_path / "folds.csv"
    out_csv.write_text("keep me\n")
    one_line_error(run("folds", "--data", synthetic, "--n-folds", "1000", "--out", out_csv),
                   "--n-folds 1000")
    assert out_csv.read_text() == "keep me\n"


def test_bad_images_give_one_line_and_exit_2(tmp_path, synthetic):
    import shutil

    import cv2
    import numpy as np

    data = tmp_path / "data"
    shutil.copytree(synthetic, data)
    names = sorted(p.name for p in (data / "train_images").iterdir())
    cv2.imwrite(str(data / "train_images" / names[0]), np.zeros((256, 800, 3), np.uint8))
    one_line_error(run("folds", "--data", data, "--out", tmp_path / "f.csv"),
                   names[0], "800x256")
    (data / "train_images" / names[0]).write_bytes(b"\xff\xd8 truncated")
    one_line_error(run("check", "--data", data), names[0], "unreadable image")


def test_benches_run_small():
    # the benches check our kernels against the numpy ones before timing; no time asserted
    out = run("bench", "rle", "--masks", "3", "--repeat", "1")
    assert out.returncode == 0, out.stderr
    assert "encode" in out.stdout and "decode" in out.stdout and out.stdout.count("x\n") == 2
    out = run("bench", "score", "--images", "30")
    assert out.returncode == 0, out.stderr
    assert "120 pairs (30 images x 4 classes)" in out.stdout
    out = run("bench", "train", "--preset", "demo_cpu", "--batch-size", "2", "--steps", "1",
              "--warmup", "0", "--images", "16")
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith(("pipeline", "plain"))]
    assert len(rows) == 2 and rows[0].split()[-3] == "1.00"  # ratios are to the plain loop
    loader = [line for line in out.stdout.splitlines() if line.startswith(("no cache", "ram",
                                                                           "disk"))]
    assert "loader alone, best of 3" in out.stdout and len(loader) == 3
    assert loader[0].split()[-2:] == ["1.00", "-"]  # no cache: the base, nothing to fill
    out = run("bench", "predict", "--preset", "demo_cpu", "--images", "2", "--models", "2",
              "--batch-size", "1", "--workers", "0", "--masks-pp", "16")
    assert out.returncode == 0, out.stderr
    assert "one model, one view" in out.stdout and "2 folds x 3 views" in out.stdout
    assert "one model, one view, ram cache (warm)" in out.stdout
    assert "projected: 5,506 test images x 2 folds x 3 views in" in out.stdout
    assert "16 masks of 256x1600" in out.stdout and "ratio" in out.stdout


def test_tta_help_names_every_view():
    from competition.cli.options import TTA_HELP
    from competition.infer.ensemble import TTA

    assert TTA_HELP == ", ".join(TTA)
