"""The training loop on tiny synthetic data, on CPU: outputs, exact resume, refusals."""
import dataclasses
import hashlib
import json
import multiprocessing
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

from competition.model import checkpoint
from competition.data import datasets as data_lib
from competition.data import provenance, rle
from competition.train import fit as train_lib
from competition.data import folds as folds_lib
from competition.model import precision as precision_lib
from competition.train import epoch as epoch_lib
from competition.train import evaluate as evaluate_lib
from competition.train import runtime as runtime_lib
from competition.model.config import build_config, to_dict
from competition.errors import InputError
from competition.files import write_csv
from competition.data.folds import make_folds
from competition.data.labels import by_image, load_train
from competition.train.losses import MaskLoss
from competition.data.metric import score_tables
from competition.data.postprocess import binarize
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


WORKER = dict(num_workers=1)  # the module's run and its resume: with a persistent worker


@pytest.fixture(scope="module")
def trained(synthetic, folds_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "fold0"
    before = set(multiprocessing.active_children())
    row = train_lib.fit(tiny(**WORKER), synthetic, 0, out, folds_csv)
    # its loaders' workers end with it (left to the garbage collector: 5 s each)
    assert set(multiprocessing.active_children()) <= before
    return out, row


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_fit_writes_config_checkpoints_and_history(trained, synthetic, folds_csv):
    out, row = trained
    assert {"config.json", "best.pt", "last.pt", "history.csv"} <= set(os.listdir(out))
    history = pd.read_csv(out / "history.csv")
    assert history.epoch.tolist() == [1, 2] and row["epoch"] == 2
    assert history.step.tolist() == [12, 24]  # 48 train images / batch 4 = 12 updates an epoch
    last = checkpoint.load(out / "last.pt")
    assert last["epoch"] == 2 and last["step"] == 24 and last["config"] == to_dict(tiny(**WORKER))
    best = checkpoint.load(out / "best.pt")
    assert best["score"]["mean_dice"] == row["best"] == max(h["val_dice"] for h in last["history"])
    assert best["score"]["score"] == best["score"]["mean_dice"], "a segmenter is kept for Dice"
    assert "val_auc" not in history.columns, "no head, no AUC"
    assert history.val_dice.max() == pytest.approx(row["best"], rel=1e-12)  # through CSV
    assert "optimizer" not in best, "best.pt holds what inference needs"
    assert 0 <= history.all_empty.iloc[0] <= 1
    # every file of the run records its split: fold 0 of folds.csv on this dataset
    image_ids, _ = load_train(synthetic, check_images=False)
    wanted = provenance.split_record(synthetic, folds_csv, 0, image_ids,
                                     folds_lib.split(folds_csv, 0, image_ids)[1])
    assert json.loads((out / "config.json").read_text())["split"] == wanted
    assert last["split"] == best["split"] == wanted


def test_validation_dice_equals_the_competition_metric_on_rle(trained, synthetic, folds_csv,
                                                               monkeypatch):
    """Take the probabilities the loop's evaluation computes for best.pt, post-process them,
    encode to RLE and score with metric.score_tables: the same Dice as the loop's tensor
    evaluation. The probabilities are captured from `evaluate` itself (a forward of another
    batch size or memory layout may differ in the last bits, and a pixel on the threshold
    would flip). The threshold is the 99th percentile of the probabilities and the minimum
    areas vary by class, so that whatever the barely trained model predicts, some masks are
    kept and some are not."""
    out, _ = trained
    model, config = checkpoint.model_from(out / "best.pt")
    folds = pd.read_csv(folds_csv)
    val_ids = folds.ImageId[folds.fold == 0].tolist()
    _, labels = load_train(synthetic)
    val_set = data_lib.SteelDataset(synthetic / "train_images", val_ids, by_image(labels))
    seen, real = [], evaluate_lib.binarize
    monkeypatch.setattr(evaluate_lib, "binarize", lambda p, *a: seen.append(p.clone()) or real(p, *a))

    def evaluate(config):
        seen.clear()
        return evaluate_lib.evaluate(model, data_lib.loader(val_set, 1, 0), MaskLoss(), config,
                                  runtime_lib.Runtime(), None)
    evaluate(config)
    probs = dict(zip(val_ids, seen))
    threshold = torch.quantile(torch.cat([p[0, :, ::8, ::8].flatten() for p in probs.values()]),
                               0.99).item()
    areas = torch.stack([(p > threshold).sum(dim=(2, 3))[0] for p in probs.values()])
    min_area = areas.float().median(dim=0).values.long().tolist()  # keeps about half
    config = dataclasses.replace(config, val_threshold=threshold, val_min_area=tuple(min_area))
    saved = evaluate(config)
    assert all(torch.equal(a, b) for a, b in zip(seen, probs.values())), "same code, same bits"
    rows = []
    for image_id, p in probs.items():
        masks = binarize(p, config.val_threshold, config.val_min_area)
        rows += [(image_id, c + 1, rle.encode(masks[0, c].numpy().astype(np.uint8)))
                 for c in range(4)]
    submission = pd.DataFrame(rows, columns=["ImageId", "ClassId", "EncodedPixels"])
    assert 0 < (submission.EncodedPixels != "").sum() < len(submission), "a non-trivial case"
    result = score_tables(submission, labels[labels.ImageId.isin(val_ids)])
    assert result["mean_dice"] == pytest.approx(saved["mean_dice"], abs=1e-12)
    assert result["all_empty_baseline"] == pytest.approx(saved["all_empty_baseline"])
    for c in "1234":
        assert result["per_class"][c] == pytest.approx(saved["per_class"][c], abs=1e-12)


def interrupt_in_epoch(monkeypatch, epoch):
    real = epoch_lib.train_one_epoch

    def stop(*args, **kwargs):
        if args[9] == epoch:  # the `epoch` argument
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_lib, "train_one_epoch", stop)


