import json

import numpy as np
import pytest
import torch

from competition.errors import InputError
from competition.data.postprocess import apply, grid_counts, threshold_levels
from competition.infer.search import (EMPTY_AREA, PIXELS, RULES, class_table, held_out,
                                      pair_dice, read_params, search)

GRID = {"threshold": [0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7],
        "min_component": [0, 50, 100, 200, 300, 500],
        "min_area": [0, 100, 200, 300, 400, 500, 600, 800, 1000, 2000, 2500]}


def test_pair_dice_by_hand():
    # (area, intersection) after components; truth areas; min area 50
    stats = np.array([[100, 60], [40, 40], [0, 0], [30, 0], [80, 0]])
    truth = np.array([140, 40, 0, 0, 10])
    # kept: 2*60/(100+140)=0.5; area 40 < 50 dropped vs truth 40 -> 0; both empty -> 1;
    # 30 < 50 dropped on an empty truth -> 1; kept 80 vs truth 10, no overlap -> 0
    assert pair_dice(stats, truth, 50).tolist() == [0.5, 0.0, 1.0, 1.0, 0.0]
    assert pair_dice(stats, truth, 0).tolist() == [0.5, 1.0, 1.0, 0.0, 0.0]


def test_class_table_equals_loops_over_the_grid():
    rng = np.random.default_rng(0)
    n, k, m = 37, 3, 2
    truth = rng.integers(0, 300, n) * (rng.random(n) < 0.4)
    area = rng.integers(0, 400, (n, k, m)) * (rng.random((n, k, m)) < 0.6)
    inter = np.minimum(area, truth[:, None, None]) * rng.random((n, k, m))
    stats = np.stack([area, inter.astype(int)], -1)
    areas = [0, 50, 150, 350]
    table = class_table(stats, truth, areas, chunk=5)  # chunks of 5: a partial last chunk
    for ki in range(k):
        for mi in range(m):
            for ai, a in enumerate(areas):
                dices = []
                for i in range(n):
                    p, x = stats[i, ki, mi]
                    if p < a:
                        p, x = 0, 0
                    dices.append(1.0 if p + truth[i] == 0 else 2 * x / (p + truth[i]))
                assert table[ki, mi, ai] == pytest.approx(np.mean(dices), abs=1e-12)


def rect(h, w, y, x, dy, dx):
    m = np.zeros((h, w), bool)
    m[y:y + dy, x:x + dx] = True
    return m


def planted(h=64, w=128):
    """Class-1 probability maps and truths whose best post-processing is (0.6, 200, 500),
    the only setting that gets every pair right:
    - defect images: a 40x50 defect at 0.62 with a halo at 0.52 around it (-> threshold
      above 0.52), a second true defect of 250 px at 0.62 (-> min component <= 250), and
      false specks of 100 and 160 px at 0.9 (-> min component > 160);
    - a small-defect image: one true defect of 520 px at 0.62 (-> min area <= 520);
    - empty images: a 5000 px blob at 0.58 (-> threshold >= 0.58), and lone false blobs of
      220 and 450 px at 0.9 (-> min area > 450; a min component above 220 would also cost
      the 250 px true defect)."""
    probs, truth = [], []

    def add(parts):
        p = np.zeros((4, h, w), np.float32)
        t = np.zeros((4, h, w), np.uint8)
        for mask, value, true in parts:
            p[0][mask] = value
            t[0][mask] |= true
        probs.append(p)
        truth.append(t)

    big = rect(h, w, 10, 10, 40, 50)
    halo = rect(h, w, 8, 8, 44, 54) & ~big
    for _ in range(3):
        add([(halo, 0.52, 0), (big, 0.62, 1), (rect(h, w, 10, 70, 10, 25), 0.62, 1),
             (rect(h, w, 54, 70, 10, 10), 0.9, 0), (rect(h, w, 30, 100, 10, 16), 0.9, 0)])
    add([(rect(h, w, 5, 5, 20, 26), 0.62, 1)])
    add([(rect(h, w, 0, 0, 50, 100), 0.58, 0)])
    add([(rect(h, w, 3, 3, 10, 22), 0.9, 0)])
    add([(rect(h, w, 20, 40, 15, 30), 0.9, 0)])
    add([])
    probs, truth = torch.from_numpy(np.stack(probs)), np.stack(truth)
    levels = threshold_levels(probs, GRID["threshold"]).numpy()
    stats = grid_counts(levels, truth, len(GRID["threshold"]), GRID["min_component"])
    return stats, truth.sum(axis=(2, 3))


