"""Pseudo-labels: the selection rule by hand, the written dataset against predict's own
masks, the training sampler's share, that no pseudo-labelled image reaches validation or
the OOF statistics, and the refusals."""
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from competition.data import datasets as data_lib
from competition.train import sampling
from competition.infer import oof
from competition.infer import predict
from competition.infer import pseudo
from competition.train import pseudo_mix
from competition.train import fit as train_lib
from competition.data import folds as folds_lib
from competition.train import runtime as runtime_lib
from competition.model.config import build_config, pseudo_per_batch
from competition.errors import InputError
from competition.files import write_csv
from competition.data.folds import make_folds
from competition.data.labels import CLASSES, by_image, load_train, masks, read_table
from competition.infer.predict import predict_test
from competition.infer.search import Params
from conftest import random_checkpoint
from test_cli import one_line_error, run_here
from test_infer import record_batches
from test_train import folds_csv  # noqa: F401 (the fixture: 5 folds of the synthetic set)

PARAMS = Params((0.3, 0.5, 0.6, 0.7), (0, 30, 100, 400), (0, 50, 500, 1000))
VIEWS = ("none",)
BATCH = 2
TINY = dict(crop_height=64, crop_width=128, epochs=1, batch_size=4, num_workers=0,
            val_batch_size=6, warmup_epochs=0.5, ema_decay=0.9)


# ---- the selection rule ----

def test_the_rule_on_hand_made_probabilities():
    nan = float("nan")
    probs = np.array([
        [0.99, 0.01, 0.01, 0.01],  # 0 kept: class 1 present, its mask alone non-empty
        [0.01, 0.02, 0.03, 0.04],  # 1 kept: defect-free
        [0.99, 0.50, 0.01, 0.01],  # 2 dropped: class 2 unsure
        [0.99, 0.01, 0.01, 0.01],  # 3 dropped: class 1 present, its mask empty
        [0.01, 0.01, 0.96, 0.97],  # 4 kept: classes 3 and 4
        [0.01, 0.01, 0.01, 0.01],  # 5 dropped: class 2 absent, its mask non-empty
        [0.95, 0.05, 0.01, 0.01],  # 6 dropped: on the thresholds is unsure (strict > and <)
        [nan, 0.01, 0.01, 0.01],   # 7 dropped: a NaN is neither
    ], np.float32)
    nonempty = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0],
                         [0, 0, 1, 1], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], bool)
    chosen = pseudo.select(probs, nonempty, high=0.95, low=0.05)
    assert chosen["kept"].tolist() == [True, True, False, False, True, False, False, False]
    assert pseudo.summarize(chosen) == {
        "images": 8, "kept": 3, "kept_per_class": {"1": 1, "2": 0, "3": 1, "4": 1},
        "kept_defect_free": 1, "unsure_per_class": {"1": 2, "2": 2, "3": 0, "4": 0},
        "disagree_per_class": {"1": 1, "2": 1, "3": 0, "4": 0}}
    # other thresholds: at 0.9 / 0.1 image 6 is sure (0.95 present with its mask, 0.05
    # absent) and image 2's 0.5 is still unsure
    looser = pseudo.select(probs, nonempty, high=0.9, low=0.1)
    assert looser["kept"].tolist() == [True, True, False, False, True, False, True, False]


def test_the_source_is_the_first_the_models_give_or_the_one_named():
    assert pseudo.resolve_source("auto", True, True) == "cls"
    assert pseudo.resolve_source("auto", False, True) == "aux"
    assert pseudo.resolve_source("auto", False, False) == "maxprob"
    assert pseudo.resolve_source("maxprob", True, True) == "maxprob"
    with pytest.raises(InputError, match="--source cls: no classifiers given"):
        pseudo.resolve_source("cls", False, True)
    with pytest.raises(InputError, match="--source aux: none of the segmenters has"):
        pseudo.resolve_source("aux", True, False)
    for high, low in ((0.5, 0.6), (0.5, 0.5), (1.5, 0.1), (0.9, -0.1), (float("nan"), 0.1)):
        with pytest.raises(InputError, match="need 0 <= low < high <= 1"):
            pseudo.check_rule(pseudo.Rule(high, low))


