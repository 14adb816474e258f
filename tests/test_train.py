"""The training loop on tiny synthetic data, on CPU: outputs, exact resume, refusals."""
import dataclasses
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from competition import checkpoint, data as data_lib, rle, train as train_lib
from competition.config import build_config, to_dict
from competition.errors import InputError
from competition.files import write_csv
from competition.folds import make_folds
from competition.images import read_image
from competition.labels import by_image, load_train
from competition.losses import DiceBCELoss
from competition.metric import score_tables
from competition.postprocess import binarize
from test_cli import ROOT, one_line_error, run

TINY = dict(crop_height=64, crop_width=128, epochs=2, batch_size=4, num_workers=0,
            val_batch_size=6, warmup_epochs=0.5, ema_decay=0.9)


def tiny(**overrides):
    return build_config("demo_cpu", **{**TINY, **overrides})


@pytest.fixture(scope="module")
def folds_csv(synthetic, tmp_path_factory):
    image_ids, labels = load_train(synthetic)
    path = tmp_path_factory.mktemp("folds") / "folds.csv"
    write_csv(path, make_folds(image_ids, labels, n_folds=5, seed=0))
    return path


@pytest.fixture(scope="module")
def trained(synthetic, folds_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "fold0"
    row = train_lib.fit(tiny(), synthetic, 0, out, folds_csv)
    return out, row


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_fit_writes_config_checkpoints_and_history(trained):
    out, row = trained
    assert {"config.json", "best.pt", "last.pt", "history.csv"} <= set(os.listdir(out))
    history = pd.read_csv(out / "history.csv")
    assert history.epoch.tolist() == [1, 2] and row["epoch"] == 2
    assert history.step.tolist() == [12, 24]  # 48 train images / batch 4 = 12 updates an epoch
    last = checkpoint.load(out / "last.pt")
    assert last["epoch"] == 2 and last["step"] == 24 and last["config"] == to_dict(tiny())
    best = checkpoint.load(out / "best.pt")
    assert best["score"]["mean_dice"] == row["best"] == max(h["val_dice"] for h in last["history"])
    assert history.val_dice.max() == pytest.approx(row["best"], rel=1e-12)  # through CSV
    assert "optimizer" not in best, "best.pt holds what inference needs"
    assert 0 <= history.all_empty.iloc[0] <= 1


def test_validation_dice_equals_the_competition_metric_on_rle(trained, synthetic, folds_csv):
    """Predict the validation images with best.pt, post-process, encode to RLE and score
    with metric.score_tables: the same Dice as the loop's tensor evaluation. The threshold
    is the 99th percentile of the probabilities and the minimum areas vary by class, so that
    whatever the barely trained model predicts, some masks are kept and some are not."""
    out, _ = trained
    model, config = checkpoint.model_from(out / "best.pt")
    folds = pd.read_csv(folds_csv)
    val_ids = folds.ImageId[folds.fold == 0].tolist()
    with torch.no_grad():
        probs = {i: torch.sigmoid(model(data_lib.normalize(torch.from_numpy(
            read_image(synthetic / "train_images" / i)).permute(2, 0, 1)[None])))
            for i in val_ids}
    threshold = torch.quantile(torch.cat([p[0, :, ::8, ::8].flatten() for p in probs.values()]),
                               0.99).item()
    areas = torch.stack([(p > threshold).sum(dim=(2, 3))[0] for p in probs.values()])
    min_area = areas.float().median(dim=0).values.long().tolist()  # keeps about half
    config = dataclasses.replace(config, val_threshold=threshold, val_min_area=tuple(min_area))
    rows = []
    for image_id, p in probs.items():
        masks = binarize(p, config.val_threshold, config.val_min_area)
        rows += [(image_id, c + 1, rle.encode(masks[0, c].numpy().astype(np.uint8)))
                 for c in range(4)]
    submission = pd.DataFrame(rows, columns=["ImageId", "ClassId", "EncodedPixels"])
    assert 0 < (submission.EncodedPixels != "").sum() < len(submission), "a non-trivial case"
    _, labels = load_train(synthetic)
    result = score_tables(submission, labels[labels.ImageId.isin(val_ids)])
    val_set = data_lib.SteelDataset(synthetic / "train_images", val_ids, by_image(labels))
    saved = train_lib.evaluate(model, data_lib.loader(val_set, 1, 0), DiceBCELoss(), config,
                               train_lib.Runtime(), None)
    assert result["mean_dice"] == pytest.approx(saved["mean_dice"], abs=1e-12)
    assert result["all_empty_baseline"] == pytest.approx(saved["all_empty_baseline"])
    for c in "1234":
        assert result["per_class"][c] == pytest.approx(saved["per_class"][c], abs=1e-12)


def interrupt_in_epoch(monkeypatch, epoch):
    real = train_lib.train_one_epoch

    def stop(*args, **kwargs):
        if args[9] == epoch:  # the `epoch` argument
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_lib, "train_one_epoch", stop)