def interrupted_and_resumed(config, synthetic, folds_csv, out, monkeypatch,
                            explicit=None) -> dict:
    """A 2-epoch run of `config` interrupted in epoch 2 and resumed (with the options
    `explicit`, as given on the command line): its last.pt."""
    with monkeypatch.context() as patch:
        interrupt_in_epoch(patch, 1)
        with pytest.raises(KeyboardInterrupt):
            train_lib.fit(config, synthetic, 0, out, folds_csv)
    assert checkpoint.load(out / "last.pt")["epoch"] == 1
    train_lib.fit(config, synthetic, 0, out, folds_csv, resume=True, explicit=explicit)
    return checkpoint.load(out / "last.pt")


def test_resume_continues_exactly(trained, synthetic, folds_csv, tmp_path, monkeypatch):
    """Resumed with a loader worker (persistent: started in the first epoch a process runs),
    the run's dropout must draw what the uninterrupted run's (one worker too) drew: the
    loaders must not draw from the global generator when their workers start (they did: a
    weight 1.8 apart). The interrupted half runs without workers, as a user may change them
    on --resume (and an interrupted run's workers are left to the garbage collector)."""
    resumed = interrupted_and_resumed(tiny(), synthetic, folds_csv, tmp_path / "fold0",
                                      monkeypatch, explicit=WORKER)
    straight = checkpoint.load(trained[0] / "last.pt")
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


class NanAfter(MaskLoss):
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
    monkeypatch.setattr(train_lib, "MaskLoss", NanAfter)
    with pytest.raises(InputError, match=r"loss is not finite .* in epoch 2 .*nothing rescales"
                                         r".* last good checkpoint"):
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
    # a folds.csv regenerated since the run began: resuming would train on another split
    image_ids, labels = load_train(synthetic, check_images=False)
    other = out.parent / "regenerated.csv"
    write_csv(other, make_folds(image_ids, labels, n_folds=5, seed=1))
    with pytest.raises(InputError, match=r"last\.pt: it was trained on another split"):
        train_lib.fit(tiny(), synthetic, 0, out, other, resume=True)
    with pytest.raises(InputError, match=r"last\.pt: it was trained as fold 0 .* as fold 1"):
        train_lib.fit(tiny(), synthetic, 1, out, folds_csv, resume=True)
    other.unlink()
    assert digest(out) == before