def test_search_finds_the_planted_optimum():
    stats, truth = planted()
    assert truth[:3, 0].tolist() == [2250] * 3 and truth[3, 0] == 520
    result, tables = search(stats, truth, np.zeros(len(truth), int), GRID)
    chosen = result["classes"]["1"]
    assert (chosen["threshold"], chosen["min_component"], chosen["min_area"]) == (0.6, 200, 500)
    assert chosen["oof_dice"] == 1.0
    assert (tables["1"] == 1.0).sum() == 1, "the planted setting is the only perfect one"
    # the raw setting (0.5, nothing removed) keeps the halo (44*54 - 2000 = 376 px) and
    # the specks (260 px) on the 3 defect images, and the blobs of 3 of the 4 empty images
    defect = 2 * 2250 / (2250 + 376 + 260 + 2250)
    assert chosen["raw_dice"] == pytest.approx((3 * defect + 1 + 0 + 0 + 0 + 1) / 8)
    assert chosen["all_empty"] == pytest.approx(4 / 8)
    # classes 2..4 are empty everywhere: every setting ties at 1 with predicting nothing,
    # the simplest rung, so the best itself: written as the most cautious setting without a
    # gate and a min area no mask reaches
    two = result["classes"]["2"]
    assert (two["rung"], two["rule"], two["oof_dice"], two["se"]) == ("empty", "best", 1.0, 0.0)
    assert [two[key] for key in ("threshold", "min_component", "min_area")] == [
        0.7, 500, EMPTY_AREA]
    # class 1's perfect setting against predicting nothing (1 on the 4 empty pairs, 0 on the
    # 4 defect ones): d = 1, 1, 1, 1, 0, 0, 0, 0, mean 0.5, SE sqrt(8 * 0.25 / 7 / 8) = 0.189
    assert (chosen["rung"], chosen["rule"]) == ("none", "best")
    assert chosen["rungs"]["empty"]["se"] == pytest.approx(np.sqrt(8 * 0.25 / 7 / 8))
    assert result["oof_mean_dice"] == 1.0
    # the rule of best OOF Dice alone: the most cautious setting of the grid, as before
    old, _ = search(stats, truth, np.zeros(len(truth), int), GRID, rule="best")
    assert [old["classes"]["2"][key] for key in ("threshold", "min_component",
                                                  "min_area")] == [0.7, 500, 2500]
    assert (old["classes"]["2"]["rung"], old["rule"], result["rule"]) == ("none", "best", "one_se")
    assert result["all_empty_baseline"] == pytest.approx((4 / 8 + 3) / 4)


def test_search_reports_folds_and_means_from_the_pairs():
    # without a min-area step the best is to drop components under 500 px: the 220 and
    # 450 px false blobs go, and so does the 250 px true defect of the 3 defect images
    stats, truth = planted()
    folds = np.array([0, 1, 0, 1, 0, 1, 0, 2])
    result, _ = search(stats, truth, folds, dict(GRID, min_area=[0]))
    chosen = result["classes"]["1"]
    assert (chosen["threshold"], chosen["min_component"], chosen["min_area"]) == (0.6, 500, 0)
    lost = 2 * 2000 / (2000 + 2250)
    class1 = np.array([lost, lost, lost, 1, 1, 1, 1, 1])
    assert chosen["oof_dice"] == pytest.approx(class1.mean())
    for f, images in (("0", [0, 2, 4, 6]), ("1", [1, 3, 5]), ("2", [7])):
        assert result["folds"][f]["images"] == len(images)
        assert result["folds"][f]["mean_dice"] == pytest.approx((class1[images].mean() + 3) / 4)
    assert result["images"] == 8
    assert result["oof_mean_dice"] == pytest.approx((class1.mean() + 3) / 4)
    assert result["raw_mean_dice"] == pytest.approx(
        np.mean([result["classes"][c]["raw_dice"] for c in "1234"]))


def write(tmp_path, spec):
    path = tmp_path / "postprocess.json"
    path.write_text(json.dumps(spec) if not isinstance(spec, str) else spec)
    return path


def good_spec():
    return {"classes": {c: {"threshold": 0.5, "min_component": 150, "min_area": a}
                        for c, a in zip("1234", (600, 600, 900, 2000))},
            "tta": ["none", "hflip"]}


