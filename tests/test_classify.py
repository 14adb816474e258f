"""Image-level training: best_f1 and ROC AUC against brute force, a classifier run (best.pt,
history, resume), a segmenter with an image-level head, and the CLI's refusals."""
import itertools

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

from competition.model import checkpoint
from competition.data import datasets as data_lib
from competition.train import fit as train_lib
from competition.train import evaluate as evaluate_lib
from competition.train import runtime as runtime_lib
from competition.model.config import build_config, to_dict
from competition.data.labels import by_image, load_train
from competition.model.networks import Classifier
from test_cli import one_line_error, run
from test_train import folds_csv, interrupted_and_resumed  # noqa: F401 (a fixture)

TINY_CLS = dict(crop_height=64, crop_width=128, epochs=2, batch_size=4, num_workers=0,
                val_batch_size=6, warmup_epochs=0.5)


def tiny_classifier(**overrides):
    return build_config("demo_cpu_cls", **{**TINY_CLS, **overrides})


# --- the scores, against independent slow references -----------------------------------------

def f1_by_counting(predicted, labels):
    tp = sum(1 for p, y in zip(predicted, labels) if p and y)
    fp = sum(1 for p, y in zip(predicted, labels) if p and not y)
    fn = sum(1 for p, y in zip(predicted, labels) if not p and y)
    return 2 * tp / (2 * tp + fp + fn)


def test_best_f1_by_hand():
    # cuts from the top: 1 called positive: F1 2/3; 2: 1/2; 3: 4/5; 4: 2/3
    threshold, f1 = evaluate_lib.best_f1([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0])
    assert f1 == pytest.approx(0.8) and threshold == pytest.approx(0.2)  # between 0.3 and 0.1
    assert evaluate_lib.best_f1([0.4, 0.2], [1, 1]) == (pytest.approx(0.1), 1.0)  # all positive
    assert evaluate_lib.best_f1([0.4, 0.0], [1, 1]) == (-0.5, 1.0)  # 0 is above -0.5
    assert evaluate_lib.best_f1([0.4, 0.2], [0, 0]) == (None, None)


@pytest.mark.parametrize("seed", range(20))
def test_best_f1_matches_a_brute_force_search(seed):
    """Every threshold `p >= t` over the probabilities themselves, F1 counted pair by pair:
    best_f1's F1 is the best of them, and its threshold (used as `p > t`) achieves it."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 30))
    probs = np.round(rng.random(n), 1)  # one decimal: many ties
    labels = rng.random(n) < rng.random()
    if not labels.any():
        labels[rng.integers(n)] = True
    threshold, f1 = evaluate_lib.best_f1(probs, labels)
    brute = max(f1_by_counting([p >= t for p in probs], labels) for t in set(probs))
    assert f1 == pytest.approx(brute, abs=1e-12)
    assert f1_by_counting([p > threshold for p in probs], labels) == pytest.approx(f1, abs=1e-12)
    assert [p > threshold for p in probs] == [p >= threshold for p in probs]


def auc_by_pairs(probs, labels):
    """The share of (positive, negative) pairs ranked right, ties counting half."""
    pos = [p for p, y in zip(probs, labels) if y]
    neg = [p for p, y in zip(probs, labels) if not y]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_roc_auc_against_a_pair_count():
    assert evaluate_lib.roc_auc([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0]) == pytest.approx(0.75)
    assert evaluate_lib.roc_auc([0.5, 0.5, 0.2], [1, 0, 0]) == pytest.approx(0.75)  # a tie: half
    rng = np.random.default_rng(0)
    for _ in range(10):
        probs, labels = np.round(rng.random(25), 1), rng.random(25) < 0.4
        assert evaluate_lib.roc_auc(probs, labels) == pytest.approx(auc_by_pairs(probs, labels))
    assert evaluate_lib.roc_auc([0.1, 0.9], [0, 0]) is None
    assert evaluate_lib.roc_auc([0.1, 0.9], [1, 1]) is None


def test_image_scores_skip_a_class_with_one_label_value():
    probs = np.array([[0.9, 0.2, 0.6, 0.1], [0.3, 0.1, 0.7, 0.2], [0.8, 0.4, 0.2, 0.3]])
    labels = np.array([[1, 0, 1, 1], [0, 0, 1, 1], [1, 0, 0, 1]])
    result = evaluate_lib.image_scores(probs, labels, f1=True)
    assert result["auc"] == {"1": 1.0, "2": None, "3": 1.0, "4": None}
    assert result["mean_auc"] == 1.0  # over classes 1 and 3 only
    assert result["f1"]["2"] is None and result["f1_threshold"]["2"] is None
    assert result["f1"]["4"] == 1.0  # all positive: everything called positive
    assert result["f1_threshold"]["1"] == pytest.approx((0.8 + 0.3) / 2)
    assert evaluate_lib.image_scores(probs, 0 * labels, f1=False) == {
        "auc": dict.fromkeys("1234"), "mean_auc": None}


def gather_worker(rank, world, port, folder):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    parts = [np.full((2, 4), 1.0), np.full((1, 4), 2.0)] if rank else []  # rank 0 has none
    np.save(folder / f"rank{rank}.npy", runtime_lib.gather_rows(parts, 4,
                                                                runtime_lib.Runtime(rank, world)))
    dist.destroy_process_group()


def test_gather_rows_collects_every_ranks_rows_in_rank_order(tmp_path):
    """Under DDP each rank validates its own images and AUC needs them all: two gloo
    processes, one without rows, both get all the rows."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(gather_worker, args=(2, port, tmp_path), nprocs=2)
    expected = np.array([[1.0] * 4] * 2 + [[2.0] * 4])
    for rank in range(2):
        assert np.array_equal(np.load(tmp_path / f"rank{rank}.npy"), expected)


