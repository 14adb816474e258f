"""K folds stratified over the multilabel signature: the four classes and 'no defect'."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

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
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold  # training only: inference
    # reads a fold split (`split`) and never loads iterstrat

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


def split(folds_csv: str | Path, fold: int, image_ids: list[str]) -> tuple[list[str], list[str]]:
    """folds.csv and a fold number -> (train ImageIds, validation ImageIds)."""
    path = Path(folds_csv)
    if not path.is_file():
        raise InputError(f"{path}: folds file not found; make it with `bash run.sh folds` "
                         "or `python -m competition folds --data DIR`")
    folds = pd.read_csv(path)
    if not {"ImageId", "fold"} <= set(folds.columns):
        raise InputError(f"{path}: needs columns ImageId and fold, found {list(folds.columns)}")
    present = sorted(set(folds.fold))
    if fold not in present:
        raise InputError(f"{path}: no fold {fold}; the folds are {present}")
    unknown = sorted(set(folds.ImageId) - set(image_ids))
    if unknown:
        raise InputError(f"{path}: ImageId {unknown[0]} has no image in the dataset "
                         f"({len(unknown)} such): folds.csv of another dataset?")
    val = folds.ImageId[folds.fold == fold].tolist()
    train = folds.ImageId[folds.fold != fold].tolist()
    if not train or not val:
        raise InputError(f"{path}: fold {fold} leaves {len(train)} train and {len(val)} "
                         "validation images; both must be non-empty")
    return train, val