def test_read_params_round_trip(tmp_path):
    params = read_params(write(tmp_path, good_spec()))
    assert params.threshold == (0.5,) * 4
    assert params.min_component == (150,) * 4
    assert params.min_area == (600, 600, 900, 2000)
    assert params.tta == ("none", "hflip")


@pytest.mark.parametrize("change, message", [
    (lambda s: s["classes"].pop("4"), "keys 1, 2, 3, 4"),
    (lambda s: s["classes"]["2"].update(threshold=1.5), "classes.2.threshold is 1.5"),
    (lambda s: s["classes"]["3"].update(threshold="0.5"), "classes.3.threshold is '0.5'"),
    (lambda s: s["classes"]["1"].update(min_area=-1), "classes.1.min_area is -1"),
    (lambda s: s["classes"]["4"].update(min_component=10.5), "classes.4.min_component is 10.5"),
    (lambda s: s["classes"]["4"].pop("min_area"), "classes.4.min_area is None"),
    (lambda s: s.pop("classes"), "needs \"classes\""),
])
def test_read_params_rejects_bad_files(tmp_path, change, message):
    spec = good_spec()
    change(spec)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(".", r"\.")):
        read_params(write(tmp_path, spec))


def test_read_params_names_missing_and_broken_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_params(tmp_path / "nope.json")
    with pytest.raises(InputError, match="not valid JSON"):
        read_params(write(tmp_path, "{\"classes\": "))


def two_fold_pairs():
    """Class 1 of four images (classes 2-4 empty and predicted empty), thresholds 0.3, 0.5:
    img fold truth  area/inter at 0.3   at 0.5   Dice at 0.3, 0.5
    0   0    100    100 / 100           50 / 50  1, 2*50/150
    1   0    0      0                   0        1, 1
    2   1    0      40 / 0              0        0, 1   a false positive at 0.3
    3   1    0      0                   0        1, 1
    Fold 0 alone prefers 0.3, fold 1 alone 0.5, all four 0.5 (0.9167 against 0.75)."""
    stats = np.zeros((4, 4, 2, 1, 2), np.int64)
    stats[0, 0, :, 0] = [[100, 100], [50, 50]]
    stats[2, 0, 0, 0] = [40, 0]
    truth = np.zeros((4, 4), np.int64)
    truth[0, 0] = 100
    return stats, truth, np.array([0, 0, 1, 1])


def test_held_out_scores_each_fold_with_the_other_folds_choice():
    stats, truth, folds = two_fold_pairs()
    grid = {"threshold": [0.3, 0.5], "min_component": [0], "min_area": [0]}
    result, _ = search(stats, truth, folds, grid, rule="best")
    assert result["classes"]["1"]["threshold"] == 0.5
    assert result["oof_mean_dice"] == pytest.approx((2 / 3 + 1 + 1 + 1) / 4 / 4 + 3 / 4)
    honest = held_out(stats, truth, folds, grid, rule="best")
    # fold 0 scored at fold 1's 0.5: 2/3 and 1; fold 1 scored at fold 0's 0.3: 0 and 1
    assert honest["class_dice"] == pytest.approx([(2 / 3 + 1 + 0 + 1) / 4, 1, 1, 1])
    assert honest["mean_dice"] == pytest.approx(((2 / 3 + 2) / 4 + 3) / 4)
    assert (honest["groups"], honest["n_groups"]) == ("folds", 2)


def test_held_out_of_identical_images_is_the_tuned_figure_in_halves():
    # every image the same: any half tunes what the whole does, nothing is fitted to noise
    stats, truth, _ = two_fold_pairs()
    stats, truth = np.repeat(stats[:1], 6, axis=0), np.repeat(truth[:1], 6, axis=0)
    stats[:, 1, 0, 0] = [30, 0]  # and a false positive of class 2 at 0.3 on each
    grid = {"threshold": [0.3, 0.5], "min_component": [0], "min_area": [0]}
    one_fold = np.zeros(6, int)
    result, _ = search(stats, truth, one_fold, grid)
    honest = held_out(stats, truth, one_fold, grid)
    assert (honest["groups"], honest["n_groups"]) == ("halves", 2)
    assert honest["mean_dice"] == pytest.approx(result["oof_mean_dice"], abs=1e-12)
    # class 1 at 0.3; class 2 empty (0.5 ties with predicting nothing: the simpler rung)
    assert honest["class_dice"] == pytest.approx([1, 1, 1, 1])
    assert [result["classes"][c]["rung"] for c in "12"] == ["none", "empty"]


