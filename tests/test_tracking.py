"""TensorBoard events and curves.png of a training run (tracking.py, curves.py) and the
`curves` command: what the event files hold, read back with TensorBoard's own reader, is
what history.csv and the loop computed."""
import io
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from competition.train import curves
from competition.train import tracking
from competition.train import fit as train_lib
from competition.train import epoch as epoch_lib
from competition.train import history as history_lib
from competition.train import runtime as runtime_lib
from competition.errors import InputError
from competition.files import write_csv
from competition.data.labels import load_train
from competition.train.schedules import lr_factor
from test_cli import one_line_error, run_here
from test_train import NanAfter, ScriptedLoss, cli_args, tiny, tiny_step_setup

F32 = dict(rel=1e-6)  # TensorBoard keeps scalars as float32
PNG_SIZE = {1: (1100, 360), 2: (1100, 720)}  # curves.png, rows of panels -> (width, height)


def events(folder) -> EventAccumulator:
    accumulator = EventAccumulator(str(folder), size_guidance={IMAGES: 0})  # 0: keep all
    accumulator.Reload()
    return accumulator


def scalars(accumulator, tag) -> dict[int, float]:
    return {e.step: e.value for e in accumulator.Scalars(tag)}


def small_folds(synthetic, path, n_train, n_val):
    """Fold 0: the first n_val synthetic images with a defect (so 4 of them are drawn as
    overlays); fold 1: the first n_train others. A fold that trains and validates quickly."""
    image_ids, labels = load_train(synthetic)
    val = [i for i in image_ids if i in set(labels.ImageId)][:n_val]
    train = [i for i in image_ids if i not in val][:n_train]
    write_csv(path, pd.DataFrame({"ImageId": val + train, "fold": [0] * n_val + [1] * n_train}))
    return path


# --- a real run: 30 training images (7 updates an epoch), 6 validation images --------------

@pytest.fixture(scope="module")
def tracked(synthetic, tmp_path_factory):
    """A 2-epoch run, its loss read every 4 updates (after updates 4 and 7 of an epoch),
    that stops on a NaN loss in epoch 2 and is resumed from last.pt (epoch 1, step 7), every
    curves.png redraw recorded -> (run folder, history.csv, the events the stopped run left,
    the history rows of each redraw)."""
    root = tmp_path_factory.mktemp("tracked")
    folds, out = small_folds(synthetic, root / "folds.csv", 30, 6), root / "run"
    drawn, real, config = [], curves.write_curves, tiny(encoder_lr=5e-4)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(epoch_lib, "CHECK_EVERY", 4)
        patch.setattr(curves, "write_curves",
                      lambda path, runs: drawn.append(runs[0][1].copy()) or real(path, runs))
        with pytest.MonkeyPatch.context() as nan:
            NanAfter.calls = 7  # NaN from the 8th training call on: all of epoch 2
            nan.setattr(train_lib, "MaskLoss", NanAfter)
            with pytest.raises(InputError, match="not finite .* epoch 2"):
                train_lib.fit(config, synthetic, 0, out, folds)
        stopped = events(out)
        train_lib.fit(config, synthetic, 0, out, folds, resume=True)
    return out, pd.read_csv(out / "history.csv"), stopped, drawn


def test_a_nan_loss_shows_and_a_resumed_run_continues_the_steps(tracked):
    """The stopped run logged its NaN interval (and closed its writer on the way out, so
    every event is on disk); the resumed one appends a second event file whose steps go on
    from last.pt's, hiding what the stopped run logged after it: each step once."""
    out, _, stopped, _ = tracked
    loss = scalars(stopped, "train/loss")
    assert sorted(loss) == [4, 7, 11] and math.isnan(loss[11])
    assert scalars(stopped, "train/skipped_updates")[11] == 4.0
    logged = events(out)
    assert len(list(out.glob("events.out.tfevents.*"))) == 2
    for tag in ("train/loss", "lr/encoder", "lr/head", "train/images_per_s"):
        assert [e.step for e in logged.Scalars(tag)] == [4, 7, 11, 14], tag
    assert all(math.isfinite(v) for v in scalars(logged, "train/loss").values())
    for tag in ("val/dice", "val/loss", "train/epoch"):
        assert [e.step for e in logged.Scalars(tag)] == [7, 14], tag