def test_split_errors(tmp_path, synthetic):
    image_ids, labels = load_train(synthetic)
    with pytest.raises(InputError, match="folds file not found"):
        folds_lib.split(tmp_path / "none.csv", 0, image_ids)
    folds = make_folds(image_ids, labels, n_folds=3, seed=0)
    path = tmp_path / "folds.csv"
    write_csv(path, folds.assign(fold=0))
    with pytest.raises(InputError, match="fold 0 leaves 0 train"):
        folds_lib.split(path, 0, image_ids)
    write_csv(path, folds)
    with pytest.raises(InputError, match=f"ImageId {image_ids[0]} has no image"):
        folds_lib.split(path, 0, image_ids[1:])
    with pytest.raises(InputError, match=r"no fold 3; the folds are \[0, 1, 2\]"):
        folds_lib.split(path, 3, image_ids)


def cli_args(synthetic, folds_csv, out, *extra):
    return ["train", "--data", synthetic, "--fold", 0, "--folds-csv", folds_csv, "--out", out,
            "--preset", "demo_cpu", "--crop-height", 64, "--crop-width", 128,
            "--batch-size", 4, "--workers", 0, "--val-batch-size", 6, *extra]


def test_cli_errors_are_one_line(synthetic, folds_csv, tmp_path):
    out = tmp_path / "cli"
    one_line_error(run("train", "--data", synthetic, "--fold", 0, "--folds-csv", folds_csv,
                       "--preset", "nope", "--out", out), "unknown preset 'nope'", "demo_cpu")
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
    out = run(*cli_args(data, folds_csv, tmp_path / "out", "--workers", 2))
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


def test_torchrun_ranks_validate_the_saved_model(synthetic, folds_csv, tmp_path):
    """DDP with gloo, two processes: every rank validates bit-identical weights and buffers
    (without the broadcast, rank 1's BatchNorm statistics and EMA differ from rank 0's); the
    validation Dice reduced over the two ranks, each scoring half of the images, equals the
    Dice one process computes from the saved best.pt on the same shards and batches; each
    rank's own RNG state is in last.pt."""
    out, probes = tmp_path / "ddp", tmp_path / "probes"
    probes.mkdir()
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", OMP_NUM_THREADS="1",
               PROBE_DIR=str(probes), PYTHONPATH=str(ROOT))
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            str(ROOT / "tests" / "ddp_probe.py"),
            *map(str, cli_args(synthetic, folds_csv, out, "--epochs", 2))]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stdout and done.stdout.count("best val dice") == 1
    for epoch in (1, 2):
        digests = [(probes / f"rank{r}_eval{epoch}.txt").read_text() for r in (0, 1)]
        assert digests[0] == digests[1], f"epoch {epoch}: the ranks validated different models"
    last = checkpoint.load(out / "last.pt")
    assert last["step"] == 12 and len(last["rng"]) == 2  # 48 images, 2 ranks x batch 4
    assert len(list(out.glob("events.out.tfevents.*"))) == 1, "rank 0 alone logs"
    state = checkpoint.load(out / "best.pt")
    model, config = checkpoint.model_from(out / "best.pt")
    model = model.to(memory_format=torch.channels_last)  # as the ranks held it
    folds = pd.read_csv(folds_csv)
    _, labels = load_train(synthetic)
    val_ids = folds.ImageId[folds.fold == 0].tolist()
    loss_fn = train_lib.make_loss(config, torch.device("cpu"))
    # Each rank's shard, in the ranks' batches of 6 on one thread (OMP_NUM_THREADS=1 above):
    # the same forwards bit for bit, so a pixel on the threshold cannot flip between them (a
    # min-area filter can turn one pixel into a whole pair's Dice: no tolerance is safe).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        shards = [evaluate_lib.evaluate(model, data_lib.loader(data_lib.SteelDataset(
            synthetic / "train_images", val_ids[r::2], by_image(labels)), 6, 0), loss_fn,
            config, runtime_lib.Runtime(), None) for r in (0, 1)]
    finally:
        torch.set_num_threads(threads)
    assert [s["images"] for s in shards] == [6, 6]  # equal shards: the mean of the two means
    assert np.mean([s["mean_dice"] for s in shards]) == pytest.approx(
        state["score"]["mean_dice"], abs=1e-12)
    # float32 loss sums in another order: equal to about 1e-5
    assert np.mean([s["loss"] for s in shards]) == pytest.approx(state["score"]["loss"],
                                                                  rel=1e-4)


