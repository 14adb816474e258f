"""The image-level gates: their arithmetic on hand-worked pairs, the search's tables against a
slow reference that scores every candidate pair by pair, and predict's masks by hand."""
import numpy as np
import pytest
import torch

from competition.infer import gates
from competition.infer import search
from competition.errors import InputError
from competition.infer.ensemble import Output
from competition.infer.predict import gated_masks
from competition.infer.search import Params

GRID = {"threshold": [0.3, 0.5], "min_component": [0], "min_area": [0]}


def test_scaled_threshold_by_hand():
    grid = [round(0.30 + 0.05 * i, 2) for i in range(12)]  # 0.30 .. 0.85
    p = np.array([1.0, 0.95, 0.9, 0.5, 0.0], np.float32)
    # t = 0.5 * 5 - 0.5 * 4 * p = 2.5 - 2p: 0.5, 0.6, 0.7, 1.5 and 2.5, the last two above 1:
    # empty masks (their index clipped to the grid's top, never used)
    assert [grid[i] for i in gates.scaled_index(grid, 0.5, 5.0, p)] == [0.5, 0.6, 0.7, 0.85,
                                                                       0.85]
    assert gates.scaled_empty(0.5, 5.0, p).tolist() == [False, False, False, True, True]
    # p = 0.8: t = 0.9, between the grid's top and 1: the top, kept; p = 0.75: t = 1.0
    # exactly, kept (a probability of 1 reaches it); p = 0.7: t = 1.1, empty
    q = np.array([0.8, 0.75, 0.7], np.float32)
    assert [grid[i] for i in gates.scaled_index(grid, 0.5, 5.0, q)] == [0.85, 0.85, 0.85]
    assert gates.scaled_empty(0.5, 5.0, np.float32(0.75)) == (
        2.5 - 2.0 * float(np.float32(0.75)) > 1.0)  # 0.75 is exact in float32: t = 1.0
    assert gates.scaled_empty(0.5, 5.0, q).tolist() == [False, False, True]
    # c = 1 is the identity; t0 = 0.3, c = 2: t = 0.6 - 0.3p; p = 0.6 -> 0.42: nearest 0.40
    assert [grid[i] for i in gates.scaled_index(grid, 0.3, 1.0, p)] == [0.3] * 5
    assert grid[gates.scaled_index(grid, 0.3, 2.0, np.float32(0.6))] == 0.4


def test_scale_past_one_empties_the_pair_in_the_search_and_in_predict():
    stats, truth, signals = hand_pairs()
    scale = {"kind": "scale", "source": "cls", "value": 5.0}
    p = signals["cls"][:, 0]
    # t0 = 0.3: t = 1.5 - 1.2 p = 1.38, 0.42, 1.26, 1.14: only image 1 keeps its mask, at
    # the grid's nearest 0.5 (60 / 60); images 0, 2 and 3 are emptied
    got = search.gated_stats(stats[:, 0], scale, p, GRID["threshold"], 0)
    assert got[:, 0].tolist() == [[0, 0], [60, 60], [0, 0], [0, 0]]
    thr, kept = gates.decide([scale, gates.NONE, gates.NONE, gates.NONE], [0.3, 0.5, 0.5, 0.5],
                             GRID["threshold"], signals)
    assert kept[:, 0].tolist() == [False, True, False, False] and kept[:, 1:].all()
    assert thr[1, 0] == 0.5


def hand_pairs():
    """Class 1 of four images (the other classes all empty, predicted empty):
    img  truth  area/inter at t=0.3  at t=0.5   p_cls  maxprob
    0    0      10 / 0               10 / 0     0.1    0.97   a false positive
    1    100    100 / 80             60 / 60    0.9    0.95
    2    0      0                    0          0.2    0.2
    3    50     40 / 40              20 / 20    0.3    0.7
    """
    stats = np.zeros((4, 4, 2, 1, 2), np.int32)
    stats[:, 0, :, 0] = [[[10, 0], [10, 0]], [[100, 80], [60, 60]], [[0, 0], [0, 0]],
                         [[40, 40], [20, 20]]]
    truth = np.zeros((4, 4), np.int64)
    truth[:, 0] = [0, 100, 0, 50]
    signals = {"cls": np.zeros((4, 4), np.float32), "maxprob": np.zeros((4, 4), np.float32)}
    signals["cls"][:, 0] = [0.1, 0.9, 0.2, 0.3]
    signals["maxprob"][:, 0] = [0.97, 0.95, 0.2, 0.7]
    return stats, truth, signals


