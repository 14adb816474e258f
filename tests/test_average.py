"""Weight averaging: the mean of state dicts, BatchNorm re-estimation, the epochs a run keeps
(keep.py) and `python -m competition average`, on tiny synthetic runs on the CPU."""
import json
import shutil

import pandas as pd
import pytest
import torch

from competition.train import average as avg
from competition.model import checkpoint
from competition.data import datasets as data_lib
from competition.train import keep
from competition.infer import oof
from competition.train import fit as train_lib
from competition.model.config import build_config
from competition.errors import InputError
from competition.data.folds import make_folds
from competition.data.labels import load_train
from competition.files import write_csv
from conftest import random_checkpoint
from test_cli import one_line_error, run
from test_train import folds_csv  # noqa: F401 (a fixture)

TINY = dict(crop_height=64, crop_width=128, epochs=3, batch_size=4, num_workers=0,
            val_batch_size=6, warmup_epochs=0.5, ema_decay=0.9, keep_top=2, keep_last=0)


def tiny(**overrides):
    return build_config("demo_cpu", **{**TINY, **overrides})


# --- the mean of state dicts ------------------------------------------------------------------

def small_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4),
                               torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Conv2d(4, 2, 1),
                               torch.nn.BatchNorm2d(2))


def test_the_average_of_identical_states_is_that_state_bit_for_bit():
    state = small_model().state_dict()
    state["1.num_batches_tracked"].fill_(17)
    state["half"] = torch.randn(5).half()  # a low-precision float comes back in its dtype
    for n in (1, 2, 3, 7):
        mean = avg.average_states([{k: v.clone() for k, v in state.items()} for _ in range(n)])
        assert mean.keys() == state.keys()
        for key, value in state.items():
            assert mean[key].dtype == value.dtype and torch.equal(mean[key], value), (n, key)


def test_the_average_of_two_hand_made_states():
    a = {"w": torch.tensor([1.0, 2.0, -3.0]), "b": torch.tensor([0.25]),
         "bn.running_var": torch.tensor([1.0, 4.0]), "bn.num_batches_tracked": torch.tensor(5)}
    b = {"w": torch.tensor([3.0, 5.0, 1.0]), "b": torch.tensor([-0.75]),
         "bn.running_var": torch.tensor([2.0, 8.0]), "bn.num_batches_tracked": torch.tensor(9)}
    mean = avg.average_states([a, b])
    # halves of small dyadic numbers: exact in float32, so compared exactly
    assert torch.equal(mean["w"], torch.tensor([2.0, 3.5, -1.0]))
    assert torch.equal(mean["b"], torch.tensor([-0.25]))
    assert torch.equal(mean["bn.running_var"], torch.tensor([1.5, 6.0]))
    assert mean["bn.num_batches_tracked"].item() == 5, "an integer buffer: the first state's"
    # random values: the float64 mean rounded once to float32, within half an ulp of the
    # exact mean (float64 is exact for the sum of three float32 values here)
    g = torch.Generator().manual_seed(0)
    states = [{"w": torch.randn(1000, generator=g)} for _ in range(3)]
    exact = sum(s["w"].double() for s in states) / 3
    got = avg.average_states(states)["w"]
    assert torch.all((got.double() - exact).abs() <= torch.finfo(torch.float32).eps * exact.abs())


def test_states_that_do_not_match_or_hold_nan_are_refused():
    a = small_model().state_dict()
    other = {k: v for k, v in a.items() if k != "0.bias"}
    with pytest.raises(InputError, match=r"b.pt: .*tensor 0.bias is in one only.*architecture"):
        avg.average_states([a, other], ["a.pt", "b.pt"])
    wider = {**a, "0.weight": torch.zeros(5, 3, 1, 1)}
    with pytest.raises(InputError, match=r"b.pt: 0.weight is \(5, 3, 1, 1\)"):
        avg.average_states([a, wider], ["a.pt", "b.pt"])
    broken = {k: v.clone() for k, v in a.items()}
    broken["4.weight"][0, 0] = float("nan")
    with pytest.raises(InputError, match=r"b.pt: 4.weight holds 1 NaN or inf value"):
        avg.average_states([a, broken], ["a.pt", "b.pt"])
    huge = {k: v.clone() for k, v in a.items()}
    huge["1.running_var"].fill_(float("inf"))
    with pytest.raises(InputError, match="NaN or inf"):
        avg.average_states([huge, huge])