def test_epoch_scalars_equal_history_csv(tracked):
    out, history, _, _ = tracked
    logged = events(out)
    steps = history.step.tolist()
    assert steps == [7, 14]
    for tag, column in (("val/loss", "val_loss"), ("val/dice", "val_dice"),
                        ("val/all_empty", "all_empty"), ("lr/head", "lr"),
                        *[(f"val/dice_{c}", f"dice_{c}") for c in range(1, 5)]):
        values = scalars(logged, tag)
        for step, expected in zip(steps, history[column]):
            assert values[step] == pytest.approx(expected, **F32), (tag, step)
    assert list(scalars(logged, "train/epoch").values()) == [1.0, 2.0]
    assert not any(t.startswith("val/auc") for t in logged.Tags()["scalars"]), "no head"


def test_interval_scalars_are_the_training_loss_and_both_learning_rates(tracked):
    """Read after updates 4 and 7 of each epoch: the interval losses, weighted by their
    updates (4 images each), give the epoch's train_loss; the encoder's LR is its base LR
    on the schedule, beside the head's."""
    out, history, _, _ = tracked
    logged = events(out)
    loss = scalars(logged, "train/loss")
    assert sorted(loss) == [4, 7, 11, 14]
    for (first, last), expected in zip(((4, 7), (11, 14)), history.train_loss):
        assert (4 * loss[first] + 3 * loss[last]) / 7 == pytest.approx(expected, **F32)
    config = tiny(encoder_lr=5e-4)
    plan = train_lib.schedule_args(config, updates=7)
    for step, lr in scalars(logged, "lr/encoder").items():
        assert lr == pytest.approx(5e-4 * lr_factor(step, **plan), **F32)
        assert scalars(logged, "lr/head")[step] == pytest.approx(
            config.lr * lr_factor(step, **plan), **F32)
    assert all(v > 0 for v in scalars(logged, "train/images_per_s").values())
    assert set(scalars(logged, "train/skipped_updates").values()) == {0.0}


def test_the_overlays_are_logged_every_epoch(tracked):
    out, _, _, _ = tracked
    images = events(out).Images("val/overlays")
    assert [e.step for e in images] == [7, 14]
    # 4 rows: 16 x (4 x (16 x 256/1600 + 0.45) + 0.5) inches at 50 dpi
    assert {(e.width, e.height) for e in images} == {(800, 627)}
    assert Image.open(io.BytesIO(images[0].encoded_image_string)).size == (800, 627)


def test_curves_png_is_redrawn_every_epoch_from_the_history_rows(tracked, tmp_path, capsys):
    out, history, _, drawn = tracked
    assert [len(rows) for rows in drawn] == [1, 2], "after each epoch, from every row so far"
    pd.testing.assert_frame_equal(drawn[-1], history, check_dtype=False)
    with Image.open(out / "curves.png") as image:
        assert image.format == "PNG" and image.size == PNG_SIZE[2]  # loss, LR; Dice
        image.verify()
    done = run_here(capsys, "curves", out, "--out", tmp_path / "again.png")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "again.png").read_bytes() == (out / "curves.png").read_bytes(), \
        "the command redraws the same figure from history.csv"


def test_tensorboard_false_writes_no_event_file_and_a_new_run_drops_stale_ones(
        synthetic, tmp_path, capsys):
    folds = small_folds(synthetic, tmp_path / "folds.csv", 8, 4)
    out = tmp_path / "run"
    out.mkdir()
    (out / "events.out.tfevents.1.old.1.0").write_bytes(b"of a run this one overwrites")
    done = run_here(capsys, *cli_args(synthetic, folds, out, "--epochs", 1,
                                      "--tensorboard", "false"))
    assert done.returncode == 0, done.stderr
    assert not list(out.glob("events.out.tfevents.*"))
    assert (out / "curves.png").is_file(), "curves.png is drawn either way"


# --- the hooks on their own -------------------------------------------------------------------