def se_by_hand(d) -> float:
    """The standard error of the mean of paired differences, written out: sqrt(sum((d -
    mean)^2) / (N - 1)) / sqrt(N)."""
    mean = sum(d) / len(d)
    return (sum((x - mean) ** 2 for x in d) / (len(d) - 1)) ** 0.5 / len(d) ** 0.5


def ladder_pairs():
    """Classes 1 and 2 of six images, one threshold (0.5), no size filter; classes 3, 4 empty
    and predicted empty. A gate on p_cls at 0.2 empties the pairs with p_cls 0.1.
    class 1: img truth  area/inter  p_cls   Dice no gate, gated, empty
             0   0      10 / 0      0.1     0,   1,   1    a false positive the gate saves
             1   100    100 / 80    0.9     0.8, 0.8, 0
             2   60     40 / 40     0.1     0.8, 0,   0    a defect the gate loses
             3-4 0      0           0.9     1,   1,   1
             5   200    200 / 200   0.9     1,   1,   0
    class 2: img 0-2 as class 1's image 0 (false positives at p_cls 0.1), img 3 as class 1's
             image 1, img 4 truth 60 with 40 / 40 at p_cls 0.9, img 5 empty and predicted empty:
             Dice no gate 0, 0, 0, 0.8, 0.8, 1; gated 1, 1, 1, 0.8, 0.8, 1; empty 1, 1, 1, 0, 0, 1.
    Every gate value from 0.2 to 0.9 empties the same pairs: the mildest, 0.2, is kept."""
    stats = np.zeros((6, 4, 1, 1, 2), np.int64)
    truth = np.zeros((6, 4), np.int64)
    cls = np.full((6, 4), 0.9, np.float32)
    stats[:, 0, 0, 0] = [[10, 0], [100, 80], [40, 40], [0, 0], [0, 0], [200, 200]]
    truth[:, 0] = [0, 100, 60, 0, 0, 200]
    cls[:, 0] = [0.1, 0.9, 0.1, 0.9, 0.9, 0.9]
    stats[:, 1, 0, 0] = [[10, 0], [10, 0], [10, 0], [100, 80], [40, 40], [0, 0]]
    truth[:, 1] = [0, 0, 0, 100, 60, 0]
    cls[:, 1] = [0.1, 0.1, 0.1, 0.9, 0.9, 0.9]
    return stats, truth, {"cls": cls}


LADDER_GRID = {"threshold": [0.5], "min_component": [0], "min_area": [0]}


def test_a_gate_within_one_se_of_none_gives_way_to_none():
    stats, truth, signals = ladder_pairs()
    result, _ = search(stats, truth, np.zeros(6, int), LADDER_GRID, signals, kinds=["gate"])
    one = result["classes"]["1"]
    none, gated, empty = [0, .8, .8, 1, 1, 1], [1, .8, 0, 1, 1, 1], [1, 0, 0, 1, 1, 0]
    # the gate is the best, 4.8 / 6 = 0.8 against no gate's 4.6 / 6; d = gated - none =
    # 1, 0, -0.8, 0, 0, 0: mean 1/30, SE sqrt((1.64 - 6/900) / 5 / 6) = 7/30 (se_by_hand)
    d = [g - n for g, n in zip(gated, none)]
    assert se_by_hand(d) == pytest.approx(7 / 30)
    assert one["gates"]["gate cls"]["value"] == 0.2
    assert one["gates"]["gate cls"]["dice"] == pytest.approx(0.8)
    assert (one["best_rung"], one["best_dice"]) == ("gated", pytest.approx(0.8))
    # empty: d = 0, 0.8, 0, 0, 0, 1, SE 0.1915: 4/6 is below 0.8 - 0.1915; no gate's
    # 0.7667 is within 7/30 of 0.8: no gate is chosen, by the one-SE rule
    assert one["rungs"]["empty"]["se"] == pytest.approx(
        se_by_hand([g - e for g, e in zip(gated, empty)]))
    assert np.mean(empty) < 0.8 - one["rungs"]["empty"]["se"]
    assert (one["rung"], one["rule"], one["gate"]) == ("none", "one_se", {
        "kind": "none", "source": None, "value": None})
    assert (one["threshold"], one["min_component"], one["min_area"]) == (0.5, 0, 0)
    assert one["oof_dice"] == pytest.approx(np.mean(none))
    assert one["se"] == pytest.approx(7 / 30)
    assert result["oof_mean_dice"] == pytest.approx((np.mean(none) + np.mean(
        [1, 1, 1, .8, .8, 1]) + 2) / 4)
    assert result["rule"] == "one_se"