# ---- the dataset written from an ensemble's predictions ----

@pytest.fixture(scope="module")
def data(synthetic, tmp_path_factory):
    """4 synthetic test images and no sample_submission.csv: predict then takes the images
    in sorted order, as `pseudo` does, so both run the same batches."""
    root = tmp_path_factory.mktemp("pseudo") / "data"
    (root / "test_images").mkdir(parents=True)
    for name in sorted(os.listdir(synthetic / "test_images"))[:4]:
        shutil.copy(synthetic / "test_images" / name, root / "test_images" / name)
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return (random_checkpoint(root / "seg.pt", seed=0, cls_weight=0.2),
            random_checkpoint(root / "cls.pt", seed=1, task="classify"))


@pytest.fixture(scope="module")
def predicted(data, models):
    """pseudo.predict of the 4 images, and the probabilities its stream gave each row."""
    with pytest.MonkeyPatch.context() as patch:
        seen = record_batches(patch, predict)
        pred = pseudo.predict(data, [models[0]], PARAMS, VIEWS, BATCH, 0,
                              classifiers=[models[1]])
    return pred, seen


def test_predictions_carry_every_signal_in_image_order(predicted):
    pred, seen = predicted
    assert pred.source == "cls" and set(pred.signals) == {"maxprob", "aux", "cls"}
    assert all(v.shape == (4, 4) and np.isfinite(v).all() for v in pred.signals.values())
    # maxprob of row i is the largest of the very probabilities the stream gave row i
    expected = np.stack([seen[i].amax(dim=(1, 2)).numpy() for i in range(4)])
    assert np.array_equal(pred.signals["maxprob"], expected)
    assert set(pred.encoded) == {(i, c) for i in pred.image_ids for c in CLASSES}


def test_the_dataset_round_trips_and_holds_predicts_masks(data, models, predicted, tmp_path):
    pred, _ = predicted
    kept = np.array([True, False, True, True])
    out = tmp_path / "pseudo"
    summary = {"kept": 3}
    assert pseudo.write_dataset(out, data, pred, kept, summary) == "symlink"
    assert sorted(os.listdir(out)) == ["summary.json", "train.csv", "train_images"]
    assert json.loads((out / "summary.json").read_text()) == {"kept": 3, "links": "symlink"}
    chosen = [i for i, k in zip(pred.image_ids, kept) if k]
    for image_id in chosen:
        link = out / "train_images" / image_id
        assert link.is_symlink() and link.resolve() == (data / "test_images" / image_id).resolve()
    # labels.py reads it back as a training set: every kept image, its defects in train.csv
    image_ids, labels = load_train(out)
    assert image_ids == chosen
    table, layout, header = read_table(out / "train.csv")
    assert layout == "current" and header == ["ImageId", "ClassId", "EncodedPixels"]
    assert (table.EncodedPixels != "").all(), "one row per present defect only"
    # the masks are the ones predict writes for the same images, batches and models
    sub = tmp_path / "submission.csv"
    predict_test(data, [models[0]], PARAMS, VIEWS, sub, BATCH, 0, classifiers=[models[1]])
    written = by_image(labels)
    submitted = by_image(read_table(sub)[0].query("EncodedPixels != ''"))
    assert any(written.values()), "a non-trivial case: some kept image has a defect"
    for image_id in chosen:
        assert np.array_equal(masks(written.get(image_id, {})),
                              masks(submitted.get(image_id, {}))), image_id