def test_amp_uses_bf16_only_where_the_gpu_has_it(monkeypatch):
    """A T4 or P100 (compute 7.5, 6.0: Kaggle's GPUs) gets fp16; Ampere and later bf16."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    for capability, expected in (((6, 0), torch.float16), ((7, 5), torch.float16),
                                 ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None, c=capability: c)
        assert precision_lib.amp_dtype("auto", cuda) == expected
        assert precision_lib.amp_dtype("fp16", cuda) == torch.float16
        assert precision_lib.amp_dtype("bf16", cuda) == torch.bfloat16
        assert precision_lib.amp_dtype("off", cuda) is None
    assert precision_lib.amp_dtype("auto", cpu) is None


# --- the training step: device-side loss checks, skipped fp16 updates, the EMA -------------

class ScriptedLoss(MaskLoss):
    """The real loss, NaN on the training calls numbered in `bad` (1-based)."""

    def __init__(self, bad):
        super().__init__()
        self.bad, self.calls, self.finite = set(bad), 0, []

    def forward(self, logits, targets):
        loss = super().forward(logits, targets)
        if not torch.is_grad_enabled():
            return loss
        self.calls += 1
        if self.calls in self.bad:
            return loss * float("nan")
        self.finite.append(loss.item())
        return loss


def tiny_step_setup(scaled, updates=12):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                                torch.nn.Conv2d(8, 4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=scaled)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, 256, (2, 3, 16, 32), dtype=torch.uint8, generator=g),
                torch.randint(0, 2, (2, 4, 16, 32), dtype=torch.uint8, generator=g),
                torch.arange(2)) for _ in range(updates)]
    config = tiny(channels_last=False, clip_grad_norm=1.0, ema_decay=0.0)
    return model, optimizer, scheduler, scaler, batches, config


def test_fp16_updates_with_a_non_finite_loss_are_skipped_and_counted():
    """Under a GradScaler (fp16) a NaN loss is what the scaler absorbs: the update is skipped
    (the weights do not move), counted, and the epoch goes on; its mean loss is that of the
    finite micro-batches."""
    model, optimizer, scheduler, scaler, batches, config = tiny_step_setup(scaled=True)
    loss_fn = ScriptedLoss(bad={3, 4, 9})
    before = {}

    def remember(module, args):
        if loss_fn.calls + 1 in loss_fn.bad:  # the forward of a call that will be NaN
            before.update({k: v.clone() for k, v in model.state_dict().items()
                           if "running" not in k and "num_batches" not in k})
    hook = model.register_forward_pre_hook(remember)
    result = epoch_lib.train_one_epoch(model, loss_fn, optimizer, scheduler, scaler, None,
                                       batches, config, runtime_lib.Runtime(), 0, None)
    hook.remove()
    assert result["skipped"] == 3 and result["images"] == 24
    assert result["loss"] == pytest.approx(np.mean(loss_fn.finite), rel=1e-9)
    assert scaler.get_scale() < 65536.0, "the scaler lowered its scale on the skipped steps"

    model, optimizer, scheduler, scaler, batches, config = tiny_step_setup(scaled=True, updates=1)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    epoch_lib.train_one_epoch(model, ScriptedLoss(bad={1}), optimizer, scheduler, scaler, None,
                              batches, config, runtime_lib.Runtime(), 0, None)
    for key, value in model.state_dict().items():
        if "running" not in key and "num_batches" not in key:
            assert torch.equal(value, start[key]), f"{key} moved on a skipped update"


def test_a_loss_that_stays_non_finite_stops_fp16_and_one_non_finite_loss_stops_fp32():
    model, optimizer, scheduler, scaler, batches, config = tiny_step_setup(scaled=True)
    with pytest.raises(epoch_lib.NonFiniteLoss, match="10 updates in a row"):
        epoch_lib.train_one_epoch(model, ScriptedLoss(bad=range(3, 13)), optimizer, scheduler,
                                  scaler, None, batches, config, runtime_lib.Runtime(), 0, None)
    model, optimizer, scheduler, scaler, batches, config = tiny_step_setup(scaled=True)
    result = epoch_lib.train_one_epoch(model, ScriptedLoss(bad=range(3, 12)), optimizer,
                                       scheduler, scaler, None, batches, config,
                                       runtime_lib.Runtime(), 0, None)
    assert result["skipped"] == 9, "nine in a row are absorbed"
    model, optimizer, scheduler, scaler, batches, config = tiny_step_setup(scaled=False)
    with pytest.raises(epoch_lib.NonFiniteLoss, match="nothing rescales it"):
        epoch_lib.train_one_epoch(model, ScriptedLoss(bad={5}), optimizer, scheduler, scaler,
                                  None, batches, config, runtime_lib.Runtime(), 0, None)


def test_the_step_reads_the_device_only_every_check_every_updates(monkeypatch):
    """The loss is kept on the device and read on the host every CHECK_EVERY updates and at
    the end of the epoch (each read waits for the GPU); the EMA keeps its count on the host.
    Counted: every item/tolist/bool/cpu call on a tensor made from train.py."""
    reads = []
    for name in ("item", "tolist", "__bool__", "cpu"):
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, _name=name, **kwargs):
            if sys._getframe(1).f_code.co_filename == epoch_lib.__file__:
                reads.append(_name)
            return _real(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    monkeypatch.setattr(epoch_lib, "CHECK_EVERY", 5)
    model, optimizer, scheduler, scaler, batches, config = tiny_step_setup(scaled=False)
    ema = epoch_lib.make_ema(model)
    result = epoch_lib.train_one_epoch(model, MaskLoss(), optimizer, scheduler, scaler, ema,
                                       batches, dataclasses.replace(config, ema_decay=0.9),
                                       runtime_lib.Runtime(), 0, None)
    assert result["ema_updates"] == 12
    assert reads == ["tolist"] * 3, reads  # after updates 5, 10 and 12 (the end)


def test_ema_update_by_hand():
    model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))
    ema = epoch_lib.make_ema(model)
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].running_mean.fill_(2.0)
        model[1].num_batches_tracked.fill_(7)
    epoch_lib.update_ema(ema, model, 0.9, first=True)
    assert torch.equal(ema[0].weight, model[0].weight)
    with torch.no_grad():
        model[0].weight.fill_(3.0)
        model[1].running_mean.fill_(4.0)
        model[1].num_batches_tracked.fill_(9)
    epoch_lib.update_ema(ema, model, 0.9, first=False)
    assert torch.allclose(ema[0].weight, torch.full((1, 2), 0.9 * 1 + 0.1 * 3))
    assert torch.allclose(ema[1].running_mean, torch.tensor([0.9 * 2 + 0.1 * 4]))
    assert ema[1].num_batches_tracked.item() == 9 and not ema[0].weight.requires_grad


def test_cudnn_autotuning_is_on_for_cuda_only(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    runtime_lib.configure_backends(torch.device("cuda"))
    assert torch.backends.cudnn.benchmark
    runtime_lib.configure_backends(torch.device("cpu"))
    assert not torch.backends.cudnn.benchmark


def test_training_loaders_keep_their_workers(synthetic, folds_csv):
    image_ids, labels = load_train(synthetic)
    train_ids, val_ids = folds_lib.split(folds_csv, 0, image_ids)
    loaders = train_lib.build_loaders(tiny(num_workers=1), synthetic, train_ids, val_ids,
                                      by_image(labels), runtime_lib.Runtime())
    assert all(dl.persistent_workers for dl in loaders)
    before = torch.get_rng_state()  # starting them leaves the global generator (dropout) alone
    assert all(len(next(iter(dl))) == 3 for dl in loaders)
    assert torch.equal(torch.get_rng_state(), before)


# --- resuming where users resume --------------------------------------------------------------

def test_resume_keeps_the_runs_precision(monkeypatch, tmp_path):
    """A bf16 run (no loss scale) resumed on a T4 (fp16 by --amp auto, scaler on) would die
    in GradScaler.load_state_dict: the recorded precision is kept, or the resume refused."""
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Tesla T4")
    last = tmp_path / "last.pt"
    for capability, saved, expected in (((8, 0), "bf16", torch.bfloat16),
                                        ((7, 5), "fp16", torch.float16),
                                        ((8, 0), "fp16", torch.float16),
                                        ((7, 5), "fp32", None), ((8, 0), "fp32", None)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None, c=capability: c)
        assert runtime_lib.resume_dtype(saved, cuda, last) == expected
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (7, 5))
    with pytest.raises(InputError, match=r"last.pt: the run trained in bf16, and Tesla T4 "
                                         r"\(compute 7.5\) has no native bf16"):
        runtime_lib.resume_dtype("bf16", cuda, last)
    with pytest.raises(InputError, match="resume it on a GPU"):
        runtime_lib.resume_dtype("fp16", torch.device("cpu"), last)
    # last.pt from before the precision was recorded: a loss scale means fp16; without one,
    # a CPU run resumes in fp32 on the CPU, and on a T4 (where auto means fp16) it was bf16
    old = tiny()
    cpu = torch.device("cpu")
    assert runtime_lib.saved_precision({"scaler": {"scale": 1024.0}}, old, cpu) == "fp16"
    assert runtime_lib.saved_precision({"scaler": {}}, old, cpu) == "fp32"
    assert runtime_lib.saved_precision({"scaler": {}}, old, cuda) == "bf16"
    assert runtime_lib.saved_precision({"scaler": {}}, dataclasses.replace(old, amp="off"),
                                     cuda) == "fp32"
    assert runtime_lib.saved_precision({"scaler": {}, "precision": "fp16"}, old, cpu) == "fp16"


def test_a_gpu_run_resumed_on_the_cpu_is_refused_in_one_line(trained, synthetic, folds_csv,
                                                              tmp_path):
    out = tmp_path / "gpu-run"
    shutil.copytree(trained[0], out)
    state = checkpoint.load(out / "last.pt")
    assert state["precision"] == "fp32"  # recorded: this run was on the CPU
    checkpoint.save(out / "last.pt", {**state, "precision": "bf16", "epoch": 1})
    before = digest(out)
    one_line_error(run(*cli_args(synthetic, folds_csv, out, "--resume")),
                   "trained with bf16 mixed precision on a GPU")
    assert digest(out) == before


def test_rng_states_are_this_processes_own(monkeypatch):
    """Each rank saves and restores its own device's CUDA generator (not every visible GPU's:
    fewer GPUs at resume raised IndexError, and every rank restored rank 0's)."""
    restored, device = [], torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda d: torch.tensor([d.index]))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, d: restored.append((s, d)))
    state = checkpoint.rng_state(device)
    assert state["cuda"].tolist() == [1]
    checkpoint.set_rng_state(state, device)
    assert restored == [(state["cuda"], device)]
    old = {**state, "cuda": [torch.tensor([0])]}  # a list of every GPU's, from one GPU
    checkpoint.set_rng_state(old, device)  # device 1 had no entry: left alone, no IndexError
    checkpoint.set_rng_state(old, torch.device("cuda", 0))
    assert len(restored) == 2 and restored[1][0].tolist() == [0]
    assert "cuda" not in checkpoint.rng_state(torch.device("cpu"))