def test_a_clear_winner_is_chosen_by_the_best_rule():
    stats, truth, signals = ladder_pairs()
    result, _ = search(stats, truth, np.zeros(6, int), LADDER_GRID, signals, kinds=["gate"])
    two = result["classes"]["2"]
    none, gated, empty = [0, 0, 0, .8, .8, 1], [1, 1, 1, .8, .8, 1], [1, 1, 1, 0, 0, 1]
    # gated 5.6 / 6; empty 4/6, d = 0, 0, 0, 0.8, 0.8, 0: SE 0.1687; no gate 2.6 / 6,
    # d = 1, 1, 1, 0, 0, 0: SE sqrt(0.3 / 6) = 0.2236; both beyond one SE
    for rung, pairs in (("empty", empty), ("none", none)):
        se = se_by_hand([g - p for g, p in zip(gated, pairs)])
        assert two["rungs"][rung]["se"] == pytest.approx(se)
        assert np.mean(pairs) < np.mean(gated) - se
    assert se_by_hand([1, 1, 1, 0, 0, 0]) == pytest.approx(np.sqrt(0.3 / 6))
    assert (two["rung"], two["rule"], two["se"]) == ("gated", "best", 0.0)
    assert two["gate"] == {"kind": "gate", "source": "cls", "value": 0.2}
    assert two["oof_dice"] == pytest.approx(np.mean(gated)) == two["best_dice"]


def test_the_best_rule_keeps_the_choices_of_the_best_oof_dice():
    stats, truth, signals = ladder_pairs()
    result, _ = search(stats, truth, np.zeros(6, int), LADDER_GRID, signals, kinds=["gate"],
                       rule="best")
    assert result["rule"] == "best"
    one, two = result["classes"]["1"], result["classes"]["2"]
    # class 1's gate beats no gate (0.8 against 0.7667), however little: chosen
    for v in (one, two):
        assert (v["rung"], v["rule"], v["se"]) == ("gated", "best", 0.0)
        assert v["gate"] == {"kind": "gate", "source": "cls", "value": 0.2}
    assert one["oof_dice"] == pytest.approx(0.8)
    # classes 3, 4: nothing to predict; "best" never chooses empty: the most cautious
    # setting without a gate (the only one of this grid), as before the one-SE rule
    three = result["classes"]["3"]
    assert (three["rung"], three["min_area"], three["gate"]["kind"]) == ("none", 0, "none")
    assert result["oof_mean_dice"] == pytest.approx((0.8 + 5.6 / 6 + 2) / 4)
    with pytest.raises(InputError, match="unknown choice rule 'fastest'; valid: one_se, best"):
        search(stats, truth, np.zeros(6, int), LADDER_GRID, signals, rule="fastest")


def test_choose_option_offers_the_rules_default_one_se():
    from competition.cli.front import build_parser
    from competition.cli.options import CHOICE_RULES

    assert CHOICE_RULES == RULES == ("one_se", "best")
    parser = build_parser()
    for stage in ("oof", "search"):
        assert parser.parse_args([stage]).choose == "one_se"
        assert parser.parse_args([stage, "--choose", "best"]).choose == "best"


def empty_within_one_se():
    """Class 1 of six 16x32 images, probability maps and truths (classes 2-4 empty):
    images 0 and 1 hold an 8x8 true defect at 0.9, image 2 an 8x8 false blob at 0.9, images
    3-5 nothing. No setting tells the blob from the defects: the best keeps all three, Dice
    1, 1, 0, 1, 1, 1 (5/6); predicting nothing scores 0, 0, 1, 1, 1, 1 (4/6)."""
    probs = np.zeros((6, 4, 16, 32), np.float32)
    truth = np.zeros((6, 4, 16, 32), np.uint8)
    for i in (0, 1):
        probs[i, 0, 4:12, 4:12] = 0.9
        truth[i, 0, 4:12, 4:12] = 1
    probs[2, 0, 4:12, 20:28] = 0.9
    return probs, truth