def test_links_fall_back_to_hard_links_then_copies(data, predicted, tmp_path, monkeypatch):
    pred, _ = predicted
    kept = np.array([True, True, False, False])

    def refuse(*args):
        raise OSError("no links here")
    monkeypatch.setattr(os, "symlink", refuse)
    assert pseudo.write_dataset(tmp_path / "hard", data, pred, kept, {}) == "hardlink"
    first = tmp_path / "hard" / "train_images" / pred.image_ids[0]
    assert not first.is_symlink() and first.stat().st_nlink >= 2
    monkeypatch.setattr(os, "link", refuse)
    assert pseudo.write_dataset(tmp_path / "copy", data, pred, kept, {}) == "copy"
    copied = tmp_path / "copy" / "train_images" / pred.image_ids[1]
    assert copied.read_bytes() == (data / "test_images" / pred.image_ids[1]).read_bytes()


def test_a_failed_write_leaves_nothing(data, predicted, tmp_path, monkeypatch):
    pred, _ = predicted
    out = tmp_path / "pseudo"
    pseudo.write_dataset(out, data, pred, np.array([True] * 4), {"kept": 4})
    before = sorted(os.listdir(out / "train_images"))
    calls = []

    def breaks(source, target, kind="symlink"):
        calls.append(target)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(source, target, kind)
    real = pseudo.link
    monkeypatch.setattr(pseudo, "link", breaks)
    with pytest.raises(OSError, match="disk full"):
        pseudo.write_dataset(out, data, pred, np.array([True, True, True, False]), {"kept": 3})
    assert sorted(os.listdir(out / "train_images")) == before  # the old dataset, whole
    assert json.loads((out / "summary.json").read_text()) == {"kept": 4, "links": "symlink"}
    assert sorted(os.listdir(tmp_path)) == ["pseudo"], "no temporary folder left"


def rule_keeping_some(pred) -> tuple[float, float]:
    """A (low, high) for the maxprob rule that keeps some of the images and drops others,
    each between two observed values (no value on a threshold)."""
    values = np.unique(pred.signals["maxprob"])
    cuts = (values[:-1] + values[1:]) / 2
    for low in cuts:
        for high in cuts[cuts > low]:
            kept = pseudo.select(pred.signals["maxprob"], pseudo.nonempty(pred), high, low)
            if 0 < kept["kept"].sum() < len(pred.image_ids):
                return float(low), float(high)
    raise AssertionError("no maxprob rule keeps some images and drops others")


def write_postprocess(path, params=PARAMS):
    path.write_text(json.dumps({"classes": {str(c): {
        "threshold": params.threshold[c - 1], "min_component": params.min_component[c - 1],
        "min_area": params.min_area[c - 1]} for c in CLASSES}, "tta": list(VIEWS)}))
    return path


def test_the_command_keeps_what_the_rule_says(data, models, predicted, tmp_path, capsys):
    pred, _ = predicted
    low, high = rule_keeping_some(pred)
    expected = pseudo.select(pred.signals["maxprob"], pseudo.nonempty(pred), high, low)
    pp = write_postprocess(tmp_path / "postprocess.json")
    out = tmp_path / "pseudo"
    result = run_here(capsys, "pseudo", "--data", data, "--checkpoints", models[0],
                      "--classifiers", models[1], "--postprocess", pp, "--out", out,
                      "--batch-size", BATCH, "--workers", 0, "--source", "maxprob",
                      "--confident-low", repr(low), "--confident-high", repr(high))
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary == {**pseudo.summarize(expected), "links": "symlink",
                       "rule": {"source": "maxprob", "high": high, "low": low,
                                "agree": "post-processed mask non-empty exactly where p > high"},
                       "data": str(data), "postprocess": str(pp), "tta": list(VIEWS),
                       **pred.models}
    kept = [i for i, k in zip(pred.image_ids, expected["kept"]) if k]
    assert sorted(os.listdir(out / "train_images")) == kept
    assert f"kept {len(kept)} of 4 test images" in result.stdout
    assert f"wrote {out}: train.csv, train_images/ ({len(kept)} symlinks" in result.stdout
    # the kept images' masks: present (non-empty) exactly where maxprob > high
    written = by_image(load_train(out)[1])
    rows = {i: r for r, i in enumerate(pred.image_ids)}
    for image_id in kept:
        present = pred.signals["maxprob"][rows[image_id]] > high
        assert sorted(written.get(image_id, {})) == [c for c in CLASSES if present[c - 1]]


