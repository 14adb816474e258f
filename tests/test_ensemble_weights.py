"""The segmenters' weights chosen on the OOF data (infer/ensemble_weights.py, `oof --weights
search`): the candidates and the one standard error rule on hand-worked Dice, each
candidate's statistics against the ensemble run with its weights, and the chosen weights
carried through postprocess.json to oof.csv and predict."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from competition import cli
from competition.data.labels import by_image, load_train, read_table
from competition.data.metric import score_tables
from competition.infer import ensemble_weights as ew
from competition.infer import oof
from competition.infer import predict as predict_lib
from competition.infer.search import search
from conftest import random_checkpoint, small_test_set

VIEWS = ("none", "hflip")
THRESHOLDS = (0.2, 0.5, 0.8)
COMPONENTS = (0, 30, 400)


def test_candidates_equal_first_then_by_distance_from_equal():
    assert ew.candidates(2) == [[1.0, 1.0], [0.75, 0.25], [0.25, 0.75], [1.0, 0.0], [0.0, 1.0]]
    three = ew.candidates(3)
    assert three[0] == [1.0, 1.0, 1.0] and len(three) == 16  # 15 quarter points, none equal
    assert three[1:4] == [[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.25, 0.25, 0.5]]
    assert three[-3:] == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    assert ew.candidates(4) == [[1.0] * 4] + [[float(i == m) for i in range(4)]
                                              for m in range(4)]
    with pytest.raises(ValueError):
        ew.candidates(1)


def per_pair(per_image):
    """(N, 4) per-pair Dice whose per-image means are `per_image`: classes spread around it,
    so that the rule must average the classes of an image before its standard error."""
    m = np.asarray(per_image, float)[:, None]
    return m + np.where(m < 1, [[0.02, -0.02, 0.01, -0.01]], 0.0)  # Dice stays within [0, 1]


def test_a_clearly_better_unequal_weighting_is_chosen():
    equal = per_pair([0.6, 0.7, 0.8, 0.9])         # mean 0.75
    better = per_pair([1.0, 1.0, 1.0, 1.0])        # mean 1.0
    middle = per_pair([0.7, 0.8, 0.8, 0.9])        # mean 0.8
    got = ew.choose([[1, 1], [0.75, 0.25], [0.25, 0.75]], [equal, better, middle])
    # differences to the best: equal 0.4, 0.3, 0.2, 0.1: mean 0.25, deviations .15, .05,
    # -.05, -.15, squares summed .05, / 3, sqrt: 0.12910; / sqrt(4): SE 0.06455, and
    # 0.75 < 1.0 - 0.06455; the best itself is next in order
    assert got["best"] == 1 and got["chosen"] == 1 and got["rule"] == "best"
    assert got["se"] == 0.0
    assert got["candidates"][0]["se"] == pytest.approx(math.sqrt(0.05 / 3) / 2)
    assert [c["oof_dice"] for c in got["candidates"]] == pytest.approx([0.75, 1.0, 0.8])
    assert got["candidates"][1]["shares"] == [0.75, 0.25]
    assert got["candidates"][0]["shares"] == [0.5, 0.5]


def test_equal_weights_within_one_standard_error_of_the_best_are_chosen():
    equal = per_pair([0.9, 0.8, 1.0, 0.75])        # mean 0.8625
    best = per_pair([1.0, 0.9, 0.9, 0.8])          # mean 0.9
    worse = per_pair([0.5, 0.5, 0.5, 0.5])
    got = ew.choose([[1, 1], [0.75, 0.25], [1, 0]], [equal, best, worse])
    # best - equal per image: 0.1, 0.1, -0.1, 0.05: mean 0.0375; deviations .0625, .0625,
    # -.1375, .0125; squares .00390625 + .00390625 + .01890625 + .00015625 = .026875;
    # / 3 = .00895833; sqrt .0946485; / sqrt(4): SE .0473242
    se = math.sqrt(0.026875 / 3) / 2
    assert se == pytest.approx(0.0473242, abs=1e-7)
    assert 0.8625 >= 0.9 - se  # so equal, the simplest, is within one SE
    assert got["best"] == 1 and got["chosen"] == 0 and got["rule"] == "one_se"
    assert got["se"] == pytest.approx(se)
    # another tie-break: the first of equal means is the best
    tied = ew.choose([[1, 1], [1, 0]], [best, best])
    assert (tied["best"], tied["chosen"], tied["rule"]) == (0, 0, "best")


def test_a_worse_but_simpler_weighting_outside_one_se_is_passed_over():
    """Equal is more than one SE below the best; the next in order is within it."""
    equal = per_pair([0.5, 0.6, 0.5, 0.6])
    near = per_pair([0.95, 0.9, 0.85, 0.9])       # mean 0.9: diff .05, .1, .05, 0.1: SE .0144
    best = per_pair([1.0, 1.0, 0.9, 1.0])          # mean 0.975
    got = ew.choose([[1, 1], [0.75, 0.25], [1, 0]], [equal, near, best])
    diff = np.array([0.05, 0.1, 0.05, 0.1])
    assert got["candidates"][1]["se"] == pytest.approx(diff.std(ddof=1) / 2)
    assert 0.9 < 0.975 - got["candidates"][1]["se"]  # not within: the best is chosen
    assert (got["best"], got["chosen"], got["rule"]) == (2, 2, "best")


def hand_stats(rng, n=12, k=3, m=2):
    """Consistent OOF statistics: per pair, areas shrinking with the threshold and the min
    component, intersections within both areas; a third of the truths empty."""
    truth = rng.integers(0, 400, (n, 4)) * (rng.random((n, 4)) > 0.33)
    area = np.sort(rng.integers(0, 500, (n, 4, k, m)), axis=2)[:, :, ::-1]
    area = np.sort(area, axis=3)[..., ::-1]
    inter = np.minimum(area, truth[:, :, None, None]) * rng.random((n, 4, k, m))
    return np.stack([area, inter.astype(int)], -1).astype(np.int32), truth.astype(np.int32)


def test_pair_dice_of_a_search_result_is_its_chosen_dice():
    rng = np.random.default_rng(0)
    stats, truth = hand_stats(rng)
    grid = {"threshold": [0.3, 0.5, 0.7], "min_component": [0, 50], "min_area": [0, 100, 300]}
    signals = {"maxprob": rng.random((len(truth), 4)).astype(np.float32)}
    for sig in ({}, signals):
        result, _ = search(stats, truth, np.zeros(len(truth), int), grid, sig)
        dice = ew.pair_dice_of(result, stats, truth, sig)
        assert dice.shape == (12, 4)
        assert dice.mean() == pytest.approx(result["oof_mean_dice"], abs=1e-12)
        for c in range(4):
            assert dice[:, c].mean() == pytest.approx(result["classes"][str(c + 1)]["oof_dice"],
                                                      abs=1e-12)


def test_weighed_members_leave_out_a_model_of_weight_zero():
    members = [{"checkpoint": "a/fold0/best.pt", "weight": 1.0, "sha256": "x"},
               {"checkpoint": "b/fold0/best.pt", "weight": 1.0, "sha256": "y"}]
    assert ew.weighed_members(members, [0.25, 0.75]) == [
        {"checkpoint": "a/fold0/best.pt", "weight": 0.25, "sha256": "x"},
        {"checkpoint": "b/fold0/best.pt", "weight": 0.75, "sha256": "y"}]
    assert ew.weighed_members(members, [0.0, 1.0]) == [
        {"checkpoint": "b/fold0/best.pt", "weight": 1.0, "sha256": "y"}]


@pytest.fixture(scope="module")
def two_runs(synthetic, tmp_path_factory):
    """Two segmenter runs of one fold (untrained models): a DeepLabV3 with an image-level
    head and a Unet; a folds file putting 3 of the synthetic images in fold 0."""
    root = tmp_path_factory.mktemp("two")
    image_ids, _ = load_train(synthetic)
    pd.DataFrame({"ImageId": image_ids[:6], "fold": [0, 1] * 3}).to_csv(root / "folds.csv",
                                                                         index=False)
    for i, (name, overrides) in enumerate({"deeplab": dict(cls_weight=0.5),
                                           "unet": dict(arch="unet")}.items()):
        (root / name / "fold0").mkdir(parents=True)
        random_checkpoint(root / name / "fold0" / "best.pt", seed=20 + i, **overrides)
    return root


def test_each_candidate_has_the_statistics_of_the_ensemble_run_with_its_weights(
        synthetic, two_runs, tmp_path):
    """One pass over the models gives every candidate's files; each equals, bit for bit,
    those of `oof` run on the ensemble with that candidate's weights (a model of weight 0
    left out, as postprocess.json leaves it out for predict)."""
    image_ids, labels = load_train(synthetic)
    ids, encoded, cpu = image_ids[:6][0::2][:2], by_image(labels), torch.device("cpu")
    seg = [two_runs / "deeplab" / "fold0" / "best.pt", two_runs / "unet" / "fold0" / "best.pt"]
    common = dict(batch_size=1, workers=0, desc="test", thresholds=THRESHOLDS,
                  min_components=COMPONENTS)
    weightings = ew.candidates(2)
    oof.fold_stats(synthetic, ids, encoded, seg, VIEWS, tmp_path / "all", cpu,
                   candidates=weightings, **common)
    meta = json.loads((tmp_path / "all" / "meta.json").read_text())
    assert meta["weight_search"]["candidates"] == weightings
    assert meta["weight_search"]["signals"] == [["maxprob", "aux"]] * 4 + [["maxprob"]]
    assert [m["weight"] for m in meta["segmenters"]] == [1.0, 1.0]
    seen = []
    for j, w in enumerate(weightings):
        ref = tmp_path / f"ref{j}"
        kept = [(p, x) for p, x in zip(seg, w) if x > 0]
        oof.fold_stats(synthetic, ids, encoded, [p for p, _ in kept], VIEWS, ref, cpu,
                       weights=[x for _, x in kept], **common)
        got = oof.candidate_folder(tmp_path / "all", j)
        want_signals = json.loads((ref / "meta.json").read_text())["signals"]
        assert oof.candidate_signals(meta, j) == want_signals
        for name in ["stats"] + [s for s in want_signals if s != "cls"]:
            np.testing.assert_array_equal(np.load(got / f"{name}.npy"),
                                          np.load(ref / f"{name}.npy"), err_msg=f"{j} {name}")
        assert not (j and (got / "aux.npy").exists() and "aux" not in want_signals)
        mine, theirs = np.load(got / "examples.npz"), np.load(ref / "examples.npz")
        np.testing.assert_array_equal(mine["levels"], theirs["levels"])
        seen.append(np.load(got / "stats.npy"))
    np.testing.assert_array_equal(np.load(tmp_path / "all" / "truth.npy"),
                                  np.load(tmp_path / "ref0" / "truth.npy"))
    assert not np.array_equal(seen[3], seen[4]), "a test that tests: the models differ"


def forced(index):
    """ensemble_weights.choose with its choice replaced by candidate `index`: the plumbing of
    an unequal choice, whatever untrained models score."""
    real = ew.choose

    def choose(weightings, dice):
        return {**real(weightings, dice), "chosen": index, "rule": "one_se"}
    return choose


def test_the_chosen_weights_reach_oof_csv_and_predict(synthetic, two_runs, tmp_path,
                                                      monkeypatch, capsys):
    a, b = two_runs / "deeplab", two_runs / "unet"
    out, test = tmp_path / "sub", small_test_set(synthetic, tmp_path / "test", n=2)
    pp = out / "postprocess.json"
    monkeypatch.setattr(ew, "choose", forced(1))  # (0.75, 0.25)
    loaded = []  # the segmenters and weights predict (and oof's oof.csv) load

    def recording(segmenters, dev, weights=None, *args, **kwargs):
        loaded.append(([str(p) for p in segmenters], weights))
        return real_load(segmenters, dev, weights, *args, **kwargs)
    real_load = predict_lib.load_ensembles
    monkeypatch.setattr(predict_lib, "load_ensembles", recording)
    both = [str(a / "fold0" / "best.pt"), str(b / "fold0" / "best.pt")]
    assert cli.main(["oof", "--data", str(synthetic), "--runs", f"{a},{b}", "--weights",
                     "search", "--folds-csv", str(two_runs / "folds.csv"), "--folds", "0",
                     "--tta", "none", "--workers", "0", "--batch-size", "2",
                     "--min-areas", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"weights: 0.75,0.25 of {a}, {b} (OOF Dice" in printed
    result = json.loads(pp.read_text())
    w = result["weights"]
    assert w["models"] == [str(a), str(b)] and w["chosen"] == 1 and w["rule"] == "one_se"
    assert [c["weights"] for c in w["candidates"]] == ew.candidates(2)
    assert {"oof_dice", "se", "shares"} <= set(w["candidates"][0]) and "se" in w
    assert [(m["checkpoint"], m["weight"]) for m in result["ensemble"]["fold0"]["segmenters"]
            ] == [(str(a / "fold0" / "best.pt"), 0.75), (str(b / "fold0" / "best.pt"), 0.25)]
    assert (out / "oof" / "fold0" / "weights" / "4" / "stats.npy").is_file()
    assert "## Ensemble weights" in (out / "cv_report" / "cv_report.md").read_text()
    # oof.csv was predicted with (0.75, 0.25): scored from the CSV, it is the search's CV
    assert loaded == [(both, [0.75, 0.25])]
    truth = read_table(synthetic / "train.csv")[0]
    scored = score_tables(read_table(out / "oof.csv")[0], truth)
    assert scored["mean_dice"] == pytest.approx(result["oof_mean_dice"], abs=1e-12)

    common = ["predict", "--data", str(test), "--postprocess", str(pp), "--workers", "0"]
    assert cli.main(common + ["--out", str(tmp_path / "recorded.csv")]) == 0
    assert loaded[-1] == (both, [0.75, 0.25])
    assert cli.main(common + ["--checkpoints", ",".join(both), "--weights", "0.75,0.25",
                              "--out", str(tmp_path / "given.csv")]) == 0
    assert (tmp_path / "given.csv").read_bytes() == (tmp_path / "recorded.csv").read_bytes()
    capsys.readouterr()
    assert cli.main(common + ["--checkpoints", ",".join(both),
                              "--out", str(tmp_path / "equal.csv")]) == 2
    assert "weighs 0.5 of its fold's average here, 0.75 in the tuned ensemble" in \
        capsys.readouterr().err

    # chosen (1, 0): the Unet is left out of postprocess.json, predict and oof.csv
    monkeypatch.setattr(ew, "choose", forced(3))
    assert cli.main(["search", "--out", str(out), "--min-areas", "0"]) == 0
    result = json.loads(pp.read_text())
    assert [(m["checkpoint"], m["weight"]) for m in result["ensemble"]["fold0"]["segmenters"]
            ] == [(str(a / "fold0" / "best.pt"), 1.0)]
    assert cli.main(common + ["--out", str(tmp_path / "alone.csv")]) == 0
    assert loaded[-1] == ([str(a / "fold0" / "best.pt")], [1.0])
    oof_csv = tmp_path / "oof-alone.csv"
    assert cli.main(["predict", "--oof", "--data", str(synthetic), "--runs", f"{a},{b}",
                     "--folds-csv", str(two_runs / "folds.csv"), "--folds", "0",
                     "--postprocess", str(pp), "--workers", "0", "--batch-size", "2",
                     "--out", str(oof_csv)]) == 0
    assert loaded[-1] == ([str(a / "fold0" / "best.pt")], [1.0])
    scored = score_tables(read_table(oof_csv)[0], truth)
    assert scored["mean_dice"] == pytest.approx(result["oof_mean_dice"], abs=1e-12)

    capsys.readouterr()
    assert cli.main(["predict", "--oof", "--data", str(synthetic), "--runs", f"{a},{b}",
                     "--weights", "search", "--postprocess", str(pp)]) == 2
    assert "--weights search: only `oof` searches the weights" in capsys.readouterr().err
    assert cli.main(["oof", "--data", str(synthetic), "--runs", str(a), "--weights",
                     "search"]) == 2
    assert "--weights search: needs two or more --runs to weigh, got 1" in \
        capsys.readouterr().err
