import matplotlib.image
import numpy as np
import pytest

from competition.data import figures
from competition.infer import report
from competition.infer.search import EMPTY_AREA

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GRID = {"threshold": [0.4, 0.5, 0.6], "min_component": [0, 100], "min_area": [0, 200, 400, 800]}
# class -> grid index (k, m, a) of its maximum, and that maximum
BEST = {"1": ((1, 1, 2), 0.951), "2": ((0, 0, 3), 0.9832), "3": ((2, 1, 0), 0.8123),
        "4": ((1, 0, 1), 0.9467)}
PNGS = ["dice_vs_threshold.png", "dice_vs_min_area.png", "dice_vs_min_component.png",
        "oof_overlays.png"]


def fake_tables() -> dict[str, np.ndarray]:
    """(3, 2, 4) Dice tables, each with its maximum at BEST's index."""
    tables = {}
    for c, (index, best) in BEST.items():
        k, m, a = np.indices((3, 2, 4))
        distance = abs(k - index[0]) + abs(m - index[1]) + abs(a - index[2])
        tables[c] = best - 0.01 * distance
    return tables


def fake_result(tables) -> dict:
    classes = {}
    for c, ((k, m, a), best) in BEST.items():
        classes[c] = {"threshold": GRID["threshold"][k], "min_component": GRID["min_component"][m],
                      "min_area": GRID["min_area"][a], "oof_dice": best,
                      "raw_dice": float(tables[c][1, 0, 0]), "all_empty": 0.9 - 0.01 * int(c),
                      "pairs": 10, "defect_pairs": int(c)}
    return {
        "version": 1, "connectivity": 8, "grid": GRID, "classes": classes,
        "oof_mean_dice": 0.9233, "raw_mean_dice": 0.8871, "all_empty_baseline": 0.856,
        "images": 10,
        "folds": {"0": {"images": 5, "mean_dice": 0.9311}, "1": {"images": 5, "mean_dice": 0.9155}},
        "tta": ["none", "hflip"], "checkpoints": ["folds/fold0/best.pt", "folds/fold1/best.pt"],
        "data": "input/synthetic",
    }


