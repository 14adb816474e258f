"""bench score: offline scoring of a full-size test set (5,506 images x 4 classes) from CSV
files."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from competition.data import rle
from competition.data.synth import DRAW, allocate, image_id


def noisy_prediction(truth: np.ndarray | None, class_id: int, rng) -> np.ndarray:
    """A plausible prediction: a defect found with its edge moved a few pixels (80%) or
    missed; on an empty pair, a false positive 5% of the time."""
    mask = np.zeros(rle.SHAPE, np.uint8)
    if truth is not None:
        if rng.random() < 0.8:
            mask = np.roll(truth, int(rng.integers(-4, 5)), axis=1)
    elif rng.random() < 0.05:
        DRAW[class_id](mask, rng)
    return mask


def synthetic_tables(n_images: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A truth and a noisy prediction of n_images x 4 pairs, ~14% of truth pairs non-empty."""
    rng = np.random.default_rng(seed)
    truth, pred = [], []
    for i, classes in enumerate(allocate(n_images, rng)):
        name = image_id(seed, "bench", i)
        for c in (1, 2, 3, 4):
            mask = None
            if c in classes:
                mask = np.zeros(rle.SHAPE, np.uint8)
                DRAW[c](mask, rng)
                truth.append((name, c, rle.encode(mask)))
            pred.append((name, c, rle.encode(noisy_prediction(mask, c, rng))))
    columns = ["ImageId", "ClassId", "EncodedPixels"]
    return pd.DataFrame(truth, columns=columns), pd.DataFrame(pred, columns=columns)


def bench_score(args) -> None:
    from competition.data.labels import read_table
    from competition.data.metric import dice, score_tables

    images = args.images or 5506
    truth, pred = synthetic_tables(images, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        truth_csv, pred_csv = Path(tmp) / "truth.csv", Path(tmp) / "sub.csv"
        truth.to_csv(truth_csv, index=False)
        pred.to_csv(pred_csv, index=False)
        score_tables(pred.head(8), truth.head(8))  # warm the numba cache
        start = time.perf_counter()
        result = score_tables(read_table(pred_csv)[0], read_table(truth_csv)[0])
        seconds = time.perf_counter() - start
    # the same score from decoded masks, for a check and a reference time
    start = time.perf_counter()
    t = truth.set_index(["ImageId", "ClassId"]).EncodedPixels
    dices = [dice(rle.decode(p), rle.decode(t.get((i, c), "")))
             for i, c, p in pred.itertuples(index=False)]
    decoded_seconds = time.perf_counter() - start
    assert abs(float(np.mean(dices)) - result["mean_dice"]) < 1e-12, "run and mask Dice differ"
    print(f"{result['pairs']} pairs ({images} images x 4 classes), "
          f"{(truth.EncodedPixels != '').sum()} truth masks, {(pred.EncodedPixels != '').sum()} "
          f"predicted: mean Dice {result['mean_dice']:.5f}")
    print(f"score from CSV files (read, check every RLE, Dice on runs): {seconds:.2f} s")
    print(f"same Dice from decoded masks (no CSV reading):                {decoded_seconds:.2f} s")
