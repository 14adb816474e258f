import numpy as np
import pandas as pd
import pytest

from competition.errors import InputError
from competition.data.folds import CLASS_COLUMNS, fold_counts, make_folds
from test_cli import one_line_error, run_here


def toy(n=400, seed=0):
    rng = np.random.default_rng(seed)
    image_ids = [f"{i:04d}.jpg" for i in range(n)]
    rows = []
    for image in image_ids:
        for c, p in zip((1, 2, 3, 4), (0.07, 0.03, 0.41, 0.06)):
            if rng.random() < p:
                rows.append((image, c, "1 1"))
    return image_ids, pd.DataFrame(rows, columns=["ImageId", "ClassId", "EncodedPixels"])


def test_every_image_in_exactly_one_fold_with_its_classes():
    image_ids, labels = toy()
    folds = make_folds(image_ids[::-1], labels, n_folds=5, seed=42)
    assert folds.ImageId.tolist() == sorted(image_ids)
    assert sorted(folds.fold.unique()) == [0, 1, 2, 3, 4]
    truth = {(i, c) for i, c in zip(labels.ImageId, labels.ClassId)}
    for row in folds.itertuples():
        for c in (1, 2, 3, 4):
            assert getattr(row, f"class{c}") == ((row.ImageId, c) in truth)


def test_folds_are_balanced_per_class():
    image_ids, labels = toy()
    counts = fold_counts(make_folds(image_ids, labels, 5, 42)).drop("all")
    for column in ["images", "no_defect", *CLASS_COLUMNS]:
        assert counts[column].max() - counts[column].min() <= 2, column


def test_same_seed_same_folds_other_seed_other_folds():
    image_ids, labels = toy()
    a = make_folds(image_ids, labels, 5, 42)
    assert a.equals(make_folds(list(reversed(image_ids)), labels, 5, 42))
    assert not a.fold.equals(make_folds(image_ids, labels, 5, 7).fold)


def test_bad_fold_count():
    image_ids, labels = toy(10)
    with pytest.raises(InputError, match="--n-folds 1"):
        make_folds(image_ids, labels, 1)
    with pytest.raises(InputError, match="--n-folds 11"):
        make_folds(image_ids, labels, 11)


def write_image_labels(path, image_ids, labels):
    """The image-level label table of a defect table, with a column folds must ignore."""
    present = set(zip(labels.ImageId, labels.ClassId))
    lines = ["ImageId,c1,c2,c3,c4,note"]
    lines += [",".join([i, *("1" if (i, c) in present else "0" for c in (1, 2, 3, 4)), "x"])
              for i in image_ids]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_folds_from_image_level_labels_equal_the_folds_from_masks(tmp_path, capsys):
    image_ids, labels = toy()
    path = write_image_labels(tmp_path / "labels.csv", image_ids, labels)
    out = run_here(capsys, "folds", "--labels", path, "--out", tmp_path / "folds.csv")
    assert out.returncode == 0, out.stderr
    assert f"{len(image_ids)} images in 5 folds" in out.stdout
    written = pd.read_csv(tmp_path / "folds.csv")
    expected = make_folds(image_ids, labels, 5, 42)
    pd.testing.assert_frame_equal(written, expected, check_dtype=False)


@pytest.mark.parametrize("text, parts", [
    ("ImageId,c1,c2,c4\na.jpg,0,0,0\n", ["no column c3", "ImageId,c1,c2,c3,c4"]),
    ("ImageId,c1,c2,c3,c4\n", ["no rows, only a header"]),
    ("ImageId,c1,c2,c3,c4\na.jpg,0,0,0,0\nb.jpg,0,2,0,0\n", ["line 3", "b.jpg", "c2 '2'"]),
    ("ImageId,c1,c2,c3,c4\na.jpg,0,0,,0\n", ["line 2", "c3 ''", "not 0 or 1"]),
    ("ImageId,c1,c2,c3,c4\na.jpg,0,0,0,0\n,1,0,0,0\n", ["line 3", "empty ImageId"]),
    ("ImageId,c1,c2,c3,c4\na.jpg,0,0,0,0\nb.jpg,1,0,0,0\na.jpg,0,0,0,1\n",
     ["line 4", "duplicate ImageId 'a.jpg', first at line 2"]),
    ("ImageId,c1,c2,c3,c4\na.jpg,0,0,0\n", ["line 2", "c4 ''"]),  # a short row
])
def test_bad_image_level_labels_give_one_line_and_exit_2(tmp_path, capsys, text, parts):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    out = tmp_path / "folds.csv"
    one_line_error(run_here(capsys, "folds", "--labels", path, "--out", out), path, *parts)
    assert not out.exists()