def fake_example(image_id: str, fold: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    image = np.repeat(rng.integers(60, 160, (256, 1600, 1), dtype=np.uint8), 3, axis=2)
    truth = np.zeros((4, 256, 1600), bool)
    pred = np.zeros_like(truth)
    truth[0, 40:90, 100:300] = True
    pred[0, 50:100, 120:320] = True
    truth[2, 150:220, 700:1200] = True
    pred[2, 150:220, 700:1100] = True
    pred[3, 10:30, 1400:1500] = True  # a false positive on an empty pair
    return {"image_id": image_id, "fold": fold, "image": image, "truth": truth, "pred": pred}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    tables = fake_tables()
    result = fake_result(tables)
    folder = tmp_path_factory.mktemp("cv") / "report"  # not there yet: made by write_report
    examples = [fake_example("0002cc93b.jpg", 0, 1), fake_example("00031f466.jpg", 1, 2)]
    paths = report.write_report(folder, result, tables, examples)
    return folder, paths, result


def test_writes_the_report_and_every_png(written):
    folder, paths, _ = written
    assert sorted(p.name for p in paths) == sorted(["cv_report.md"] + PNGS)
    assert all(p.parent == folder and p.is_file() for p in paths)
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("name", PNGS)
def test_pngs_decode_to_real_images(written, name):
    path = written[0] / name
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size < figures.MAX_PNG_BYTES
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 400
    assert pixels[..., :3].std() > 0.05  # not a blank canvas


def test_overlay_figure_is_wide(written):
    height, width = matplotlib.image.imread(written[0] / "oof_overlays.png").shape[:2]
    assert width > 1000  # two 256x1600 rows at their true aspect ratio


def test_markdown_has_chosen_values_scores_folds_and_links(written):
    folder, _, result = written
    text = (folder / "cv_report.md").read_text()
    assert "| 1 | 0.5 | 100 | 400 | none | 0.9510 | 0.9210 | 0.8900 | 10 | 1 |" in text
    assert "| 2 | 0.4 | 0 | 800 | none | 0.9832 |" in text
    assert "| 3 | 0.6 | 100 | 0 | none | 0.8123 |" in text
    assert "| 4 | 0.5 | 0 | 200 | none | 0.9467 |" in text
    assert "| mean |  |  |  |  | 0.9233 | 0.8871 | 0.8560 | 40 | 10 |" in text
    assert "| 0 | 5 | 0.9311 |" in text and "| 1 | 5 | 0.9155 |" in text
    for name in PNGS:
        assert f"]({name})" in text
    assert "none, hflip" in text and "`folds/fold1/best.pt`" in text
    assert "min area (4 values): 0, 200, 400, 800" in text
    assert "8-connected" in text and "Dice 1 on empty pairs" in text


def test_the_chosen_point_is_the_table_maximum():
    tables = fake_tables()
    result = fake_result(tables)
    for c, (index, best) in BEST.items():
        assert report.chosen_index(result, c) == index
        assert tables[c][index] == pytest.approx(best)
        curve = report.dice_curve(tables[c], index, 2)
        assert curve.shape == (4,) and curve.argmax() == index[2]


def test_without_examples_no_overlay_and_still_a_report(tmp_path):
    tables = fake_tables()
    result = fake_result(tables)
    result["raw_mean_dice"] = None
    result["classes"]["2"]["raw_dice"] = None
    (tmp_path / "oof_overlays.png").write_bytes(PNG_SIGNATURE)  # left by an earlier run
    paths = report.write_report(tmp_path, result, tables, [])
    assert not (tmp_path / "oof_overlays.png").exists()
    assert sorted(p.name for p in paths) == sorted(["cv_report.md"] + PNGS[:3])
    text = (tmp_path / "cv_report.md").read_text()
    assert "oof_overlays.png" not in text and "No OOF examples" in text
    assert "| 2 | 0.4 | 0 | 800 | none | 0.9832 | - |" in text
    assert "| mean |  |  |  |  | 0.9233 | - | 0.8560 |" in text


def test_a_table_of_the_wrong_shape_writes_nothing(tmp_path):
    tables = fake_tables()
    result = fake_result(tables)
    tables["3"] = tables["3"][:, :, :3]
    with pytest.raises(ValueError, match="class 3"):
        report.write_report(tmp_path, result, tables, [])
    assert list(tmp_path.iterdir()) == []


def test_example_dice_by_hand():
    truth = np.zeros((4, 4, 5), bool)
    pred = np.zeros_like(truth)
    truth[0, :2, :2] = True       # 4 pixels
    pred[0, :2, :3] = True        # 6 pixels, 4 shared: 2 * 4 / (4 + 6)
    pred[2, 3, 4] = True          # one false-positive pixel on an empty pair
    truth[3, 1:3, 1:4] = True     # a missed defect
    assert figures.example_dice(truth, pred) == pytest.approx([0.8, 1.0, 0.0, 0.0])


def test_example_dice_of_the_fake_example():
    example = fake_example("x", 0, 0)
    # class 1: two 50x200 rectangles shifted by (10, 20): overlap 40x180
    # class 3: truth 70x500, prediction its first 70x400
    expected = [2 * 40 * 180 / (2 * 50 * 200), 1.0, 2 * 70 * 400 / (70 * 500 + 70 * 400), 0.0]
    assert figures.example_dice(example["truth"], example["pred"]) == pytest.approx(expected)


def test_format_table_and_values():
    text = report.format_table(["a", "b"], [[1, "x|y"], ["", 0.5]])
    assert text == "| a | b |\n| --- | --- |\n| 1 | x\\|y |\n|  | 0.5 |\n"
    assert figures.format_dice(0.95) == "0.9500" and figures.format_dice(None) == "-"
    assert report.format_value(150.0) == "150" and report.format_value(0.1 + 0.25) == "0.35"
    assert report.grid_index([0.3, 0.35000000000000003, 0.4], 0.35) == 1
    with pytest.raises(ValueError, match="not in the grid"):
        report.grid_index([0, 100], 50)


def test_save_png_lowers_the_dpi_to_fit(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 2))
    fig.add_subplot().imshow(np.random.default_rng(0).random((100, 400)))
    full = figures.save_png(fig, tmp_path / "full.png")
    small = figures.save_png(fig, tmp_path / "small.png", max_bytes=full // 2)
    assert small == (tmp_path / "small.png").stat().st_size < full
    width = matplotlib.image.imread(tmp_path / "small.png").shape[1]
    assert figures.MIN_DPI * 8 <= width < figures.DPI * 8


def test_the_gate_table_shows_each_kind_beside_none_and_marks_the_choice(tmp_path):
    tables = fake_tables()
    result = fake_result(tables)
    del result["checkpoints"]
    result["ensemble"] = {"fold0": {
        "segmenters": [{"checkpoint": "folds/fold0/best.pt", "weight": 1.0},
                       {"checkpoint": "folds/unet/fold0/best.pt", "weight": 2.0}],
        "classifiers": [{"checkpoint": "folds/cls/fold0/best.pt", "weight": 1.0}]}}
    result["signals"] = ["cls", "maxprob"]
    one = result["classes"]["1"]
    one["gate"] = {"kind": "gate", "source": "cls", "value": 0.2}
    setting = {"threshold": 0.5, "min_component": 100, "min_area": 400}
    one["gates"] = {
        "none": {**setting, "dice": 0.9210, "value": None, "empty_saved": 0, "defect_lost": 0},
        "gate cls": {**setting, "dice": 0.9510, "value": 0.2, "empty_saved": 3,
                     "defect_lost": 1},
        "maxprob": {**setting, "dice": 0.9210, "value": 0.5, "empty_saved": 0,
                    "defect_lost": 0}}
    report.write_report(tmp_path, result, tables, [])
    text = (tmp_path / "cv_report.md").read_text()
    assert "| 1 | 0.5 | 100 | 400 | gate cls 0.2 | 0.9510 |" in text
    assert "| 2 | 0.4 | 0 | 800 | none | 0.9832 |" in text
    assert "| 1 | none |  | 0.5 | 100 | 400 | 0.9210 | +0.0000 | 0 | 0 |  |" in text
    assert ("| 1 | gate cls ✓ | 0.2 | 0.5 | 100 | 400 | 0.9510 | +0.0300 | 3 | 1 | "
            "p_cls < g empties |") in text
    assert "| 1 | maxprob | 0.5 |" in text
    assert ("`folds/fold0/best.pt`, `folds/unet/fold0/best.pt ×2`, "
            "`folds/cls/fold0/best.pt`") in text


def ruled_result(tables) -> dict:
    """fake_result under the one-SE rule: class 1 gated, the best, its simpler rungs beyond
    one SE; class 2 empty, within one SE of its best (no gate at BEST's setting)."""
    result = fake_result(tables)
    result["rule"] = "one_se"
    setting = {"threshold": 0.5, "min_component": 100, "min_area": 400}
    one = result["classes"]["1"]
    one.update(gate={"kind": "gate", "source": "cls", "value": 0.2}, rung="gated", rule="best",
               best_rung="gated", best_dice=0.951, se=0.0, rungs={
                   "empty": {"dice": 0.89, "se": 0.02}, "none": {"dice": 0.921, "se": 0.01},
                   "gated": {"dice": 0.951, "se": 0.0}})
    one["gates"] = {
        "none": {**setting, "dice": 0.921, "value": None, "empty_saved": 0, "defect_lost": 0},
        "gate cls": {**setting, "dice": 0.951, "value": 0.2, "empty_saved": 3, "defect_lost": 1}}
    two = result["classes"]["2"]
    none = {"threshold": 0.4, "min_component": 0, "min_area": 800}
    two.update(min_area=EMPTY_AREA, oof_dice=0.9825, all_empty=0.9825, rung="empty",
               rule="one_se", best_rung="none", best_dice=0.9832, se=0.0012, gates={
                   "none": {**none, "dice": 0.9832, "value": None, "empty_saved": 0,
                            "defect_lost": 0}},
               rungs={"empty": {"dice": 0.9825, "se": 0.0012}, "none": {"dice": 0.9832,
                                                                        "se": 0.0}})
    for c in "34":
        result["classes"][c].update(rung="none", rule="best", best_rung="none", se=0.0,
                                    best_dice=result["classes"][c]["oof_dice"], rungs={
                                        "empty": {"dice": 0.5, "se": 0.1},
                                        "none": {"dice": result["classes"][c]["oof_dice"],
                                                 "se": 0.0}})
    return result


def test_the_report_says_which_rule_chose_each_class(tmp_path):
    tables = fake_tables()
    result = ruled_result(tables)
    paths = report.write_report(tmp_path, result, tables, [])
    assert sorted(p.name for p in paths) == sorted(["cv_report.md"] + PNGS[:3])
    text = (tmp_path / "cv_report.md").read_text()
    assert ("| 1 | 0.5 | 100 | 400 | gate cls 0.2 | 0.9510 | 0.9210 | 0.8900 | 10 | 1 | best |"
            in text)
    # empty: no threshold or sizes shown, the rule that chose it at the end of the row
    assert "| 2 | - | - | empty | none | 0.9825 |" in text and "| 10 | 2 | one-SE |" in text
    assert "Chosen by the one-SE rule (`--choose one_se`)" in text
    assert ("- class 1: gate cls 0.2 (the best OOF Dice, 0.9510; simpler rungs beyond one SE: "
            "empty 0.8900 (SE 0.0200), no gate 0.9210 (SE 0.0100))") in text
    assert ("- class 2: empty (one-SE rule: 0.9825 within 0.0012 of the best 0.9832, "
            "no gate)") in text
    assert ("- class 3: no gate (the best OOF Dice, 0.8123; simpler rungs beyond one SE: "
            "empty 0.5000 (SE 0.1000))") in text
    # the gate table marks class 1's gate, and nothing on class 2, chosen empty
    assert "| 1 | gate cls ✓ | 0.2 |" in text
    assert "| 2 | none |  | 0.4 | 0 | 800 | 0.9832 | +0.0000 | 0 | 0 |  |" in text
    # the plots of the empty class go through its best setting without a gate
    assert report.chosen_index(result, "2") == BEST["2"][0]


def test_the_report_of_the_best_rule_and_of_an_older_file():
    tables = fake_tables()
    result = ruled_result(tables)
    result["rule"] = "best"
    text = report.report_text(result, have_overlays=False)
    assert "Chosen by the best OOF Dice (`--choose best`)." in text
    assert "- class 3: no gate (the best OOF Dice, 0.8123)\n" in text  # no SE under "best"
    old = report.report_text(fake_result(tables), have_overlays=False)  # no rule recorded
    assert "Chosen by the best OOF Dice.\n" in old
    assert "- class 1: none (the best OOF Dice)\n" in old
    assert "| 1 | 0.5 | 100 | 400 | none | 0.9510 | 0.9210 | 0.8900 | 10 | 1 | best |" in old