def test_gates_on_hand_worked_pairs():
    stats, truth, signals = hand_pairs()
    result, _ = search.search(stats, truth, np.zeros(4, int), GRID, signals, rule="best")
    one = result["classes"]["1"]
    # no gate: t = 0.3 gives Dice 0, 2*80/200, 1, 2*40/90; t = 0.5 gives 0, 2*60/160, 1, 2*20/70
    none = (0 + 0.8 + 1 + 80 / 90) / 4
    assert one["gates"]["none"]["dice"] == pytest.approx(none, abs=1e-12)
    assert one["gates"]["none"]["threshold"] == 0.3
    # gate on p_cls: g = 0.05 and 0.1 empty nothing (0.1 < 0.1 is false); g = 0.2 empties
    # image 0 (a saved empty pair, Dice 1); 0.3 adds image 2 (empty anyway); 0.4 loses image 3
    gate = one["gates"]["gate cls"]
    assert gate["value"] == 0.2 and gate["dice"] == pytest.approx((1 + 0.8 + 1 + 80 / 90) / 4)
    assert (gate["empty_saved"], gate["defect_lost"]) == (1, 0)
    # maxprob: image 0's 0.97 is above image 1's 0.95: no g helps; the mildest (0.5) is kept
    mp = one["gates"]["maxprob"]
    assert mp["value"] == 0.5 and mp["dice"] == pytest.approx(none, abs=1e-12)
    assert one["gate"] == {"kind": "gate", "source": "cls", "value": 0.2}
    assert one["oof_dice"] == pytest.approx(gate["dice"])
    assert result["oof_mean_dice"] == pytest.approx((gate["dice"] + 3) / 4)
    # the one-SE rule: the gate differs from "none" on image 0 alone (d = 1, 0, 0, 0: mean
    # 1/4, SE sqrt(3/4 / 3) / 2 = 1/4), one SE exactly: within it, so "none" is chosen
    ruled, _ = search.search(stats, truth, np.zeros(4, int), GRID, signals)
    one = ruled["classes"]["1"]
    assert (one["rung"], one["rule"], one["gate"]) == ("none", "one_se", gates.NONE)
    assert one["se"] == pytest.approx(0.25) and one["best_dice"] == pytest.approx(gate["dice"])
    # a gate that cannot beat "none" is not chosen
    flat = {"cls": np.full((4, 4), 0.5, np.float32), "maxprob": signals["maxprob"]}
    flat["cls"][:, 0] = 1.0
    result, _ = search.search(stats, truth, np.zeros(4, int), GRID, flat, rule="best")
    assert result["classes"]["1"]["gate"] == gates.NONE
    assert result["classes"]["1"]["oof_dice"] == pytest.approx(none, abs=1e-12)


def reference(stats, truth, signals, grid, gate):
    """The slow obvious way: one class, each (threshold, min_component, min_area) and each
    pair in Python: the gate's threshold for the pair, then the emptying, then Dice."""
    thresholds, comps, areas = grid["threshold"], grid["min_component"], grid["min_area"]
    table = np.zeros((len(thresholds), len(comps), len(areas)))
    for k in range(len(thresholds)):
        for m in range(len(comps)):
            for a, min_area in enumerate(areas):
                total = 0.0
                for n in range(len(truth)):
                    kk, keep = k, True
                    if gate["kind"] == "scale":
                        p = float(signals[gate["source"]][n])
                        t = thresholds[k] * gate["value"] - thresholds[k] * (gate["value"] - 1) * p
                        kk = min(range(len(thresholds)), key=lambda i: (abs(thresholds[i] - t), i))
                        keep = t <= 1.0  # above 1 no probability reaches it: empty
                    elif gate["kind"] != "none":
                        key = "maxprob" if gate["kind"] == "maxprob" else gate["source"]
                        keep = not signals[key][n] < np.float32(gate["value"])
                    area, inter = stats[n, kk, m]
                    if not keep or area < min_area:
                        area, inter = 0, 0
                    t_area = truth[n]
                    total += 1.0 if area + t_area == 0 else 2 * inter / (area + t_area)
                table[k, m, a] = total / len(truth)
    return table


