"""OOF statistics streamed from a model's predictions against a direct computation, and
the whole chain: statistics -> search -> OOF submission scored from its CSV."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

from competition import infer, oof
from competition.data import SteelDataset
from competition.labels import by_image, load_train, read_table
from competition.metric import score_tables
from competition.predict import predict_oof
from competition.search import read_params
from conftest import random_checkpoint
from test_infer import assert_one_by_one, record_batches

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
    result = oof.tune(out / "oof", [0, 1], out, min_areas=(0,))  # no area step: masks survive
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