def test_resume_continues_exactly(trained, synthetic, folds_csv, tmp_path, monkeypatch):
    out = tmp_path / "fold0"
    with monkeypatch.context() as patch:
        interrupt_in_epoch(patch, 1)
        with pytest.raises(KeyboardInterrupt):
            train_lib.fit(tiny(), synthetic, 0, out, folds_csv)
    assert checkpoint.load(out / "last.pt")["epoch"] == 1
    train_lib.fit(tiny(), synthetic, 0, out, folds_csv, resume=True)
    resumed, straight = checkpoint.load(out / "last.pt"), checkpoint.load(trained[0] / "last.pt")
    assert resumed["step"] == straight["step"] == 24
    for key, value in straight["model"].items():
        assert torch.equal(resumed["model"][key], value), key
        assert torch.equal(resumed["ema"][key], straight["ema"][key]), key
    assert resumed["ema_updates"] == straight["ema_updates"] == 24
    for a, b in zip(resumed["optimizer"]["state"].values(),
                    straight["optimizer"]["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"])
    assert resumed["scheduler"]["last_epoch"] == straight["scheduler"]["last_epoch"]
    columns = ["epoch", "step", "lr", "train_loss", "val_loss", "val_dice"]
    assert (pd.DataFrame(resumed["history"])[columns]
            .equals(pd.DataFrame(straight["history"])[columns]))


def test_ema_weights_are_saved_and_used(synthetic, folds_csv, tmp_path, monkeypatch):
    out = tmp_path / "ema"
    train_lib.fit(tiny(epochs=1, balance=True), synthetic, 0, out, folds_csv)
    state = checkpoint.load(out / "last.pt")
    assert state["ema_updates"] == 12
    key = "segmentation_head.0.weight"
    assert not torch.equal(state["ema"][key], state["model"][key])
    model, _ = checkpoint.model_from(out / "best.pt")
    assert torch.equal(model.state_dict()[key], state["ema"][key])


class NanAfter(DiceBCELoss):
    """The real loss, then NaN from the 15th training call on (inside epoch 2)."""
    calls = 0

    def forward(self, logits, targets):
        loss = super().forward(logits, targets)
        if torch.is_grad_enabled():
            NanAfter.calls += 1
            if NanAfter.calls >= 15:
                return loss * float("nan")
        return loss


def test_a_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(
        synthetic, folds_csv, tmp_path, monkeypatch):
    out = tmp_path / "nan"
    NanAfter.calls = 0
    monkeypatch.setattr(train_lib, "DiceBCELoss", NanAfter)
    with pytest.raises(InputError, match=r"loss is nan in epoch 2 .* last good checkpoint"):
        train_lib.fit(tiny(), synthetic, 0, out, folds_csv)
    assert checkpoint.load(out / "last.pt")["epoch"] == 1
    assert len(pd.read_csv(out / "history.csv")) == 1


def test_refusals_leave_the_output_folder_untouched(trained, synthetic, folds_csv):
    out, _ = trained
    before = digest(out)
    cases = [
        (dict(), r"already holds a run .*--resume"),
        (dict(overwrite=True, config=tiny(encoder="resnet999")), r"resnet999"),
        (dict(overwrite=True, fold=7), r"no fold 7"),
        (dict(resume=True, explicit={"lr": 0.5}), r"cannot resume .*lr"),
        (dict(resume=True, explicit={"name": "deeplabv3_r34"}), r"cannot resume .*name"),
    ]
    for case, message in cases:
        args = {**dict(config=tiny(), fold=0, resume=False, overwrite=False, explicit=None),
                **case}
        with pytest.raises(InputError, match=message):
            train_lib.fit(args["config"], synthetic, args["fold"], out, folds_csv,
                          args["resume"], args["overwrite"], args["explicit"])
    assert digest(out) == before


def test_split_errors(tmp_path, synthetic):
    image_ids, labels = load_train(synthetic)
    with pytest.raises(InputError, match="folds file not found"):
        train_lib.split(tmp_path / "none.csv", 0, image_ids)
    folds = make_folds(image_ids, labels, n_folds=3, seed=0)
    path = tmp_path / "folds.csv"
    write_csv(path, folds.assign(fold=0))
    with pytest.raises(InputError, match="fold 0 leaves 0 train"):
        train_lib.split(path, 0, image_ids)
    write_csv(path, folds)
    with pytest.raises(InputError, match=f"ImageId {image_ids[0]} has no image"):
        train_lib.split(path, 0, image_ids[1:])
    with pytest.raises(InputError, match=r"no fold 3; the folds are \[0, 1, 2\]"):
        train_lib.split(path, 3, image_ids)