# --- BatchNorm re-estimation ------------------------------------------------------------------

def bn_batches(n=3, size=4):
    g = torch.Generator().manual_seed(2)
    return [(torch.randint(0, 256, (size, 3, 8, 16), dtype=torch.uint8, generator=g),
             torch.zeros(size, 4, 8, 16, dtype=torch.uint8), torch.arange(size))
            for _ in range(n)]


def test_batchnorm_re_estimation_changes_only_batchnorm_buffers():
    model = small_model()
    with torch.no_grad():  # statistics far from the data's, and a count, to see them change
        model[1].running_mean.fill_(5.0)
        model[5].running_var.fill_(9.0)
        model[1].num_batches_tracked.fill_(100)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = bn_batches()
    seen = avg.update_bn(model, batches, torch.device("cpu"), channels_last=False)
    after = model.state_dict()
    assert seen == 3
    bn_buffers = {f"{i}.{b}" for i in (1, 5) for b in ("running_mean", "running_var",
                                                       "num_batches_tracked")}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == bn_buffers
    for key in set(before) - bn_buffers:  # every parameter (and there is no other buffer)
        assert torch.equal(before[key], after[key]), key
    assert after["1.num_batches_tracked"].item() == after["5.num_batches_tracked"].item() == 3
    assert model[1].momentum == 0.1 and model[5].momentum == 0.1, "momentum restored"
    assert model.training, "the mode it came in restored"

    # by hand: each BatchNorm's running statistics are the mean over the batches of the batch
    # mean and of the unbiased batch variance; the first BatchNorm normalises with the batch's
    # own statistics, and the Dropout before the second one is off (as at inference)
    means, variances, means2, variances2 = [], [], [], []
    with torch.no_grad():
        for images, _, _ in batches:
            h = model[0](data_lib.normalize(images))
            means.append(h.mean(dim=(0, 2, 3)))
            variances.append(h.var(dim=(0, 2, 3), unbiased=True))
            mu, var = h.mean(dim=(0, 2, 3), keepdim=True), h.var(dim=(0, 2, 3), unbiased=False,
                                                                 keepdim=True)
            h = (h - mu) / torch.sqrt(var + model[1].eps)
            h = h * model[1].weight[None, :, None, None] + model[1].bias[None, :, None, None]
            h = model[4](torch.relu(h))
            means2.append(h.mean(dim=(0, 2, 3)))
            variances2.append(h.var(dim=(0, 2, 3), unbiased=True))
    # float32 sums in another order: equal to about 1e-6
    assert torch.allclose(after["1.running_mean"], torch.stack(means).mean(0), atol=1e-5)
    assert torch.allclose(after["1.running_var"], torch.stack(variances).mean(0), rtol=1e-4)
    assert torch.allclose(after["5.running_mean"], torch.stack(means2).mean(0), atol=1e-5)
    assert torch.allclose(after["5.running_var"], torch.stack(variances2).mean(0), rtol=1e-4)


def test_batchnorm_re_estimation_on_the_first_batches_only():
    model = small_model()
    assert avg.update_bn(model, bn_batches(n=5), torch.device("cpu"), False, batches=2) == 2
    assert model[1].num_batches_tracked.item() == 2
    assert avg.update_bn(torch.nn.Linear(2, 2), bn_batches(), torch.device("cpu"), False) == 0


# --- what a run keeps -------------------------------------------------------------------------

def test_to_keep_by_hand():
    scores = [(1, 0.5), (2, 0.7), (3, 0.7), (4, 0.6), (5, 0.1), (6, float("nan"))]
    assert keep.ranked(scores) == [2, 3, 4, 1, 5, 6], "ties: the earlier epoch; NaN last"
    assert keep.top_epochs(scores, 2) == [2, 3]
    assert keep.last_epochs(scores, 2) == [6, 5]
    assert keep.to_keep(scores, 2, 0) == {2, 3}
    assert keep.to_keep(scores, 3, 2) == {2, 3, 4, 5, 6}
    assert keep.to_keep(scores, 0, 0) == set()
    assert keep.to_keep(scores, 9, 9) == {1, 2, 3, 4, 5, 6}


def fake_weights(epoch):
    return lambda: {"config": {}, "model": {"w": torch.full((2,), float(epoch))}, "ema": None,
                    "epoch": epoch, "score": {}}


def on_disk(run):
    return sorted(p.name for p in (run / keep.FOLDER).iterdir() if p.name != keep.INDEX)


