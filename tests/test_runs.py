"""`python -m competition runs`: the table of runs, on run folders written here by hand with
the files train and oof write (config.json, history.csv with train.history_columns' names,
postprocess.json), so every value in the table is known in advance. Nothing is trained."""
import math

import pandas as pd
import pytest

from competition.train import history as history_lib
from competition.model.config import build_config, to_dict
from competition.files import write_csv, write_json
from test_cli import one_line_error, run_here

SEGMENTER = build_config("demo_cpu", cls_weight=0.2)  # planned 6 epochs, 3 done below
UNET = build_config(arch="unet", lr=5e-4, num_workers=2, keep_top=3)  # 2 of 30 epochs done
CLASSIFIER = build_config("demo_cpu_cls", epochs=2)


def write_run(folder, config, results):
    """config.json and history.csv of a run whose epochs evaluated to `results` (evaluate's
    dicts), with the columns fit writes."""
    rows, best = [], -1.0
    for epoch, result in enumerate(results, 1):
        score = result.get("mean_dice", result.get("mean_auc")) or 0.0
        best = max(best, score)
        rows.append({"epoch": epoch, "step": 10 * epoch, "lr": 1e-3, "train_loss": 0.5,
                     **history_lib.history_columns(result), "best": best,
                     "planned_epochs": config.epochs})
    write_json(folder / "config.json", to_dict(config))
    write_csv(folder / "history.csv", pd.DataFrame(rows))


def dice(mean, per_class, auc=None):
    result = {"loss": 0.3, "mean_dice": mean, "all_empty_baseline": 0.85,
              "per_class": dict(zip("1234", per_class))}
    if auc is not None:  # an image-level head
        result.update({"mean_auc": auc, "auc": dict(zip("1234", [auc] * 4))})
    return result


def auc(mean, per_class):
    return {"loss": 0.2, "mean_auc": mean, "auc": dict(zip("1234", per_class)),
            "f1": dict(zip("1234", [0.5] * 4)), "f1_threshold": dict(zip("1234", [0.3] * 4))}


def postprocess(path, cv, *segmenters, classifiers=()):
    """A postprocess.json of oof with one fold of the given checkpoints."""
    write_json(path / "postprocess.json", {
        "version": 2, "oof_mean_dice": cv, "ensemble": {"fold0": {
            "segmenters": [{"checkpoint": c, "weight": 1.0} for c in segmenters],
            "classifiers": [{"checkpoint": c, "weight": 1.0} for c in classifiers]}}})


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """folds/{a,b,c}/fold0 and submissions/ in the current folder, as in the repository."""
    monkeypatch.chdir(tmp_path)
    folds = tmp_path / "folds"
    for name in "abc":
        (folds / name / "fold0").mkdir(parents=True)
    write_run(folds / "a" / "fold0", SEGMENTER, [
        dice(0.80, [0.7, 0.8, 0.9, 0.6], auc=0.6),
        dice(0.86, [0.9, 0.95, 0.7, 0.8], auc=0.7),
        dice(0.86, [0.1, 0.1, 0.1, 0.1], auc=0.8)])  # a tie: best.pt stays at epoch 2
    write_run(folds / "b" / "fold0", UNET, [dice(0.90, [0.91, 0.92, 0.93, 0.94]),
                                            dice(0.88, [0.9, 0.9, 0.9, 0.9])])
    write_run(folds / "c" / "fold0", CLASSIFIER, [auc(None, [None] * 4),
                                                  auc(0.7, [0.6, None, 0.8, 0.7])])
    (folds / "a" / "fold0" / "oof").mkdir()  # oof statistics: not a run
    subs = tmp_path / "submissions"
    for name in ("x", "x/all", "y", "z", "w"):
        (subs / name).mkdir(parents=True)
    postprocess(subs / "x", 0.91, "folds/a/fold0/best.pt", classifiers=["folds/c/fold0/best.pt"])
    postprocess(subs / "x" / "all", 0.91, "folds/a/fold0/best.pt")  # a tie: x is named
    postprocess(subs / "z", 0.92, "folds/a/fold0/best.pt")  # a's best
    postprocess(subs / "y", 0.95, "folds/a/fold0/best.pt", "folds/b/fold0/best.pt")  # neither's
    postprocess(subs / "w", 0.89, "folds/b/fold0/averaged.pt")
    (subs / "v1").mkdir()  # written before oof recorded its ensemble: names no run
    write_json(subs / "v1" / "postprocess.json", {"version": 1, "oof_mean_dice": 0.99})
    return tmp_path


def table(capsys, *args):
    out = run_here(capsys, "runs", *args, "--csv", "table.csv")
    assert out.returncode == 0, out.stderr
    return out, pd.read_csv("table.csv")


