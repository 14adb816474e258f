"""K folds stratified over the multilabel signature: the four classes and 'no defect'."""
from __future__ import annotations

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

from competition.errors import InputError
from competition.data.labels import CLASSES, class_matrix

CLASS_COLUMNS = [f"class{c}" for c in CLASSES]


def make_folds(image_ids: list[str], labels: pd.DataFrame, n_folds: int = 5,
               seed: int = 42) -> pd.DataFrame:
    """Every image in exactly one fold.

    Returns ImageId, fold, class1..class4 (0/1), sorted by ImageId. Iterative stratification
    (Sechidis et al. 2011) balances each class and the defect-free images across folds;
    the result depends only on the set of images, their labels, n_folds and seed.
    """
    image_ids = sorted(image_ids)
    if not 2 <= n_folds <= len(image_ids):
        raise InputError(f"--n-folds {n_folds}: needs 2 <= n_folds <= {len(image_ids)} images")
    classes = class_matrix(image_ids, labels)
    signature = np.column_stack([classes, classes.sum(axis=1) == 0])
    fold = np.full(len(image_ids), -1, np.int64)
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, val) in enumerate(splitter.split(np.zeros(len(image_ids)), signature)):
        fold[val] = k
    assert (fold >= 0).all(), "every image must land in a fold"
    frame = pd.DataFrame({"ImageId": image_ids, "fold": fold})
    frame[CLASS_COLUMNS] = classes
    return frame


def fold_counts(folds: pd.DataFrame) -> pd.DataFrame:
    """Per fold: images, defect-free images and images of each class."""
    table = folds.assign(no_defect=(folds[CLASS_COLUMNS].sum(axis=1) == 0).astype(int))
    counts = table.groupby("fold").agg(images=("ImageId", "size"), no_defect=("no_defect", "sum"),
                                       **{c: (c, "sum") for c in CLASS_COLUMNS})
    counts.loc["all"] = counts.sum()
    return counts.astype(int)