def cli_args(synthetic, folds_csv, out, *extra):
    return ["train", "--data", synthetic, "--fold", 0, "--folds", folds_csv, "--out", out,
            "--config", "demo_cpu", "--crop-height", 64, "--crop-width", 128,
            "--batch-size", 4, "--num-workers", 0, "--val-batch-size", 6, *extra]


def test_cli_errors_are_one_line(synthetic, folds_csv, tmp_path):
    out = tmp_path / "cli"
    one_line_error(run("train", "--data", synthetic, "--fold", 0, "--folds", folds_csv,
                       "--config", "nope", "--out", out), "unknown preset 'nope'", "demo_cpu")
    one_line_error(run(*cli_args(synthetic, folds_csv, out, "--arch", "segformer")),
                   "segformer", "deeplabv3plus")
    one_line_error(run(*cli_args(synthetic, folds_csv, out, "--encoder-weights",
                                 tmp_path / "w.pth")), "w.pth")
    assert not out.exists()


def test_an_image_that_fails_to_decode_in_a_worker_is_one_line(synthetic, folds_csv, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synthetic, data)
    folds = pd.read_csv(folds_csv)
    victim = data / "train_images" / folds.ImageId[folds.fold == 1].iloc[0]
    jpeg = victim.read_bytes()
    victim.write_bytes(jpeg[:jpeg.find(b"\xff\xda")])  # header intact, no image data
    out = run(*cli_args(data, folds_csv, tmp_path / "out", "--num-workers", 2))
    one_line_error(out, victim, "unreadable image")


def test_a_run_killed_mid_epoch_resumes_and_finishes(synthetic, folds_csv, tmp_path):
    out = tmp_path / "killed"
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    args = [sys.executable, "-m", "competition", *map(str, cli_args(
        synthetic, folds_csv, out, "--epochs", 2))]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "history.csv").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # into epoch 2
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(pd.read_csv(out / "history.csv")) == 1
    done = run(*cli_args(synthetic, folds_csv, out, "--resume"))
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stdout and "epochs 2..2" in done.stdout
    assert pd.read_csv(out / "history.csv").epoch.tolist() == [1, 2]
    assert checkpoint.load(out / "last.pt")["epoch"] == 2


def test_torchrun_two_cpu_processes_match_a_single_process_evaluation(
        synthetic, folds_csv, tmp_path):
    """DDP with gloo: training completes, the checkpoint loads, and its validation Dice,
    reduced over two ranks that each scored half of the images, equals the Dice that one
    process computes from the checkpoint on all of them."""
    out = tmp_path / "ddp"
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", OMP_NUM_THREADS="1")
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "competition", *map(str, cli_args(synthetic, folds_csv, out, "--epochs", 1))]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stdout and done.stdout.count("best val dice") == 1
    state = checkpoint.load(out / "best.pt")
    assert state["step"] == 6  # 48 images over 2 ranks, batch 4 each: 6 updates
    model, config = checkpoint.model_from(out / "best.pt")
    folds = pd.read_csv(folds_csv)
    _, labels = load_train(synthetic)
    val_set = data_lib.SteelDataset(synthetic / "train_images",
                                    folds.ImageId[folds.fold == 0].tolist(), by_image(labels))
    loss_fn = DiceBCELoss(config.dice_weight, config.bce_weight, config.pos_weight)
    single = train_lib.evaluate(model, data_lib.loader(val_set, 5, 0), loss_fn, config,
                                train_lib.Runtime(), None)
    assert single["images"] == 12
    assert single["mean_dice"] == pytest.approx(state["score"]["mean_dice"], abs=1e-12)
    # float32 sums over other batches and thread counts: equal to about 1e-5
    assert single["loss"] == pytest.approx(state["score"]["loss"], rel=1e-4)


def test_amp_uses_bf16_only_where_the_gpu_has_it(monkeypatch):
    """A T4 or P100 (compute 7.5, 6.0: Kaggle's GPUs) gets fp16; Ampere and later bf16."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    for capability, expected in (((6, 0), torch.float16), ((7, 5), torch.float16),
                                 ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None, c=capability: c)
        assert train_lib.amp_dtype("auto", cuda) == expected
        assert train_lib.amp_dtype("fp16", cuda) == torch.float16
        assert train_lib.amp_dtype("bf16", cuda) == torch.bfloat16
        assert train_lib.amp_dtype("off", cuda) is None
    assert train_lib.amp_dtype("auto", cpu) is None