def test_the_table_of_three_runs(workspace, capsys):
    out, frame = table(capsys)  # defaults: folds/, submissions/
    rows = {r["run"]: r for r in frame.to_dict("records")}
    assert list(rows) == ["a/fold0", "b/fold0", "c/fold0"]
    a, b, c = rows["a/fold0"], rows["b/fold0"], rows["c/fold0"]
    assert (a["task"], a["model"], a["epochs"], a["metric"]) == (
        "segment", "deeplabv3/resnet18", "3/6", "dice")
    assert (a["best_epoch"], a["best"]) == (2, 0.86)
    assert [a[f"c{k}"] for k in range(1, 5)] == [0.9, 0.95, 0.7, 0.8]
    assert (a["oof_cv"], a["oof_in"]) == (0.92, "submissions/z")
    assert (b["model"], b["epochs"], b["best_epoch"], b["best"]) == ("unet/resnet34", "2/30",
                                                                     1, 0.9)
    assert [b[f"c{k}"] for k in range(1, 5)] == [0.91, 0.92, 0.93, 0.94]
    assert b["preset"] == "deeplabv3_r34"
    assert b["options"] == "arch=unet lr=0.0005", "num_workers, keep_top: runtime fields"
    assert (b["oof_cv"], b["oof_in"]) == (0.89, "submissions/w"), "averaged.pt is b's too"
    # a classifier: epoch 1's undefined AUC counts 0; class 2's is undefined at the best epoch
    assert (c["task"], c["model"], c["metric"], c["best_epoch"], c["best"]) == (
        "classify", "resnet18", "auc", 2, 0.7)
    assert [c[f"c{k}"] for k in (1, 3, 4)] == [0.6, 0.8, 0.7] and math.isnan(c["c2"])
    assert math.isnan(c["oof_cv"]) and math.isnan(c["oof_in"]), "empty cells"
    assert (c["preset"], c["options"]) == ("demo_cpu_cls", "epochs=2"), "over its preset"
    assert (a["preset"], a["options"]) == ("demo_cpu", "cls_weight=0.2")
    # the printed table: a header and one aligned line per run, scores to 4 decimals
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["run", "task", "model", "preset", "epochs", "best_epoch",
                                "metric", "best", "c1", "c2", "c3", "c4", "oof_cv", "oof_in",
                                "options"]
    assert lines[1].split()[:14] == ["a/fold0", "segment", "deeplabv3/resnet18", "demo_cpu",
                                     "3/6", "2", "dice", "0.8600", "0.9000", "0.9500", "0.7000", "0.8000",
                                     "0.9200", "submissions/z"]
    assert lines[3].split()[8:14] == ["0.6000", "-", "0.8000", "0.7000", "-", "-"]
    assert len({line.index(" 0.") for line in lines[1:4]}) == 1, "aligned columns"
    assert lines[-1] == "wrote table.csv"


@pytest.mark.parametrize("column, order", [
    ("best", ["b", "a", "c"]),  # scores: descending
    ("oof_cv", ["a", "b", "c"]),  # c has none: last
    ("c2", ["a", "b", "c"]),
    ("task", ["c", "a", "b"]),  # text: ascending, ties in run order
    ("run", ["a", "b", "c"]),
    ("epochs", ["c", "b", "a"]),  # done, then planned: 2/2, 2/30, 3/6
])
def test_sorting(workspace, capsys, column, order):
    _, frame = table(capsys, "--sort", column)
    assert [r.split("/")[0] for r in frame.run] == order


def test_markdown_several_folders_and_no_oof(workspace, capsys):
    out = run_here(capsys, "runs", "folds/a", "folds/b", "--markdown", "--submissions",
                   "submissions/y")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("| run | task | model | preset | epochs |")
    assert lines[1].startswith("|---|")
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| folds/a/fold0", "| folds/b/fold0"]
    assert all(line.split(" | ")[12] == "-" for line in lines[2:]), "y scored a and b together"


def test_a_folder_without_runs_is_one_line(workspace, capsys):
    (workspace / "empty").mkdir()
    out = run_here(capsys, "runs", "empty")
    assert out.returncode == 0 and out.stdout.strip() == (
        "no runs below empty (a run is a folder with config.json and history.csv)")


@pytest.mark.parametrize("damage, parts", [
    (lambda run: (run / "history.csv").write_text("epoch,val_loss\n1,0.5\n"),
     ["folds/a/fold0/history.csv", "no column 'val_dice'"]),
    (lambda run: (run / "history.csv").write_text("epoch,val_dice\n"),
     ["folds/a/fold0/history.csv", "no column 'dice_1'"]),
    (lambda run: (run / "history.csv").write_bytes(b"\xff\xfe\x00"),
     ["folds/a/fold0/history.csv", "unreadable"]),
    (lambda run: (run / "config.json").write_text("{\"epochs\": 3,"),
     ["folds/a/fold0/config.json", "unreadable"]),
    (lambda run: (run / "config.json").write_text("{\"epochs\": 0}"),
     ["folds/a/fold0/config.json", "does not fit this version", "epochs 0"]),
    (lambda run: (run / "config.json").write_text("{\"lr_decay\": 3}"),
     ["folds/a/fold0/config.json", "unknown config field 'lr_decay'"]),
])
def test_a_bad_run_file_is_one_line_naming_it(workspace, capsys, damage, parts):
    damage(workspace / "folds" / "a" / "fold0")
    one_line_error(run_here(capsys, "runs"), *parts)


def test_bad_options_are_one_line(workspace, capsys):
    one_line_error(run_here(capsys, "runs", "--sort", "score"),
                   "--sort score: unknown column; valid: run, task, model", "oof_cv")
    one_line_error(run_here(capsys, "runs", "nowhere"), "nowhere: no such folder")
    one_line_error(run_here(capsys, "runs", "--submissions", "nowhere"),
                   "--submissions nowhere: no such folder")
    (workspace / "submissions" / "x" / "postprocess.json").write_text('{"ensemble": 3}')
    one_line_error(run_here(capsys, "runs"), "submissions/x/postprocess.json",
                   "not a postprocess.json of oof")