def test_record_keeps_exactly_the_best_k_and_the_last_k_and_prunes_the_rest(tmp_path):
    run = tmp_path / "run"
    scores = [0.3, 0.8, 0.5, 0.9, 0.1, 0.6, 0.2]
    index = keep.empty(0, "data", "folds.csv", keep_top=2, keep_last=1)
    for epoch, score in enumerate(scores, 1):
        index = keep.record(run, index, epoch, score, fake_weights(epoch))
        so_far = list(enumerate(scores[:epoch], 1))
        wanted = keep.to_keep(so_far, 2, 1)
        assert on_disk(run) == sorted(keep.file_name(e) for e in wanted), epoch
        stored = keep.read(run)
        assert [k["epoch"] for k in stored["kept"]] == sorted(wanted)
        assert stored["scores"] == so_far
    assert on_disk(run) == ["epoch002.pt", "epoch004.pt", "epoch007.pt"]  # by hand
    saved = checkpoint.load(run / keep.FOLDER / "epoch004.pt")
    assert saved["epoch"] == 4 and torch.equal(saved["model"]["w"], torch.full((2,), 4.0))
    assert [k["epoch"] for k in keep.select(run, stored, top=2)] == [4, 2]
    assert [k["epoch"] for k in keep.select(run, stored, last=1)] == [7]
    with pytest.raises(InputError, match=r"--last 2 needs epochs \[6, 7\] and 1 of them "
                                         r"\(epoch 6\) were not kept"):
        keep.select(run, stored, last=2)
    with pytest.raises(InputError, match="--top 9 asks for 9 epochs and the run has 7"):
        keep.select(run, stored, top=9)


def test_a_run_that_keeps_nothing_writes_nothing(tmp_path):
    index = keep.empty(0, "data", "folds.csv", 0, 0)
    called = []
    index = keep.record(tmp_path / "run", index, 1, 0.5, lambda: called.append(1))
    assert not (tmp_path / "run").exists() and not called and index["scores"] == [(1, 0.5)]


def test_a_crash_between_the_writes_never_leaves_the_index_pointing_to_a_missing_file(
        tmp_path, monkeypatch):
    run = tmp_path / "run"
    index = keep.empty(0, "data", "folds.csv", keep_top=1, keep_last=0)
    index = keep.record(run, index, 1, 0.5, fake_weights(1))
    # epoch 2 is better: its file is written, then the process dies before the index
    monkeypatch.setattr(keep, "write_json", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        keep.record(run, index, 2, 0.9, fake_weights(2))
    monkeypatch.undo()
    (run / keep.FOLDER / ".epoch003.pt.abc.tmp").write_bytes(b"")  # a killed atomic write
    stored = keep.read(run)
    assert [k["epoch"] for k in stored["kept"]] == [1]
    assert all((run / keep.FOLDER / k["file"]).is_file() for k in stored["kept"])
    # resumed after epoch 1 (last.pt said so): epoch 2 is recorded again, once
    index = keep.resumed(run, 1, 0, "data", "folds.csv", 1, 0)
    index = keep.record(run, index, 2, 0.9, fake_weights(2))
    assert on_disk(run) == ["epoch002.pt"], "epoch 1 pruned, the stale temp file removed"
    assert keep.read(run)["scores"] == [(1, 0.5), (2, 0.9)]


def test_resumed_drops_epochs_past_last_pt_and_entries_without_their_file(tmp_path):
    run = tmp_path / "run"
    index = keep.empty(0, "data", "folds.csv", keep_top=3, keep_last=0)
    for epoch, score in enumerate([0.5, 0.6, 0.7], 1):
        index = keep.record(run, index, epoch, score, fake_weights(epoch))
    (run / keep.FOLDER / "epoch001.pt").unlink()
    index = keep.resumed(run, 2, 0, "data", "folds.csv", 3, 0)
    assert [k["epoch"] for k in index["kept"]] == [2] and index["scores"] == [(1, 0.5), (2, 0.6)]
    assert keep.resumed(tmp_path / "none", 2, 1, "d", "f", 3, 0)["kept"] == []


# --- real runs: train --keep-top, resume, average ---------------------------------------------

@pytest.fixture(scope="module")
def kept_run(synthetic, folds_csv, tmp_path_factory):
    """A 3-epoch run keeping its 2 best epochs, killed in epoch 3 after its kept file and
    index were written and before last.pt, then resumed: (run folder, the index before the
    resume)."""
    out = tmp_path_factory.mktemp("run") / "fold0"
    real = checkpoint.save

    def dies(path, state):
        if path.name == "last.pt" and state["epoch"] == 3:
            raise KeyboardInterrupt
        real(path, state)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpoint, "save", dies)
        with pytest.raises(KeyboardInterrupt):
            train_lib.fit(tiny(), synthetic, 0, out, folds_csv)
    crashed = keep.read(out)
    train_lib.fit(tiny(), synthetic, 0, out, folds_csv, resume=True)
    return out, crashed