def test_empty_within_one_se_is_written_as_a_min_area_no_mask_reaches(tmp_path):
    probs, truth = empty_within_one_se()
    grid = {"threshold": [0.5, 0.7], "min_component": [0, 50], "min_area": [0, 100]}
    levels = threshold_levels(torch.from_numpy(probs), grid["threshold"]).numpy()
    stats = grid_counts(levels, truth, len(grid["threshold"]), grid["min_component"])
    areas = truth.sum(axis=(2, 3))
    result, _ = search(stats, areas, np.zeros(6, int), grid)
    one = result["classes"]["1"]
    # d = best - empty = 1, 1, -1, 0, 0, 0: mean 1/6, SE sqrt((3 - 1/6) / 5 / 6) = 0.3073;
    # 4/6 >= 5/6 - 0.3073: empty, by the one-SE rule
    se = se_by_hand([1, 1, -1, 0, 0, 0])
    assert se == pytest.approx(np.sqrt((3 - 1 / 6) / 5 / 6))
    assert (one["rung"], one["rule"], one["best_rung"]) == ("empty", "one_se", "none")
    assert one["best_dice"] == pytest.approx(5 / 6) and one["se"] == pytest.approx(se)
    assert one["oof_dice"] == pytest.approx(4 / 6) == one["all_empty"]
    assert one["min_area"] == EMPTY_AREA == PIXELS + 1 and one["gate"]["kind"] == "none"
    # the best without a gate, most cautious on the tie, is where the thresholds come from
    assert (one["threshold"], one["min_component"]) == (0.7, 50)
    assert result["oof_mean_dice"] == pytest.approx((4 / 6 + 3) / 4)
    # predict's side: postprocess.json read back empties class 1 even on image 0's defect,
    # which the best setting keeps
    path = tmp_path / "postprocess.json"
    path.write_text(json.dumps(result))
    params = read_params(path)
    assert params.min_area[0] == EMPTY_AREA
    masks = apply(probs, params.threshold, params.min_component, params.min_area)
    assert masks[:, 0].sum() == 0
    best, _ = search(stats, areas, np.zeros(6, int), grid, rule="best")
    path.write_text(json.dumps(best))
    params = read_params(path)
    kept = apply(probs, params.threshold, params.min_component, params.min_area)
    assert kept[:, 0].sum(axis=(1, 2)).tolist() == [64, 64, 64, 0, 0, 0]


def test_read_params_refuses_a_min_area_above_empty(tmp_path):
    spec = good_spec()
    spec["classes"]["2"]["min_area"] = EMPTY_AREA
    assert read_params(write(tmp_path, spec)).min_area[1] == EMPTY_AREA
    spec["classes"]["2"]["min_area"] = EMPTY_AREA + 1
    with pytest.raises(InputError, match=rf"classes\.2\.min_area is {EMPTY_AREA + 1}, needs a "
                                         rf"whole number of pixels in \[0, {EMPTY_AREA}\]"):
        read_params(write(tmp_path, spec))


def test_held_out_chooses_each_group_by_the_same_rule():
    """Class 1, folds 0 (images 0, 1) and 1 (images 2, 3), thresholds 0.3 and 0.5:
    img fold truth  area/inter at 0.3   at 0.5    Dice at 0.3, 0.5
    0   0    100    100 / 100           50 / 50   1, 2/3
    1   0    100    100 / 100           100 / 100 1, 1
    2   1    0      40 / 0              0         0, 1
    3   1    0      0                   0         1, 1
    Tuned on fold 1 (no defect): 0.5 and predicting nothing both score 1: one-SE takes empty,
    which scores fold 0's defects 0, 0; "best" takes 0.5: 2/3, 1. Tuned on fold 0: 0.3 (1, 1)
    against empty (0, 0), d = 1, 1, SE 0: 0.3 under both rules, scoring fold 1 0 and 1."""
    stats = np.zeros((4, 4, 2, 1, 2), np.int64)
    stats[0, 0, :, 0] = [[100, 100], [50, 50]]
    stats[1, 0, :, 0] = [[100, 100], [100, 100]]
    stats[2, 0, 0, 0] = [40, 0]
    truth = np.zeros((4, 4), np.int64)
    truth[:2, 0] = 100
    folds = np.array([0, 0, 1, 1])
    grid = {"threshold": [0.3, 0.5], "min_component": [0], "min_area": [0]}
    one_se = held_out(stats, truth, folds, grid)
    best = held_out(stats, truth, folds, grid, rule="best")
    assert one_se["class_dice"] == pytest.approx([(0 + 0 + 0 + 1) / 4, 1, 1, 1])
    assert best["class_dice"] == pytest.approx([(2 / 3 + 1 + 0 + 1) / 4, 1, 1, 1])