def test_resume_with_more_epochs_extends_the_run_and_replans_the_schedule(
        trained, synthetic, folds_csv, tmp_path, capsys, monkeypatch):
    out = tmp_path / "extended"
    shutil.copytree(trained[0], out)
    first_lr, real = [], epoch_lib.train_one_epoch
    monkeypatch.setattr(train_lib, "train_one_epoch", lambda *a, **k: first_lr.append(
        a[2].param_groups[-1]["lr"]) or real(*a, **k))
    row = train_lib.fit(tiny(), synthetic, 0, out, folds_csv, resume=True,
                        explicit={"epochs": 3})
    said = capsys.readouterr().out
    assert said.count("extending the run from 2 to 3 epochs") == 1
    history = pd.read_csv(out / "history.csv")
    assert history.epoch.tolist() == [1, 2, 3] and row["step"] == 36
    assert history.planned_epochs.tolist() == [2, 2, 3]
    assert checkpoint.load(out / "last.pt")["config"]["epochs"] == 3
    # the LR now follows the 3-epoch plan: 12 updates an epoch, 6 of warmup (0.5 epoch), so
    # the cosine of the 2-epoch run ended at min_lr_factor at step 24, and the 3-epoch one is
    # at progress (24 - 6) / (36 - 6) = 0.6 there, and at its end at step 36
    config = tiny()
    cosine = lambda p: config.min_lr_factor + (1 - config.min_lr_factor) * 0.5 * (  # noqa: E731
        1 + np.cos(np.pi * p))
    assert "LR factor goes from 0.01 to " + f"{cosine(0.6):.4g}" in said
    assert history.lr.iloc[1] == pytest.approx(config.lr * config.min_lr_factor)
    assert history.lr.iloc[2] == pytest.approx(config.lr * config.min_lr_factor)
    assert first_lr == [pytest.approx(config.lr * cosine(0.6))], "epoch 3's first update"
    with pytest.raises(InputError, match="cannot resume with --epochs 1, fewer than"):
        train_lib.fit(tiny(), synthetic, 0, out, folds_csv, resume=True,
                      explicit={"epochs": 1})