@pytest.mark.slow
def test_a_run_keeps_its_best_k_epochs_and_a_resume_keeps_each_once(kept_run, synthetic,
                                                                   folds_csv):
    run_dir, crashed = kept_run
    assert crashed["scores"][-1][0] == 3, "epoch 3 was recorded before the crash"
    history = pd.read_csv(run_dir / "history.csv")
    assert history.epoch.tolist() == [1, 2, 3]
    scores = list(zip(history.epoch, history.val_dice))
    wanted = keep.to_keep(scores, 2, 0)
    assert len(wanted) == 2, "one of the three epochs pruned"
    assert on_disk(run_dir) == sorted(keep.file_name(e) for e in wanted)
    index = keep.read(run_dir)
    assert [e for e, _ in index["scores"]] == [1, 2, 3], "each epoch once"
    for (_, got), (_, expected) in zip(index["scores"], scores):
        assert got == pytest.approx(expected, rel=1e-12)  # through history.csv's text
    assert [k["epoch"] for k in index["kept"]] == sorted(wanted)
    assert (index["fold"], index["data"], index["folds_csv"]) == (0, str(synthetic),
                                                                  str(folds_csv))
    best = checkpoint.load(run_dir / "best.pt")
    same = checkpoint.load(run_dir / keep.FOLDER / keep.file_name(best["epoch"]))
    assert same["ema"] is None and same["score"] == best["score"]
    for key, value in best["ema"].items():  # the evaluated weights: the EMA
        assert torch.equal(same["model"][key], value), key
    _, config = checkpoint.model_from(run_dir / keep.FOLDER / keep.file_name(best["epoch"]))
    assert config.keep_top == 2


