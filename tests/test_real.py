"""The data layer on the real competition files in ../shared/real (every test skips, with the
reason, where that folder is absent, as on a user's clone): all 4,379 real RLE strings, both
train.csv layouts, the image-level labels of the 12,568 train images, the real final sample
submission, two real teams' submissions scored against each other, folds of all train images,
and the RLE bench on real masks. Expected values come from the files read with the csv module
and from slow references written here, never from the code under test."""
import csv
import json
from collections import Counter

import numpy as np
import pytest

from competition.data import rle
from competition.data.labels import read_table, read_train
from conftest import REAL, needs_real, random_checkpoint, real_format_test_set
from reference import decode as slow_decode
from test_cli import run_here

pytestmark = needs_real
DERIVED = REAL / "derived"
SAMPLE = REAL / "sample_submission.csv"
NEW, ORIGINAL = DERIVED / "train_partial_new_layout.csv", DERIVED / "train_partial_orig_layout.csv"
LABELS = DERIVED / "train_labels_all_12568.csv"
SUBMISSIONS = {"khornlund": REAL / "submissions" / "khornlund__pseudo.csv",
               "zdaiot": REAL / "submissions" / "zdaiot__submission_tta.csv"}
CLASSES = (1, 2, 3, 4)


def read_rows(path) -> list[dict]:
    """A CSV as dicts of strings, by the csv module (not the package's reader)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def pairs_of(path) -> dict:
    """{(ImageId, ClassId): RLE} of an ImageId_ClassId,EncodedPixels file, in file order."""
    return {(k.rsplit("_", 1)[0], int(k.rsplit("_", 1)[1])): e
            for k, e in ((r["ImageId_ClassId"], r["EncodedPixels"]) for r in read_rows(path))}


def flat(encoded: str) -> np.ndarray:
    """An RLE's pixels as a flat bool array in Kaggle's numbering (column-major, start 1)."""
    out = np.zeros(256 * 1600, bool)
    values = [int(v) for v in encoded.split()]
    for start, length in zip(values[0::2], values[1::2]):
        out[start - 1:start - 1 + length] = True
    return out


def kaggle_dice(pred: str, truth: str) -> float:
    """Dice of one (image, class) pair: 1 when both are empty, else 2|A∩B| / (|A| + |B|)."""
    if not pred and not truth:
        return 1.0
    a, b = flat(pred), flat(truth)
    return 2 * int((a & b).sum()) / (int(a.sum()) + int(b.sum()))


def expected_scores(pairs: list, pred: dict, truth: dict) -> tuple[float, dict]:
    """The mean Dice over `pairs` [(ImageId, ClassId)] and per class; a pair that `pred` or
    `truth` lacks is empty."""
    dices = [kaggle_dice(pred.get(p, ""), truth.get(p, "")) for p in pairs]
    per_class = {str(c): float(np.mean([d for (_, k), d in zip(pairs, dices) if k == c]))
                 for c in CLASSES}
    return float(np.mean(dices)), per_class


def scored(capsys, truth, submission) -> dict:
    """`score --json` through the CLI: the JSON line it ends with."""
    out = run_here(capsys, "score", "--truth", truth, "--submission", submission, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_truth(path, rows) -> dict:
    """A truth CSV in the current layout from [(ImageId, ClassId, RLE)]; returns it as a dict."""
    lines = ["ImageId,ClassId,EncodedPixels"] + [f"{i},{c},{e}" for i, c, e in rows]
    path.write_text("\n".join(lines) + "\n")
    return {(i, c): e for i, c, e in rows}


def test_every_real_rle_decodes_and_encodes_back_to_the_same_string():
    rows = read_rows(NEW)
    assert len(rows) == 4379
    assert Counter(int(r["ClassId"]) for r in rows) == {1: 562, 2: 154, 3: 3173, 4: 490}
    for r in rows:
        encoded = r["EncodedPixels"]
        mask = rle.decode(encoded)
        assert int(mask.sum()) == sum(int(v) for v in encoded.split()[1::2]), r["ImageId"]
        assert rle.encode(mask) == encoded, (r["ImageId"], r["ClassId"])
    # per class, the mask with the most runs and the one with the fewest, pixel by pixel
    # against the pure-Python decoder (column-major, 1-indexed starts)
    chosen = []
    for c in CLASSES:
        of_class = sorted((len(r["EncodedPixels"].split()), r["EncodedPixels"]) for r in rows
                          if r["ClassId"] == str(c))
        chosen += [of_class[0][1], of_class[-1][1]]
    for encoded in chosen:
        assert (rle.decode(encoded) == np.array(slow_decode(encoded, (256, 1600)))).all()


def test_both_train_layouts_read_to_the_same_table():
    expected = [(r["ImageId"], int(r["ClassId"]), r["EncodedPixels"]) for r in read_rows(NEW)]
    original = pairs_of(ORIGINAL)
    assert [(i, c, e) for (i, c), e in original.items() if e] == expected
    for path in (NEW, ORIGINAL):
        assert list(read_train(path).itertuples(index=False, name=None)) == expected
    table, layout, _ = read_table(ORIGINAL)
    image_ids = (DERIVED / "train_partial_image_ids.txt").read_text().split()
    assert layout == "original" and len(table) == len(original) == 4 * len(image_ids) == 28716
    assert list(dict.fromkeys(table.ImageId)) == image_ids


def test_the_image_level_labels_agree_with_the_masks():
    labels = read_rows(LABELS)
    assert len(labels) == len({r["ImageId"] for r in labels}) == 12568
    assert [sum(r[f"c{c}"] == "1" for r in labels) for c in CLASSES] == [897, 247, 5150, 801]
    assert sum(r["has_defect"] == "0" for r in labels) == 5902
    for r in labels:
        assert r["has_defect"] == str(int(any(r[f"c{c}"] == "1" for c in CLASSES))), r
    available = [r for r in labels if r["rle_available"] == "1"]
    image_ids = (DERIVED / "train_partial_image_ids.txt").read_text().split()
    assert sorted(r["ImageId"] for r in available) == sorted(image_ids)
    assert sum(r["has_defect"] == "1" for r in available) == 4109  # and 3,070 defect-free
    # where the masks are known, an image has a mask of class c exactly when c<c> is 1
    masks = {(r["ImageId"], int(r["ClassId"])) for r in read_rows(NEW)}
    flagged = {(r["ImageId"], c) for r in available for c in CLASSES if r[f"c{c}"] == "1"}
    assert masks == flagged


def test_baseline_on_the_real_sample_writes_four_rows_per_image(tmp_path, capsys):
    sample = read_rows(SAMPLE)
    assert len(sample) == 5506
    assert {(r["EncodedPixels"], r["ClassId"]) for r in sample} == {("1 409600", "0")}
    out = tmp_path / "empty.csv"
    done = run_here(capsys, "baseline", "--sample", SAMPLE, "--out", out)
    assert done.returncode == 0 and "22024 rows" in done.stdout, done.stderr
    done = run_here(capsys, "validate", "--submission", out, "--sample", SAMPLE)
    assert done.returncode == 0 and "valid, 22024 rows, 0 non-empty masks" in done.stdout
    with open(out, newline="") as f:
        written = list(csv.reader(f))
    assert written[0] == ["ImageId", "EncodedPixels", "ClassId"]
    assert written[1:] == [[r["ImageId"], "", str(c)] for r in sample for c in CLASSES]

    # scored against a truth of 40 real masks on the first 40 test images: every one of the
    # 22,024 pairs counts, the 40 with a mask score 0 and all the others 1
    masks = read_rows(NEW)[:40]
    truth = [(s["ImageId"], int(m["ClassId"]), m["EncodedPixels"]) for s, m in zip(sample, masks)]
    write_truth(tmp_path / "truth.csv", truth)
    result = scored(capsys, tmp_path / "truth.csv", out)
    per_class = Counter(c for _, c, _ in truth)
    assert result["pairs"] == 22024
    assert result["mean_dice"] == pytest.approx((22024 - 40) / 22024, abs=1e-12)
    assert result["per_class"] == pytest.approx(
        {str(c): (5506 - per_class[c]) / 5506 for c in CLASSES}, abs=1e-12)


def test_predict_writes_the_real_sample_format(synthetic, tmp_path, capsys):
    """Four synthetic test images under the real sample's first four ImageIds, its rows as
    they are; an untrained model whose masks are not empty."""
    data = real_format_test_set(synthetic, tmp_path / "data", n=4)
    image_ids = [r["ImageId"] for r in read_rows(data / "sample_submission.csv")]
    postprocess = tmp_path / "postprocess.json"
    postprocess.write_text(json.dumps({"classes": {str(c): {
        "threshold": 0.5, "min_component": 0, "min_area": 0} for c in CLASSES}}))
    out = tmp_path / "submission.csv"
    done = run_here(capsys, "predict", "--data", data, "--checkpoints",
                    random_checkpoint(tmp_path / "best.pt"), "--postprocess", postprocess,
                    "--tta", "none", "--workers", 0, "--out", out)
    assert done.returncode == 0, done.stderr
    done = run_here(capsys, "validate", "--submission", out, "--sample",
                    data / "sample_submission.csv")
    assert done.returncode == 0 and "valid, 16 rows" in done.stdout, done.stderr
    with open(out, newline="") as f:
        written = list(csv.reader(f))
    assert written[0] == ["ImageId", "EncodedPixels", "ClassId"]
    assert [(i, c) for i, _, c in written[1:]] == [(i, str(c)) for i in image_ids
                                                   for c in CLASSES]
    pred = {(i, int(c)): e for i, e, c in written[1:]}
    assert any(pred.values())

    # the metric covers all 16 pairs: a truth with one real mask of each class on images
    # 0..2 and the prediction itself on image 3 (Dice 1 on its non-empty pairs)
    masks = read_rows(NEW)
    first = {c: next(r["EncodedPixels"] for r in masks if r["ClassId"] == str(c))
             for c in CLASSES}
    rows = [(image_ids[(c - 1) % 3], c, first[c]) for c in CLASSES]
    rows += [(image_ids[3], c, pred[image_ids[3], c]) for c in CLASSES if pred[image_ids[3], c]]
    truth = write_truth(tmp_path / "truth.csv", rows)
    result = scored(capsys, tmp_path / "truth.csv", out)
    mean, per_class = expected_scores(list(pred), pred, truth)
    assert result["pairs"] == 16
    assert result["mean_dice"] == pytest.approx(mean, abs=1e-12)
    assert result["per_class"] == pytest.approx(per_class, abs=1e-12)


def test_two_real_submissions_validate_and_score_against_each_other(tmp_path, capsys):
    subs = {name: pairs_of(path) for name, path in SUBMISSIONS.items()}
    for name, path in SUBMISSIONS.items():
        table, layout, _ = read_table(path)
        assert layout == "original" and len(table) == len(subs[name]) == 1801 * 4
        images = list(dict.fromkeys(i for i, _ in subs[name]))
        sample = tmp_path / f"sample_{name}.csv"
        sample.write_text("ImageId_ClassId,EncodedPixels\n" + "".join(
            f"{i}_{c},1 409600\n" for i in images for c in CLASSES))
        done = run_here(capsys, "validate", "--submission", path, "--sample", sample)
        assert done.returncode == 0, done.stderr
    assert [sum(e != "" for e in s.values()) for s in subs.values()] == [782, 551]
    truth, pred = subs["khornlund"], subs["zdaiot"]
    assert set(truth) == set(pred)

    result = scored(capsys, SUBMISSIONS["khornlund"], SUBMISSIONS["zdaiot"])
    mean, per_class = expected_scores(list(pred), pred, truth)
    assert result["pairs"] == 7204
    assert result["mean_dice"] == pytest.approx(mean, abs=1e-12)
    assert result["per_class"] == pytest.approx(per_class, abs=1e-12)
    empty = np.mean([truth[p] == "" for p in pred])
    assert result["all_empty_baseline"] == pytest.approx(empty, abs=1e-12)
    print(f"zdaiot against khornlund: mean Dice {mean:.5f}, per class {per_class}")


def test_folds_of_all_real_train_images_are_balanced(tmp_path, capsys):
    import pandas as pd

    out = tmp_path / "folds.csv"
    done = run_here(capsys, "folds", "--labels", LABELS, "--n-folds", 5, "--out", out)
    assert done.returncode == 0, done.stderr
    folds, labels = pd.read_csv(out), pd.read_csv(LABELS)
    assert folds.ImageId.is_unique and sorted(folds.ImageId) == sorted(labels.ImageId)
    assert sorted(folds.fold.unique()) == [0, 1, 2, 3, 4]
    table = folds.merge(labels, on="ImageId")
    for c in CLASSES:
        assert (table[f"class{c}"] == table[f"c{c}"]).all()
    table["no_defect"] = 1 - table.has_defect
    counts = table.groupby("fold")[["c1", "c2", "c3", "c4", "no_defect"]].sum()
    deviation = (counts - counts.sum() / 5).abs()
    sizes = table.groupby("fold").size()
    print(f"\n{counts}\nlargest deviation from the exact share: {deviation.max().max():.1f} "
          f"(images per fold: {(sizes - len(table) / 5).abs().max():.1f})")
    assert deviation.max().max() < 1  # every count is its share rounded down or up
    assert (sizes - len(table) / 5).abs().max() <= 0.005 * len(table) / 5


def test_bench_rle_runs_on_real_masks(tmp_path, capsys):
    real = tmp_path / "train.csv"
    real.write_text("".join(NEW.read_text().splitlines(keepends=True)[:6]))
    done = run_here(capsys, "bench", "rle", "--masks", 5, "--repeat", 1, "--real", real)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    titles = [n for n, line in enumerate(lines) if "masks of 256x1600" in line]
    assert len(titles) == 2
    assert lines[titles[0]].startswith("synthetic masks: 5 masks")
    assert lines[titles[1]].startswith(f"real masks of {real}: 5 masks")
    for n in titles:  # each title, then the table: header, encode, decode
        assert lines[n + 1].split() == ["kernel", "numpy", "(us)", "numba", "(us)", "ratio"]
        assert [line.split()[0] for line in lines[n + 2:n + 4]] == ["encode", "decode"]
        assert all(line.endswith("x") for line in lines[n + 2:n + 4])