def test_interval_losses_are_the_means_since_the_last_read_and_a_nan_shows(tmp_path,
                                                                            monkeypatch):
    """fp16 (a GradScaler) with non-finite losses on calls 3 and 6..10, read every 5 updates:
    the interval losses are the means of the finite losses since the last read, NaN for the
    interval without one (the run goes on: 5 in a row are absorbed), the skipped updates are
    counted, and both parameter groups' LRs follow their schedule."""
    monkeypatch.setattr(epoch_lib, "CHECK_EVERY", 5)
    model, _, _, scaler, batches, config = tiny_step_setup(scaled=True)
    optimizer = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.05},
                                 {"params": [*model[1:].parameters()], "lr": 0.1}])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (1 + step))
    loss_fn = ScriptedLoss(bad={3, 6, 7, 8, 9, 10})
    tracker = tracking.Tracker(tmp_path, SummaryWriter(tmp_path))
    result = epoch_lib.train_one_epoch(model, loss_fn, optimizer, scheduler, scaler, None,
                                       batches, config, runtime_lib.Runtime(), 0, None,
                                       tracker=tracker)
    tracker.close()
    assert result["skipped"] == 6
    logged = events(tmp_path)
    loss = scalars(logged, "train/loss")
    assert sorted(loss) == [5, 10, 12]
    assert loss[5] == pytest.approx(np.mean(loss_fn.finite[:4]), **F32)  # calls 1, 2, 4, 5
    assert math.isnan(loss[10])
    assert loss[12] == pytest.approx(np.mean(loss_fn.finite[4:]), **F32)  # calls 11, 12
    assert scalars(logged, "train/skipped_updates") == {5: 1.0, 10: 6.0, 12: 6.0}
    for step in (5, 10, 12):
        assert scalars(logged, "lr/encoder")[step] == pytest.approx(0.05 / (1 + step), **F32)
        assert scalars(logged, "lr/head")[step] == pytest.approx(0.1 / (1 + step), **F32)


def test_epoch_scalars_name_every_validation_column_and_skip_only_undefined_ones():
    result = {"loss": 0.5, "mean_dice": 0.9, "per_class": {"1": 0.8, "2": 1.0, "3": 0.7,
                                                         "4": float("nan")},
              "all_empty_baseline": 0.85, "auc": {"1": 0.6, "2": None, "3": 0.9, "4": 0.7},
              "mean_auc": 0.733}
    scalars = tracking.epoch_scalars({"epoch": 3}, history_lib.history_columns(result))
    assert {k: v for k, v in scalars.items() if k != "val/dice_4"} == {
        "val/loss": 0.5, "val/dice": 0.9, "val/dice_1": 0.8, "val/dice_2": 1.0,
        "val/dice_3": 0.7, "val/all_empty": 0.85, "val/auc": 0.733, "val/auc_1": 0.6,
        "val/auc_3": 0.9, "val/auc_4": 0.7, "train/epoch": 3}
    assert math.isnan(scalars["val/dice_4"]), "a NaN is logged, not dropped"
    classifier = {"loss": 0.3, "auc": {"1": 0.5, "2": 0.6, "3": 0.7, "4": 0.8},
                  "mean_auc": 0.65, "f1": {"1": 0.4, "2": None, "3": 0.5, "4": 0.6},
                  "f1_threshold": {"1": 0.2, "2": None, "3": 0.3, "4": 0.4}}
    tags = set(tracking.epoch_scalars({"epoch": 1}, history_lib.history_columns(classifier)))
    per_class = {f"val/{name}_{c}" for name in ("auc", "f1", "f1_threshold") for c in range(1, 5)}
    assert tags == {"val/loss", "val/auc", "train/epoch",
                    *per_class - {"val/f1_2", "val/f1_threshold_2"}}  # None: undefined


def test_overlay_images_are_the_first_validation_images_with_a_defect():
    encoded = {"b.jpg": {3: "1 5"}, "d.jpg": {1: "1 5"}, "e.jpg": {}, "f.jpg": {4: "1 5"},
               "g.jpg": {2: "1 5"}, "h.jpg": {3: "1 5"}}
    val_ids = ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg", "f.jpg", "g.jpg", "h.jpg"]
    assert tracking.overlay_ids(val_ids, encoded) == ["b.jpg", "d.jpg", "f.jpg", "g.jpg"]
    assert tracking.overlay_ids(val_ids[:3], encoded) == ["b.jpg"]


# --- curves.png and the `curves` command --------------------------------------------------