@pytest.mark.slow
def test_average_cli_writes_averaged_pt_usable_like_best_pt(kept_run, synthetic, tmp_path):
    run_dir = tmp_path / "fold0"
    shutil.copytree(kept_run[0], run_dir)
    # BatchNorm re-estimated on another split's training images would see validation ones
    image_ids, labels = load_train(synthetic, check_images=False)
    write_csv(tmp_path / "other.csv", make_folds(image_ids, labels, n_folds=5, seed=1))
    one_line_error(run("average", "--run", run_dir, "--top", 2, "--folds-csv",
                       tmp_path / "other.csv"), "epoch", "it was trained on another split")
    assert nothing_written(run_dir)
    top = keep.select(run_dir, keep.read(run_dir), top=2)
    done = run("average", "--run", run_dir, "--top", 2, "--bn-batches", 2, "--workers", 0)
    assert done.returncode == 0, done.stderr
    assert "averaged the top 2 epochs" in done.stdout and "best.pt (epoch" in done.stdout
    assert "beats best.pt" in done.stdout or "does not beat best.pt" in done.stdout
    summary = json.loads((run_dir / "averaged.json").read_text())
    assert summary["epochs"] == [e["epoch"] for e in top] and summary["bn_batches"] == 2
    assert summary["beat_best"] == (summary["score"] > summary["best_score"])
    # best.pt re-scored here with the same code on the same device: what training recorded
    assert summary["best_score"] == pytest.approx(summary["best_score_recorded"], abs=1e-12)
    state = checkpoint.load(run_dir / "averaged.pt")
    assert state["score"]["score"] == summary["score"] and state["ema"] is None
    assert state["split"] == checkpoint.load(run_dir / "best.pt")["split"]  # as oof checks
    assert state["epoch"] == max(summary["epochs"])  # the latest averaged
    assert state["step"] == 12 * state["epoch"]  # 48 images / batch 4 = 12 updates an epoch
    model, config = checkpoint.model_from(run_dir / "averaged.pt")  # as oof/predict/kernel
    assert config == checkpoint.config_of(checkpoint.load(run_dir / "best.pt"))
    # the weights are the mean of the two epochs'; only the BatchNorm buffers were re-estimated
    kept = [checkpoint.load(run_dir / keep.FOLDER / e["file"])["model"] for e in top]
    mean = avg.average_states(kept)
    bn = {n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    for key, value in state["model"].items():
        if key.rsplit(".", 1)[0] not in bn or key.endswith((".weight", ".bias")):
            assert torch.equal(value, mean[key]), key
    assert state["model"]["encoder.bn1.num_batches_tracked"].item() == 2
    assert not torch.equal(state["model"]["encoder.bn1.running_var"],
                           mean["encoder.bn1.running_var"])


def test_oof_runs_find_averaged_pt_by_name(tmp_path, synthetic):
    runs = oof.Runs((tmp_path / "r",), classifiers=(tmp_path / "c",), name="averaged.pt")
    assert runs.of_fold(1) == ([tmp_path / "r" / "fold1" / "averaged.pt"],
                               [tmp_path / "c" / "fold1" / "best.pt"])
    (tmp_path / "r" / "fold0").mkdir(parents=True)
    random_checkpoint(tmp_path / "r" / "fold0" / "best.pt")
    write_csv(tmp_path / "r" / "folds.csv",
              pd.DataFrame({"ImageId": sorted(p.name for p in (synthetic / "train_images")
                                               .iterdir()), "fold": 0}))
    one_line_error(run("oof", "--data", synthetic, "--runs", tmp_path / "r", "--folds", "0",
                       "--checkpoint-name", "averaged.pt", "--out", tmp_path / "sub"),
                   "fold0/averaged.pt: checkpoint not found")


# --- refusals: one line, exit 2, nothing written ----------------------------------------------

def hand_made_run(root, epochs=(0.5, 0.7, 0.6), keep_top=2, keep_last=0, **overrides):
    """A run folder of untrained demo_cpu weights kept by keep.record (no training)."""
    run_dir = root / "fold0"
    run_dir.mkdir(parents=True)
    random_checkpoint(run_dir / "best.pt")
    index = keep.empty(0, root / "data", root / "folds.csv", keep_top, keep_last)
    for epoch, score in enumerate(epochs, 1):
        path = random_checkpoint(root / f"e{epoch}.pt", seed=epoch,
                                 **(overrides if epoch == len(epochs) else {}))
        index = keep.record(run_dir, index, epoch, score,
                            lambda p=path: checkpoint.load(p))
    return run_dir


def nothing_written(run_dir):
    return not (run_dir / "averaged.pt").exists() and not (run_dir / "averaged.json").exists()


def test_refusals_are_one_line_with_exit_2(tmp_path):
    run_dir = hand_made_run(tmp_path / "a")
    one_line_error(run("average", "--run", run_dir, "--top", 3),
                   "--top 3 needs epochs [1, 2, 3]", "were not kept")
    one_line_error(run("average", "--run", run_dir, "--last", 4),
                   "asks for 4 epochs and the run has 3")
    assert nothing_written(run_dir)

    bare = tmp_path / "b" / "fold0"
    bare.mkdir(parents=True)
    one_line_error(run("average", "--run", bare, "--top", 2), "no kept weights",
                   "--keep-top")

    mixed = hand_made_run(tmp_path / "c", arch="unet")  # epoch 3 of another architecture
    one_line_error(run("average", "--run", mixed, "--top", 2),
                   "epoch003.pt: another config", "arch")
    assert nothing_written(mixed)

    broken = hand_made_run(tmp_path / "d")
    path = broken / keep.FOLDER / "epoch002.pt"
    state = checkpoint.load(path)
    state["model"]["segmentation_head.0.weight"][0] = float("nan")
    checkpoint.save(path, state)
    one_line_error(run("average", "--run", broken, "--top", 2),
                   "epoch002.pt: segmentation_head.0.weight holds", "NaN")
    assert nothing_written(broken)


def test_other_bad_input_is_refused_before_anything_is_written(tmp_path):
    run_dir = hand_made_run(tmp_path / "a")
    for kwargs, message in ((dict(top=2, bn_batches=-1), "--bn-batches -1"),
                            (dict(top=0), "--top 0: must be at least 1"),
                            (dict(top=2), r"data/train.csv: file not found"),
                            (dict(), "give one of --top K and --last K")):
        with pytest.raises(InputError, match=message):
            avg.average_run(run_dir, **kwargs)
    assert nothing_written(run_dir)
    (run_dir / "best.pt").unlink()
    with pytest.raises(InputError, match="best.pt: not found"):
        avg.average_run(run_dir, top=2)
