import numpy as np
import pandas as pd
import pytest

from competition.errors import InputError
from competition.folds import CLASS_COLUMNS, fold_counts, make_folds


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