# --- a classifier run ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def classifier_run(synthetic, folds_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("cls") / "fold0"
    row = train_lib.fit(tiny_classifier(), synthetic, 0, out, folds_csv)
    return out, row


CLASSIFIER_COLUMNS = (["epoch", "step", "lr", "train_loss", "val_loss", "val_auc"]
                      + [f"auc_{c}" for c in "1234"] + [f"f1_{c}" for c in "1234"]
                      + [f"f1_threshold_{c}" for c in "1234"]
                      + ["best", "images_per_s", "epoch_s", "skipped_steps", "planned_epochs"])


def test_a_classifier_run_writes_its_history_and_a_loadable_best_pt(classifier_run):
    out, row = classifier_run
    history = pd.read_csv(out / "history.csv")
    assert history.columns.tolist() == CLASSIFIER_COLUMNS
    assert history.epoch.tolist() == [1, 2] and history.step.tolist() == [12, 24]
    best = checkpoint.load(out / "best.pt")
    assert best["config"] == to_dict(tiny_classifier()) and best["config"]["task"] == "classify"
    scores = [h["val_auc"] if h["val_auc"] is not None else 0.0
              for h in checkpoint.load(out / "last.pt")["history"]]
    assert best["score"]["score"] == row["best"] == max(scores)
    model, config = checkpoint.model_from(out / "best.pt")
    assert isinstance(model, Classifier) and config.task == "classify"
    images = data_lib.normalize(torch.zeros(2, 3, 256, 1600, dtype=torch.uint8))
    with torch.no_grad():
        assert model(images).shape == (2, 4)