def random_pairs(n=60, seed=0):
    rng = np.random.default_rng(seed)
    area = -np.sort(-rng.integers(0, 400, (n, 4, 4, 3)), axis=2)  # falls with the threshold
    area = -np.sort(-area, axis=3) * (rng.random((n, 4, 1, 1)) < 0.6)
    truth = rng.integers(1, 300, (n, 4)) * (rng.random((n, 4)) < 0.3)
    inter = np.minimum((area * rng.random((n, 4, 1, 1))).astype(int), truth[..., None, None])
    signals = {k: rng.random((n, 4)).astype(np.float32) for k in ("maxprob", "aux", "cls")}
    return np.stack([area, inter], -1).astype(np.int32), truth, signals


def test_every_gate_kind_equals_the_slow_reference():
    stats, truth, signals = random_pairs()
    grid = {"threshold": [0.3, 0.45, 0.6, 0.75], "min_component": [0, 50, 100],
            "min_area": [0, 100, 250]}
    for c in range(4):
        sig = {k: v[:, c] for k, v in signals.items()}
        best, plain = search.class_choices(stats[:, c], truth[:, c], sig, grid["threshold"],
                                           grid["min_area"])
        np.testing.assert_allclose(plain, reference(stats[:, c], truth[:, c], sig, grid,
                                                    gates.NONE), atol=1e-12)
        assert set(best) == {"none", "gate aux", "gate cls", "scale aux", "scale cls", "maxprob"}
        for name, b in best.items():
            values = gates.GATES.get(b["gate"]["kind"], [None])
            tables = [reference(stats[:, c], truth[:, c], sig, grid, {**b["gate"], "value": v})
                      for v in values]
            assert b["dice"] == pytest.approx(max(t.max() for t in tables), abs=1e-12), name
            chosen = values.index(b["gate"]["value"])
            assert tables[chosen][b["k"], b["m"], b["a"]] == pytest.approx(b["dice"], abs=1e-12)
            # the mildest value reaching the best
            assert all(t.max() < b["dice"] - 1e-12 for t in tables[:chosen]), name


RANDOM_GRID = {"threshold": [0.3, 0.4, 0.5, 0.7], "min_component": [0, 50, 90],
               "min_area": [0, 200]}


def test_the_chosen_gate_is_never_worse_than_none_on_oof():
    for seed in range(3):
        stats, truth, signals = random_pairs(seed=seed)
        result, _ = search.search(stats, truth, np.arange(60) % 3, RANDOM_GRID, signals,
                                  rule="best")
        for v in result["classes"].values():
            assert v["oof_dice"] >= v["gates"]["none"]["dice"]
            assert v["oof_dice"] == max(g["dice"] for g in v["gates"].values())


def test_the_one_se_rule_takes_the_simplest_rung_within_one_se_of_the_best():
    """Empty, no gate, the best gated: the chosen rung is within one SE of the best rung,
    every simpler one beyond it, on random pairs."""
    order = ["empty", "none", "gated"]
    for seed in range(3):
        stats, truth, signals = random_pairs(seed=seed)
        result, _ = search.search(stats, truth, np.arange(60) % 3, RANDOM_GRID, signals)
        for v in result["classes"].values():
            top = v["rungs"][v["best_rung"]]["dice"]
            assert top == max(r["dice"] for r in v["rungs"].values())
            assert v["rungs"][v["rung"]]["dice"] >= top - v["se"] - 1e-12
            for r in order[:order.index(v["rung"])]:
                assert v["rungs"][r]["dice"] < top - v["rungs"][r]["se"]
            assert v["rule"] == ("best" if v["rung"] == v["best_rung"] else "one_se")
            assert v["oof_dice"] == pytest.approx(v["rungs"][v["rung"]]["dice"], abs=1e-12)
            if v["rung"] == "empty":
                assert v["min_area"] == search.EMPTY_AREA and v["oof_dice"] == v["all_empty"]