def test_pseudo_refusals_are_one_line(data, models, tmp_path, capsys):
    pp = write_postprocess(tmp_path / "postprocess.json")
    base = ("pseudo", "--data", data, "--checkpoints", models[0], "--postprocess", pp,
            "--workers", 0, "--batch-size", BATCH)

    def refused(*args, match):
        result = run_here(capsys, *base, *args)
        one_line_error(result, match)
    refused("--out", tmp_path / "a", "--confident-low", "0.6", "--confident-high", "0.5",
            match="--confident-low 0.6 --confident-high 0.5: need 0 <= low < high <= 1")
    refused("--out", tmp_path / "a", "--source", "cls", match="--source cls: no classifiers")
    refused("--out", tmp_path / "a", "--source", "any", match="--source any: valid: auto, cls")
    refused("--out", data, match=f"--out {data}: would replace {data}")
    refused("--out", data.parent, match="would replace")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    refused("--out", taken, match=f"--out {taken}: exists and is not a pseudo-label dataset")
    assert (taken / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    (empty / "test_images").mkdir(parents=True)
    result = run_here(capsys, *base[:2], empty, *base[3:], "--out", tmp_path / "b")
    one_line_error(result, f"{empty / 'test_images'}: no test images")
    # thresholds nothing passes: one line, nothing written
    result = run_here(capsys, *base, "--out", tmp_path / "c", "--source", "maxprob",
                      "--confident-low", "0.0", "--confident-high", "1.0")
    one_line_error(result, "no test image of", "nothing written")
    assert not (tmp_path / "c").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "postprocess.json", "taken"]


# ---- training with a pseudo-labelled set ----

def stand_in(synthetic, root):
    """A pseudo-labelled dataset without a model: links to the 12 synthetic test images, with
    their true masks as the labels."""
    (root / "train_images").mkdir(parents=True)
    for name in os.listdir(synthetic / "test_images"):
        os.symlink(synthetic / "test_images" / name, root / "train_images" / name)
    shutil.copy(synthetic / "test_truth.csv", root / "train.csv")
    return root


@pytest.fixture(scope="module")
def fake(synthetic, tmp_path_factory):
    return stand_in(synthetic, tmp_path_factory.mktemp("fake") / "pseudo")


class Base:
    """A per-epoch sampler stand-in: `n` indices of this rank, shuffled per epoch."""

    def __init__(self, n, rank=0, world=1):
        self.n, self.rank, self.world, self.epoch = n, rank, world, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        order = np.random.default_rng(self.epoch).permutation(self.n * self.world)
        return iter(order[self.rank::self.world].tolist())

    def __len__(self):
        return self.n


def test_every_batch_holds_the_stated_number_of_pseudo_items():
    # share 0.25 of 8: 2 pseudo-labelled and 6 labelled per batch; 23 labelled items give
    # 3 batches (5 left over, as drop_last leaves them), 6 pseudo items of 100
    assert pseudo_per_batch(8, 0.25) == 2 and pseudo_per_batch(8, 0.15) == 1
    assert pseudo_per_batch(16, 0.15) == 2 and pseudo_per_batch(4, 0.125) == 1  # half up
    base = Base(23)
    sampler = pseudo_mix.MixedSampler(base, 100, 23, batch_size=8, k=2, seed=0)
    keys = list(sampler)
    assert len(keys) == len(sampler) == 24
    assert [p for _, p, _ in keys] == list(range(24))
    indices = [i for _, _, i in keys]
    for b in range(3):
        batch = indices[8 * b:8 * b + 8]
        assert sum(i >= 23 for i in batch) == 2
    assert [i for i in indices if i < 23] == list(base)[:18]
    assert len({i for i in indices if i >= 23}) == 6 and max(indices) < 123
    again = list(sampler)
    sampler.set_epoch(1)
    assert again == keys and list(sampler) != keys and base.epoch == 1


