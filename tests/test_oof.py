"""OOF statistics streamed from a model's predictions against a direct computation, and
the whole chain: statistics -> search -> OOF submission scored from its CSV."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

from competition.infer import gates
from competition.infer import ensemble as infer
from competition.infer import oof, tuning
from competition.errors import InputError
from competition.data.datasets import SteelDataset
from competition.data.labels import by_image, load_train, read_table
from competition.data.metric import score_tables
from competition.infer.predict import predict_oof
from competition.infer.search import Params, read_params
from conftest import random_checkpoint
from test_infer import ATOL, assert_one_by_one, record_batches

VIEWS = ("none", "hflip")
THRESHOLDS = (0.2, 0.5, 0.8)
COMPONENTS = (0, 30, 400)


@pytest.fixture(scope="module")
def runs(synthetic, tmp_path_factory):
    """Two 'trained' folds (untrained models) over 10 of the synthetic images."""
    image_ids, _ = load_train(synthetic)
    runs = tmp_path_factory.mktemp("runs")
    folds = pd.DataFrame({"ImageId": image_ids[:10], "fold": [0, 1] * 5})
    folds.to_csv(runs / "folds.csv", index=False)
    for k in (0, 1):
        (runs / f"fold{k}").mkdir()
        random_checkpoint(runs / f"fold{k}" / "best.pt", seed=k)
    return runs


def direct_stats(probs: list, truths: list):
    """Per image, class and threshold, scipy's 8-connected labelling of its (4, H, W)
    probabilities and the areas of its (4, H, W) truth counted with numpy."""
    stats = np.zeros((len(probs), 4, len(THRESHOLDS), len(COMPONENTS), 2), np.int64)
    for i, (p, truth) in enumerate(zip(probs, truths)):
        for c in range(4):
            for k, t in enumerate(THRESHOLDS):
                labels, n = ndimage.label((p[c] > t).numpy(), structure=np.ones((3, 3)))
                sizes = np.bincount(labels.ravel(), minlength=n + 1)
                hits = np.bincount(labels.ravel(), weights=truth[c].numpy().ravel(),
                                   minlength=n + 1)
                for m, smallest in enumerate(COMPONENTS):
                    keep = sizes >= smallest
                    keep[0] = False
                    stats[i, c, k, m] = sizes[keep].sum(), hits[keep].sum()
    return stats, np.array([t.numpy().sum(axis=(1, 2)) for t in truths])


def test_streamed_stats_equal_a_direct_computation(synthetic, runs, tmp_path, monkeypatch):
    image_ids, labels = load_train(synthetic)
    ids = image_ids[:5]
    out = tmp_path / "oof"
    ckpt = runs / "fold0" / "best.pt"
    seen = record_batches(monkeypatch, oof)
    oof.fold_stats(synthetic, ids, by_image(labels), ckpt, VIEWS, out, torch.device("cpu"),
                   batch_size=2, workers=0, desc="test", thresholds=THRESHOLDS,
                   min_components=COMPONENTS)
    items = [SteelDataset(synthetic / "train_images", ids, by_image(labels))[i]
             for i in range(len(ids))]
    # the stream predicted these images, in this order, with this checkpoint and views ...
    assert_one_by_one(seen, infer.load_ensemble([ckpt], torch.device("cpu")),
                      {i: image for i, (image, _, _) in enumerate(items)}, VIEWS)
    # ... and its counts are those of the very probabilities it used: another batch size
    # rounds differently, and a pixel on a threshold would flip
    stats, truths = direct_stats([seen[i] for i in range(len(ids))], [t for _, t, _ in items])
    got = np.load(out / "stats.npy")
    assert got.shape == (5, 4, 3, 3, 2) and got.dtype == np.int32
    assert (stats[..., 0] > 0).any() and (stats[..., 0] == 0).any(), "a test that tests"
    np.testing.assert_array_equal(got, stats)
    np.testing.assert_array_equal(np.load(out / "truth.npy"), truths)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["image_ids"] == ids and meta["tta"] == list(VIEWS)
    assert meta["thresholds"] == list(THRESHOLDS)
    examples = np.load(out / "examples.npz")
    assert set(examples["image_ids"]) <= set(ids) and examples["levels"].shape[1:] == (4, 256, 1600)


def test_npy_stream_refuses_a_short_file(tmp_path):
    with pytest.raises(RuntimeError, match="1 of 3 rows"):
        with oof.NpyStream(tmp_path / "x.npy", (3, 2), np.int32) as s:
            s.write(np.ones((1, 2)))
    with oof.NpyStream(tmp_path / "y.npy", (3, 2), np.int32) as s:
        s.write(np.arange(4).reshape(2, 2))
        s.write(np.array([[7, 8]]))
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), [[0, 1], [2, 3], [7, 8]])


def test_search_cv_equals_the_score_of_the_oof_submission(synthetic, runs, tmp_path):
    out = tmp_path / "sub"
    oof.run(synthetic, runs, runs / "folds.csv", [0, 1], VIEWS, batch_size=4, workers=0,
            stats_dir=out / "oof")
    # no area step and the best OOF Dice: masks survive (under the one-SE rule these tiny
    # models' masks are within noise of predicting nothing: below, every class may be empty)
    result = tuning.tune(out / "oof", [0, 1], out, min_areas=(0,), rule="best")
    assert (out / "postprocess.json").is_file()
    assert {"cv_report.md", "dice_vs_threshold.png", "oof_overlays.png"} <= {
        p.name for p in (out / "cv_report").iterdir()}
    assert result["images"] == 10 and set(result["folds"]) == {"0", "1"}
    assert result["tta"] == list(VIEWS)
    params = read_params(out / "postprocess.json")
    # the batch size of oof.run, as the CLI passes one --batch-size to both: the same batches
    # give the same probabilities; other ones round differently and may flip a pixel
    frame = predict_oof(synthetic, runs, runs / "folds.csv", [0, 1], params, VIEWS,
                        out / "oof.csv", batch_size=4, workers=0)
    assert len(frame) == 40 and (frame.EncodedPixels != "").sum() > 0
    scored = score_tables(read_table(out / "oof.csv")[0], read_table(synthetic / "train.csv")[0])
    assert scored["mean_dice"] == pytest.approx(result["oof_mean_dice"], abs=1e-12)
    for c in "1234":
        assert scored["per_class"][c] == pytest.approx(result["classes"][c]["oof_dice"],
                                                       abs=1e-12)
    assert scored["all_empty_baseline"] == pytest.approx(result["all_empty_baseline"])
    # the one-SE rule: its classes chosen empty (min_area search.EMPTY_AREA) are predicted
    # empty, and the CSV scores what the search says
    ruled = tuning.tune(out / "oof", [0, 1], out / "one_se", min_areas=(0,))
    empty = [c for c, v in ruled["classes"].items() if v["rung"] == "empty"]
    assert ruled["rule"] == "one_se" and empty
    frame = predict_oof(synthetic, runs, runs / "folds.csv", [0, 1],
                        read_params(out / "one_se" / "postprocess.json"), VIEWS,
                        out / "one_se" / "oof.csv", batch_size=4, workers=0)
    assert (frame.EncodedPixels[frame.ClassId.astype(str).isin(empty)] == "").all()
    scored = score_tables(read_table(out / "one_se" / "oof.csv")[0],
                          read_table(synthetic / "train.csv")[0])
    assert scored["mean_dice"] == pytest.approx(ruled["oof_mean_dice"], abs=1e-12)


@pytest.fixture(scope="module")
def ensemble_runs(synthetic, runs, tmp_path_factory):
    """Three runs over the same two folds: DeepLabV3 with an image-level head, a Unet, and a
    classifier (untrained models)."""
    root = tmp_path_factory.mktemp("ensemble")
    kinds = {"deeplab": dict(cls_weight=0.5), "unet": dict(arch="unet"),
             "cls": dict(task="classify")}
    for i, (name, overrides) in enumerate(kinds.items()):
        for k in (0, 1):
            (root / name / f"fold{k}").mkdir(parents=True)
            random_checkpoint(root / name / f"fold{k}" / "best.pt", seed=10 * i + k, **overrides)
    (root / "deeplab" / "folds.csv").write_bytes((runs / "folds.csv").read_bytes())
    return oof.Runs((root / "deeplab", root / "unet"), (1.0, 3.0), (root / "cls",))


def test_ensemble_oof_equals_each_model_alone_averaged(synthetic, ensemble_runs, tmp_path,
                                                       monkeypatch):
    """Fold 0's statistics of a weighted DeepLabV3 + Unet ensemble with a classifier: the
    probabilities the stream used are 1:3 means of each model predicting each image alone,
    and the stored maxprob, aux and cls are that mean's maximum and the heads' own."""
    image_ids, labels = load_train(synthetic)
    ids = image_ids[:10][0::2]  # fold 0 of the runs fixture
    seg, cls = ensemble_runs.of_fold(0)
    seen = record_batches(monkeypatch, oof)
    out = tmp_path / "oof"
    oof.fold_stats(synthetic, ids, by_image(labels), seg, VIEWS, out, torch.device("cpu"),
                   batch_size=2, workers=0, desc="test", thresholds=THRESHOLDS,
                   min_components=COMPONENTS, weights=[1.0, 3.0], classifiers=cls)
    cpu = torch.device("cpu")
    alone = [infer.load_ensemble([p], cpu) for p in seg]
    classifier = infer.load_ensemble(cls, cpu, task="classify")
    items = [SteelDataset(synthetic / "train_images", ids, by_image(labels))[i]
             for i in range(len(ids))]
    aux, probs_cls = [], []
    for i, (image, _, _) in enumerate(items):
        a = infer.predict_batch(alone[0], image[None], VIEWS, None)
        b = infer.predict_batch(alone[1], image[None], VIEWS, None)
        torch.testing.assert_close(seen[i], ((a.masks + 3 * b.masks) / 4)[0], rtol=0,
                                   atol=ATOL)
        aux.append(a.aux[0])
        probs_cls.append(infer.predict_batch(alone[1], image[None], VIEWS, None,
                                             classifier).cls[0])
    np.testing.assert_allclose(np.load(out / "maxprob.npy"),
                               np.stack([seen[i].amax(dim=(1, 2)) for i in range(5)]), atol=ATOL)
    np.testing.assert_allclose(np.load(out / "aux.npy"), torch.stack(aux), atol=ATOL)
    np.testing.assert_allclose(np.load(out / "cls.npy"), torch.stack(probs_cls), atol=ATOL)
    stats, truths = direct_stats([seen[i] for i in range(5)], [t for _, t, _ in items])
    np.testing.assert_array_equal(np.load(out / "stats.npy"), stats)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["signals"] == ["maxprob", "aux", "cls"]
    assert [m["weight"] for m in meta["segmenters"]] == [1.0, 3.0]
    assert meta["classifiers"][0]["checkpoint"] == str(cls[0])


# Two assignments of gate kinds to classes: every kind is predicted once, and scored.
ASSIGNMENTS = (("gate cls", "scale aux", "maxprob", "none"),
               ("scale cls", "gate aux", "none", "maxprob"))


def test_each_gate_kind_scores_on_the_oof_submission_what_the_search_says(
        synthetic, ensemble_runs, runs, tmp_path):
    """The search reports, per class, the Dice of each gate kind at its best setting. With
    those settings in postprocess.json, the OOF submission of the same ensemble, written
    as CSV and scored like any other, gives exactly those Dice."""
    out = tmp_path / "sub"
    oof.run(synthetic, ensemble_runs, runs / "folds.csv", [0, 1], VIEWS, batch_size=4,
            workers=0, stats_dir=out / "oof")
    result = tuning.tune(out / "oof", [0, 1], out, min_areas=(0, 2000))
    assert result["signals"] == ["aux", "cls", "maxprob"]
    kinds = {name for v in result["classes"].values() for name in v["gates"]}
    assert kinds == {"none", "gate aux", "gate cls", "scale aux", "scale cls", "maxprob"}
    for chosen in ASSIGNMENTS:
        settings = [result["classes"][str(c + 1)]["gates"][name] for c, name in enumerate(chosen)]
        gate_of = [{"kind": n.split()[0], "source": (n.split() + [None])[1], "value": s["value"]}
                   if n != "none" else gates.NONE for n, s in zip(chosen, settings)]
        params = Params(tuple(s["threshold"] for s in settings),
                        tuple(s["min_component"] for s in settings),
                        tuple(s["min_area"] for s in settings), VIEWS, tuple(gate_of),
                        tuple(result["grid"]["threshold"]))
        predict_oof(synthetic, ensemble_runs, runs / "folds.csv", [0, 1], params, VIEWS,
                    out / "oof.csv", batch_size=4, workers=0)
        scored = score_tables(read_table(out / "oof.csv")[0],
                              read_table(synthetic / "train.csv")[0])
        for c, s in enumerate(settings):
            assert scored["per_class"][str(c + 1)] == pytest.approx(s["dice"], abs=1e-12), chosen[c]


def hand_made_fold(folder, checkpoint, weight=1.0, split=None):
    """A fold's OOF folder of 2 images, all counts zero, from `checkpoint`."""
    folder.mkdir(parents=True)
    np.save(folder / "stats.npy", np.zeros((2, 4, 3, 3, 2), np.int32))
    np.save(folder / "truth.npy", np.zeros((2, 4), np.int32))
    (folder / "meta.json").write_text(json.dumps({
        "image_ids": ["a.jpg", "b.jpg"], "thresholds": list(THRESHOLDS),
        "min_components": list(COMPONENTS), "tta": ["none"], "signals": [],
        "segmenters": [{"checkpoint": checkpoint, "weight": weight}], "classifiers": [],
        **({"split": split} if split else {})}))