def history_rows(epochs=3, **columns) -> pd.DataFrame:
    """A history.csv of known values: losses falling, Dice rising per class."""
    e = np.arange(1, epochs + 1)
    rows = {"epoch": e, "step": 10 * e, "lr": 1e-3 / e, "train_loss": 1.0 / e,
            "val_loss": 1.2 / e, "val_dice": 0.8 + 0.01 * e,
            **{f"dice_{c}": 0.5 + 0.1 * c + 0.01 * e for c in range(1, 5)},
            "all_empty": np.full(epochs, 0.86), "best": 0.8 + 0.01 * e}
    return pd.DataFrame({**rows, **columns})


def lines_of(fig) -> dict[str, dict[str, np.ndarray]]:
    """Panel title -> line label -> y values."""
    return {ax.get_title(): {line.get_label(): np.asarray(line.get_ydata(), float)
                             for line in ax.get_lines()} for ax in fig.axes if ax.get_visible()}


def test_the_curves_are_the_history_values():
    frame = history_rows(train_loss=[1.0, float("nan"), 0.5])
    drawn = lines_of(curves.curves_figure([("run", frame)]))
    assert list(drawn) == ["loss", "learning rate (decoder and head)", "validation Dice"]
    np.testing.assert_array_equal(drawn["validation Dice"]["class 3"], frame.dice_3)
    np.testing.assert_array_equal(drawn["validation Dice"]["all empty"], frame.all_empty)
    np.testing.assert_array_equal(drawn["validation Dice"]["mean"], frame.val_dice)
    np.testing.assert_array_equal(drawn["learning rate (decoder and head)"]["LR"], frame.lr)
    np.testing.assert_array_equal(drawn["loss"]["validation"], frame.val_loss)
    assert "train not finite" in drawn["loss"], "the NaN epoch is marked, not just a gap"
    auc = history_rows(val_auc=[0.6, 0.7, 0.8], auc_1=[0.5, None, 0.9], auc_2=0.7, auc_3=0.7,
                       auc_4=0.7)
    drawn = lines_of(curves.curves_figure([("a", frame), ("b", auc)]))
    assert "validation ROC AUC" in drawn
    np.testing.assert_array_equal(drawn["validation ROC AUC"]["class 1"], [0.5, np.nan, 0.9])


def test_the_curves_command_redraws_and_overlays_runs(tmp_path, capsys):
    for name, frame in (("a", history_rows()), ("b", history_rows(epochs=5))):
        (tmp_path / name).mkdir()
        write_csv(tmp_path / name / "history.csv", frame)
    done = run_here(capsys, "curves", tmp_path / "a", tmp_path / "b" / "history.csv")
    assert done.returncode == 0, done.stderr
    assert "5 epoch(s)" in done.stdout
    for name in ("a", "b"):
        with Image.open(tmp_path / name / "curves.png") as image:
            assert image.size == PNG_SIZE[2]
            image.verify()
    done = run_here(capsys, "curves", tmp_path / "a", tmp_path / "b", "--out",
                    tmp_path / "both.png")
    assert done.returncode == 0, done.stderr
    with Image.open(tmp_path / "both.png") as image:
        assert image.format == "PNG" and image.size == PNG_SIZE[2]


def test_a_missing_or_malformed_history_is_one_line_and_exit_2(tmp_path, capsys):
    good = tmp_path / "good"
    good.mkdir()
    write_csv(good / "history.csv", history_rows())
    cases = {"missing": (None, "not found"),
             "no_column": (history_rows().drop(columns="val_loss"), "no column val_loss (a history.csv has epoch,"),
             "no_rows": (history_rows().iloc[:0], "no rows, only a header"),
             "text": (history_rows(val_dice=[0.8, "oops", 0.9]),
                      "history.csv line 3, column 'val_dice': 'oops' is not a number")}
    for name, (frame, message) in cases.items():
        (tmp_path / name).mkdir()
        if frame is not None:
            write_csv(tmp_path / name / "history.csv", frame)
        one_line_error(run_here(capsys, "curves", good, tmp_path / name), name, message)
        assert not (good / "curves.png").exists(), "every run is read before any is drawn"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "history.csv").write_text("")
    one_line_error(run_here(capsys, "curves", tmp_path / "empty"), "empty file")


def test_a_resumed_run_may_switch_tensorboard_on_or_off():
    from competition.model.config import differences

    assert differences(tiny(), tiny(tensorboard=False)) == [], "a runtime field"