def test_ranks_draw_disjoint_pseudo_items_and_cycle_a_small_set():
    world = 2
    ranks = [pseudo_mix.MixedSampler(Base(30, r, world), 50, 60, 8, 2, seed=3, rank=r, world=world)
             for r in range(world)]
    keys = [list(s) for s in ranks]
    assert len(keys[0]) == len(keys[1]) == 40  # 30 // 6 = 5 batches of 8 on each rank
    positions = [p for k in keys for _, p, _ in k]
    assert sorted(positions) == list(range(80)), "every item of the epoch has its own position"
    drawn = [{i for _, _, i in k if i >= 60} for k in keys]
    assert len(drawn[0]) == len(drawn[1]) == 10 and not drawn[0] & drawn[1]
    # 7 pseudo items for 2 x 10 draws: the whole set before any comes back
    small = [pseudo_mix.MixedSampler(Base(30, r, world), 7, 60, 8, 2, seed=3, rank=r, world=world)
             for r in range(world)]
    counts = np.bincount([i - 60 for s in small for _, _, i in s if i >= 60], minlength=7)
    assert counts.sum() == 20 and counts.min() >= 2 and counts.max() <= 3


def test_the_loaders_mix_pseudo_items_into_training_only(synthetic, folds_csv, fake):
    config = build_config("demo_cpu", **TINY, pseudo=str(fake), pseudo_share=0.25)
    image_ids, labels = load_train(synthetic)
    train_ids, val_ids = folds_lib.split(folds_csv, 0, image_ids)
    extra = pseudo_mix.load(fake, image_ids, synthetic)
    assert sorted(extra.image_ids) == sorted(os.listdir(synthetic / "test_images"))
    train_loader, val_loader = train_lib.build_loaders(
        config, synthetic, train_ids, val_ids, by_image(labels), runtime_lib.Runtime(), extra)
    sampling.set_epoch(train_loader, 0)
    batches = [index for _, _, index in train_loader]
    # 48 training images, 3 of them and 1 pseudo-labelled image in every batch of 4
    assert len(batches) == len(train_loader) == 16 and all(len(b) == 4 for b in batches)
    assert [int((b >= len(train_ids)).sum()) for b in batches] == [1] * 16
    seen = torch.cat(batches)
    assert sorted(seen[seen < len(train_ids)].tolist()) == list(range(48))
    counts = np.bincount((seen[seen >= 48] - 48).numpy(), minlength=12)
    assert counts.sum() == 16 and counts.min() >= 1  # the 12 once, then 4 of them again
    assert train_loader.dataset.parts[1].image_ids == extra.image_ids
    # validation: the fold's images only
    assert val_loader.dataset.image_ids == val_ids and not set(val_ids) & set(extra.image_ids)
    # a pseudo item is its image and its labels (no transform: the full-size truth)
    plain = pseudo_mix.Concat([data_lib.SteelDataset(synthetic / "train_images", train_ids, {}),
                           data_lib.SteelDataset(fake / "train_images", extra.image_ids,
                                                 extra.encoded)])
    j = next(j for j, i in enumerate(extra.image_ids) if extra.encoded.get(i))
    image, mask, index = plain[48 + j]
    assert index == 48 + j
    assert np.array_equal(mask.numpy(), masks(extra.encoded[extra.image_ids[j]]))