def test_a_signal_on_a_gate_value_is_kept_by_the_search_as_by_predict():
    """float32(0.7) is below the float64 0.7: compared in float64 the search would count the
    pair emptied by the gate 0.7 while predict (float32) keeps its mask. One defect pair
    predicted perfectly, so the gate's table reads 1 where the pair is kept, 0 where emptied;
    the float32 just below 0.7 is emptied by both."""
    stats = np.zeros((1, 2, 1, 2), np.int64)  # (N, K, M, 2): area 10, all of it true
    stats[0, :, 0] = [10, 10]
    truth = np.array([10])
    on = np.float32(0.7)
    below = np.nextafter(on, np.float32(0))
    j = gates.GATES["gate"].index(0.7)
    gate = {"kind": "gate", "source": "cls", "value": 0.7}
    for value, kept in ((on, True), (below, False)):
        _, tables = search.gate_tables(stats, truth, [0], {
            "gate cls": (np.array([value], np.float32), gates.GATES["gate"])})
        assert tables["gate cls"][j].max() == float(kept), value
        signals = {"maxprob": np.ones((1, 4), np.float32),
                   "cls": np.full((1, 4), value, np.float32)}
        _, decided = gates.decide([gate] * 4, [0.5] * 4, [0.3, 0.5], signals)
        assert decided.tolist() == [[kept] * 4], value
        out = search.gated_stats(stats, gate, np.array([value], np.float32), [0.3, 0.5], 0)
        assert out[0, 0].tolist() == ([10, 10] if kept else [0, 0]), value


def test_a_non_finite_signal_is_an_error():
    signals = {"cls": np.array([[0.5, np.nan, 0.1, 0.2]], np.float32)}
    with pytest.raises(InputError, match="oof/fold0: cls of row 0 is nan"):
        gates.check_signals(signals, 1, "oof/fold0")


def test_predict_masks_by_hand():
    """Two images, 1x3 pixels. Class 1 gated on cls at 0.5, class 2 scaled on aux (t0 0.5,
    c 5, grid 0.3..0.8), class 3 maxprob 0.8, class 4 none at 0.5."""
    probs = torch.tensor([[[[0.6, 0.4, 0.9]], [[0.55, 0.75, 0.65]], [[0.7, 0.75, 0.2]],
                           [[0.5, 0.51, 0.49]]],
                          [[[0.6, 0.4, 0.9]], [[0.55, 0.75, 0.65]], [[0.9, 0.1, 0.85]],
                           [[0.0, 1.0, 0.5]]]])
    pred = Output(probs, probs.amax(dim=(2, 3)),
                  aux=torch.tensor([[0, 1.0, 0, 0], [0, 0.95, 0, 0]]),
                  cls=torch.tensor([[0.4, 0, 0, 0], [0.5, 0, 0, 0]]))
    params = Params((0.5, 0.5, 0.5, 0.5), (0,) * 4, (0,) * 4, None, (
        {"kind": "gate", "source": "cls", "value": 0.5},
        {"kind": "scale", "source": "aux", "value": 5.0},
        {"kind": "maxprob", "source": None, "value": 0.8}, gates.NONE),
        (0.3, 0.4, 0.5, 0.6, 0.7, 0.8))
    got = gated_masks(pred, params).numpy()[:, :, 0]
    expected = np.array([
        # class 1: image 0's p_cls 0.4 < 0.5: emptied; image 1's 0.5 passes: probs > 0.5
        # class 2: aux 1.0 keeps t = 0.5; aux 0.95 gives t = 2.5 - 1.9 = 0.6
        # class 3: maxprob 0.75 < 0.8 empties image 0; image 1 (0.9) > 0.5
        # class 4: > 0.5
        [[0, 0, 0], [1, 1, 1], [0, 0, 0], [0, 1, 0]],
        [[1, 0, 1], [0, 1, 1], [1, 0, 1], [0, 1, 0]]], np.uint8)
    np.testing.assert_array_equal(got, expected)