def test_the_classifier_scores_are_those_of_its_saved_model(classifier_run, synthetic,
                                                             folds_csv):
    """best.pt's validation AUC and F1 thresholds, recomputed from the saved model's
    probabilities and the labels of train.csv (which classes each image has): the AUC by
    pair count, the F1 counted at the saved thresholds."""
    out, _ = classifier_run
    best = checkpoint.load(out / "best.pt")["score"]
    model, _ = checkpoint.model_from(out / "best.pt")
    model = model.to(memory_format=torch.channels_last)  # as the loop held it
    folds = pd.read_csv(folds_csv)
    val_ids = folds.ImageId[folds.fold == 0].tolist()
    _, labels = load_train(synthetic)
    dataset = data_lib.SteelDataset(synthetic / "train_images", val_ids, by_image(labels))
    probs = []
    with torch.no_grad():
        for images, _, _ in data_lib.loader(dataset, 6, 0):
            images = data_lib.normalize(images, channels_last=True)
            probs.append(torch.sigmoid(model(images)).numpy())
    probs = np.concatenate(probs)
    present = np.array([[((labels.ImageId == i) & (labels.ClassId == c)).any() for c in
                         range(1, 5)] for i in val_ids])
    assert present.any(0).sum() >= 2 and not present.all(0).any(), "a case with AUCs"
    for k, c in enumerate("1234"):
        if present[:, k].any():
            assert best["auc"][c] == pytest.approx(auc_by_pairs(probs[:, k], present[:, k]),
                                                   abs=1e-9)
            assert best["f1"][c] == pytest.approx(
                f1_by_counting(probs[:, k] > best["f1_threshold"][c], present[:, k]))
        else:
            assert best["auc"][c] is None and best["f1"][c] is None
    assert best["mean_auc"] == pytest.approx(
        np.mean([v for v in best["auc"].values() if v is not None]))


def test_a_classifier_run_resumes_exactly(classifier_run, synthetic, folds_csv, tmp_path,
                                          monkeypatch):
    resumed = interrupted_and_resumed(tiny_classifier(), synthetic, folds_csv,
                                      tmp_path / "fold0", monkeypatch)
    straight = checkpoint.load(classifier_run[0] / "last.pt")
    assert resumed["step"] == straight["step"] == 24
    for key, value in straight["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    assert pd.DataFrame(resumed["history"]).drop(columns=["images_per_s", "epoch_s"]).equals(
        pd.DataFrame(straight["history"]).drop(columns=["images_per_s", "epoch_s"]))


# --- a segmenter with an image-level head ---------------------------------------------------

def test_a_segmenter_with_cls_weight_trains_its_head_and_reports_its_auc(
        synthetic, folds_csv, tmp_path):
    config = build_config("demo_cpu", crop_height=64, crop_width=128, epochs=1, batch_size=4,
                          num_workers=0, val_batch_size=6, cls_weight=0.2)
    out = tmp_path / "head"
    row = train_lib.fit(config, synthetic, 0, out, folds_csv)
    history = pd.read_csv(out / "history.csv")
    assert {"val_dice", "all_empty", "val_auc", "auc_1", "auc_4"} <= set(history.columns)
    assert "f1_1" not in history.columns
    assert row["best"] == row["val_dice"], "a segmenter is kept for its Dice"
    assert 0.0 <= row["val_auc"] <= 1.0
    model, saved = checkpoint.model_from(out / "best.pt")
    assert saved.cls_weight == 0.2
    with torch.no_grad():
        masks, labels = model(torch.zeros(1, 3, 64, 128))
    assert masks.shape == (1, 4, 64, 128) and labels.shape == (1, 4)
    torch.manual_seed(config.seed)  # the run's initial weights, as fit makes them
    start = train_lib.make_model(config, torch.device("cpu")).state_dict()
    trained = checkpoint.load(out / "last.pt")["model"]
    head = [k for k in trained if k.startswith("classification_head.") and "weight" in k]
    assert head and all(not torch.equal(start[k], trained[k]) for k in head), "it trained"


# --- the command line -------------------------------------------------------------------------

def test_the_classifier_presets_bad_inputs_are_one_line(synthetic, folds_csv, tmp_path):
    out = tmp_path / "cli"
    base = ["train", "--data", synthetic, "--fold", 0, "--folds-csv", folds_csv, "--out", out,
            "--preset", "demo_cpu_cls"]
    one_line_error(run(*base, "--mask-dropout-p", 1.5), "mask_dropout_p 1.5", "[0, 1]")
    one_line_error(run(*base, "--cls-weight", 0.2), "cls_weight 0.2", "classifier")
    assert not out.exists()
