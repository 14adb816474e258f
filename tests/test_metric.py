import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import reference
from competition.data import metric
from competition.data import rle


def test_dice_by_hand():
    # X = pixels {1, 2, 3}, Y = {2, 3, 4}: 2 * 2 / (3 + 3)
    assert metric.dice_rle("1 3", "2 3") == pytest.approx(2 / 3)
    assert metric.dice_rle("", "") == 1.0
    assert metric.dice_rle("5 1", "") == 0.0  # one false-positive pixel on an empty pair
    assert metric.dice_rle("", "5 1") == 0.0
    # X = {1..10, 21..30}, Y = {6..25}: overlap {6..10, 21..25} = 10; 2 * 10 / (20 + 20)
    assert metric.dice_rle("1 10 21 10", "6 20") == pytest.approx(0.5)


def test_dice_on_masks_over_last_two_axes():
    pred = np.zeros((2, 4, 3, 5), np.uint8)
    truth = np.zeros_like(pred)
    pred[0, 0, 0, :2] = 1
    truth[0, 0, 0, 1:4] = 1  # |X| = 2, |Y| = 3, overlap 1 -> 0.4
    truth[1, 2, 2, 2] = 1   # missed pixel -> 0
    d = metric.dice(pred, truth)
    assert d.shape == (2, 4)
    expected = np.ones((2, 4))
    expected[0, 0], expected[1, 2] = 0.4, 0.0
    np.testing.assert_allclose(d, expected)


small = st.tuples(st.integers(1, 10), st.integers(1, 12)).flatmap(
    lambda s: st.tuples(arrays(np.uint8, s, elements=st.integers(0, 1)),
                        arrays(np.uint8, s, elements=st.integers(0, 1))))


@settings(max_examples=300, deadline=None)
@given(small)
def test_dice_on_runs_equals_reference_and_masks(pair):
    a, b = pair
    ea, eb = rle.encode(a), rle.encode(b)
    expected = reference.dice(ea, eb)
    assert metric.dice_rle(ea, eb, a.shape) == pytest.approx(expected, abs=1e-12)
    assert float(metric.dice(a, b)) == pytest.approx(expected, abs=1e-12)


def test_score_tables_against_reference():
    rng = np.random.default_rng(1)
    images = [f"{i:03d}.jpg" for i in range(6)]
    truth_rows, sub_rows = [], []
    for image in images:
        for c in (1, 2, 3, 4):
            if rng.random() < 0.4:
                truth_rows.append((image, c, rle.encode(rng.random((256, 1600)) < 0.001)))
            if rng.random() < 0.5:
                sub_rows.append((image, c, rle.encode(rng.random((256, 1600)) < 0.001)))
            elif rng.random() < 0.5:
                sub_rows.append((image, c, ""))  # an explicit empty row
    cols = ["ImageId", "ClassId", "EncodedPixels"]
    truth, sub = pd.DataFrame(truth_rows, columns=cols), pd.DataFrame(sub_rows, columns=cols)
    result = metric.score_tables(sub, truth)

    t = {(i, c): e for i, c, e in truth_rows}
    s = {(i, c): e for i, c, e in sub_rows}
    scored = sorted({i for i, _, _ in sub_rows})
    pairs = [(i, c) for i in scored for c in (1, 2, 3, 4)]
    dices = {p: reference.dice(s.get(p, ""), t.get(p, "")) for p in pairs}
    assert result["pairs"] == len(pairs)
    assert result["mean_dice"] == pytest.approx(np.mean(list(dices.values())), abs=1e-12)
    for c in (1, 2, 3, 4):
        expected = np.mean([d for (i, k), d in dices.items() if k == c])
        assert result["per_class"][str(c)] == pytest.approx(expected, abs=1e-12)
    baseline = np.mean([t.get(p, "") == "" for p in pairs])
    assert result["all_empty_baseline"] == pytest.approx(baseline)


def test_all_empty_submission_scores_the_share_of_empty_pairs():
    truth = pd.DataFrame({"ImageId": ["a.jpg", "b.jpg"], "ClassId": [3, 1],
                          "EncodedPixels": ["1 10", "5 5"]})
    sub = pd.DataFrame({"ImageId": ["a.jpg", "b.jpg", "c.jpg"], "ClassId": [1, 1, 1],
                        "EncodedPixels": ["", "", ""]})
    result = metric.score_tables(sub, truth)
    assert result["pairs"] == 12
    assert result["mean_dice"] == pytest.approx(10 / 12)
    assert result["per_class"] == {"1": pytest.approx(2 / 3), "2": 1.0, "3": pytest.approx(2 / 3),
                                   "4": 1.0}