def test_folds_of_two_ensembles_or_splits_are_not_searched_together(tmp_path):
    """`oof --runs B --folds 0` into a folder holding folds 1 of run A: refused, not tuned on
    the mixture."""
    hand_made_fold(tmp_path / "s" / "fold0", "runs/B/fold0/best.pt")
    hand_made_fold(tmp_path / "s" / "fold1", "runs/A/fold1/best.pt")
    with pytest.raises(InputError, match=r"s/fold1: segmenters runs \['runs/A/fold<k>/best\.pt"
                                         r" x1'\], fold 0's \['runs/B/fold<k>/best\.pt x1'\]"):
        oof.load_stats(tmp_path / "s", [0, 1])
    hand_made_fold(tmp_path / "w" / "fold0", "runs/A/fold0/best.pt", 2.0)
    hand_made_fold(tmp_path / "w" / "fold1", "runs/A/fold1/best.pt", 1.0)
    with pytest.raises(InputError, match="x1'], fold 0's .* x2'"):
        oof.load_stats(tmp_path / "w", [0, 1])
    split = {"folds_sha256": "1" * 16, "dataset": {"train_csv_sha256": "2" * 16, "images": 9}}
    hand_made_fold(tmp_path / "d" / "fold0", "runs/A/fold0/best.pt", split=split)
    hand_made_fold(tmp_path / "d" / "fold1", "runs/A/fold1/best.pt",
                   split={**split, "folds_sha256": "3" * 16})
    with pytest.raises(InputError, match=r"d/fold1: split \(folds file\) 3{16}, fold 0's 1{16}"):
        oof.load_stats(tmp_path / "d", [0, 1])
    hand_made_fold(tmp_path / "ok" / "fold0", "runs/A/fold0/best.pt", split=split)
    hand_made_fold(tmp_path / "ok" / "fold1", "runs/A/fold1/best.pt")  # an older folder
    assert oof.load_stats(tmp_path / "ok", [0, 1])["fold"].tolist() == [0, 0, 1, 1]