def test_a_run_with_pseudo_labels_validates_and_scores_oof_on_the_fold_alone(
        synthetic, fake, tmp_path, monkeypatch, capsys):
    image_ids, labels = load_train(synthetic)
    folds_csv = tmp_path / "folds.csv"  # 10 folds: 6 validation images (CPU time)
    write_csv(folds_csv, make_folds(image_ids, labels, n_folds=10, seed=0))
    captured = {}
    real = train_lib.build_loaders

    def capture(*args, **kwargs):
        captured["loaders"] = real(*args, **kwargs)
        return captured["loaders"]
    monkeypatch.setattr(train_lib, "build_loaders", capture)
    runs = tmp_path / "runs"
    config = build_config("demo_cpu", **TINY, pseudo=str(fake), pseudo_share=0.25)
    row = train_lib.fit(config, synthetic, 0, runs / "fold0", folds_csv)
    assert row["step"] == 18  # 54 images, 3 a batch beside 1 pseudo-labelled: 18 updates
    assert "pseudo-labels: 12 images of" in capsys.readouterr().out
    folds = pd.read_csv(folds_csv)
    val_ids = folds.ImageId[folds.fold == 0].tolist()
    pseudo_ids = set(os.listdir(fake / "train_images"))
    assert captured["loaders"][1].dataset.image_ids == val_ids
    assert not pseudo_ids & set(folds.ImageId), "folds.csv never names a pseudo image"
    # OOF statistics of the run: folds.csv's fold-0 images of the original dataset only
    stats = tmp_path / "oof"
    oof.run(synthetic, runs, folds_csv, [0], VIEWS, 6, 0, stats)
    meta = json.loads((stats / "fold0" / "meta.json").read_text())
    assert meta["image_ids"] == val_ids and not pseudo_ids & set(meta["image_ids"])
    assert np.load(stats / "fold0" / "truth.npy").shape == (len(val_ids), 4)


def test_training_refusals_are_one_line(synthetic, folds_csv, fake, tmp_path, capsys):
    base = ("train", "--data", synthetic, "--fold", 0, "--folds-csv", folds_csv, "--preset",
            "demo_cpu", "--workers", 0, "--out", tmp_path / "run")

    def refused(*args, match):
        one_line_error(run_here(capsys, *base, *args), match)
        assert not (tmp_path / "run").exists()
    refused("--pseudo", fake, "--pseudo-share", "1.0",
            match="pseudo_share 1.0: the share of pseudo-labelled images in a batch, must be "
                  "in [0, 1)")
    refused("--pseudo", fake, "--pseudo-share", "-0.1", match="pseudo_share -0.1: ")
    refused("--pseudo-share", "0.15", match="pseudo_share 0.15 without pseudo")
    refused("--pseudo", fake, match="with pseudo_share 0 mixes nothing in")
    refused("--pseudo", fake, "--pseudo-share", "0.05",
            match="pseudo_share 0.05 of batch_size 8 gives 0 pseudo-labelled images per batch")
    share = ("--pseudo-share", "0.15")
    refused("--pseudo", tmp_path / "nowhere", *share, match="no such folder")
    empty = tmp_path / "empty"
    (empty / "train_images").mkdir(parents=True)
    (empty / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n")
    refused("--pseudo", empty, *share, match=f"--pseudo: {empty / 'train_images'}: no images")
    shutil.rmtree(empty / "train_images")
    refused("--pseudo", empty, *share, match="image folder not found")
    lost = stand_in(synthetic, tmp_path / "lost")
    first = pd.read_csv(lost / "train.csv").ImageId[0]
    (lost / "train_images" / first).unlink()
    refused("--pseudo", lost, *share,
            match=f"--pseudo: {lost / 'train.csv'} line 2: no image file")
    clash = stand_in(synthetic, tmp_path / "clash")
    train_image = sorted(os.listdir(synthetic / "train_images"))[0]
    os.symlink(synthetic / "train_images" / train_image, clash / "train_images" / train_image)
    refused("--pseudo", clash, *share,
            match=f"--pseudo: {clash / 'train_images' / train_image}: the same ImageId is an "
                  "image of")
    # a folds file that names a pseudo-labelled image: not an image of the dataset
    folds = pd.read_csv(folds_csv)
    bad = tmp_path / "folds.csv"
    pd.concat([folds, pd.DataFrame({"ImageId": [sorted(os.listdir(fake / "train_images"))[0]],
                                    "fold": [0]})]).to_csv(bad, index=False)
    one_line_error(run_here(capsys, *base[:6], bad, *base[7:], "--pseudo", fake, *share),
                   "has no image in the dataset")