def test_batch_size_one_is_refused_for_deeplab_before_anything_is_written(
        synthetic, folds_csv, tmp_path):
    with pytest.raises(InputError, match="cannot train on a batch of one"):
        tiny(batch_size=1)
    build_config("demo_cpu", arch="unet", batch_size=1)  # no pooling branch: fine
    out = tmp_path / "b1"
    one_line_error(run(*cli_args(synthetic, folds_csv, out, "--batch-size", 1,
                                 "--accumulate", 16)), "batch_size 1", "--accumulate")
    assert not out.exists()


class NanUnderAutocast(torch.nn.Module):
    """Its inner model's logits, all NaN when called under autocast (an fp16 overflow)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        out = self.inner(x)
        return out * float("nan") if torch.is_autocast_enabled(x.device.type) else out


def test_validation_recomputes_an_fp16_overflow_in_fp32_instead_of_scoring_nan():
    """A NaN probability is above no threshold: scored as is, the overflowing batch would
    count as an all-empty prediction. evaluate redoes it in fp32 (infer.forward_checked)."""
    model, _, _, _, batches, config = tiny_step_setup(scaled=False, updates=3)
    model = NanUnderAutocast(model).eval()
    config = dataclasses.replace(config, val_threshold=0.5, val_min_area=(0, 0, 0, 0))
    rt, loss_fn = runtime_lib.Runtime(), MaskLoss()
    fp32 = evaluate_lib.evaluate(model, batches, loss_fn, config, rt, None)
    fp16 = evaluate_lib.evaluate(model, batches, loss_fn, config, rt, torch.float16)
    assert fp16 == fp32 and np.isfinite(fp16["loss"])
    assert fp32["mean_dice"] != fp32["all_empty_baseline"], "the fp32 model predicts something"
