"""Post-processing and RLE encoding of a test set's thresholded masks on one CPU thread.

The CPU work after the GPU has thresholded the probabilities of 5,506 test images x 4
classes (22,024 masks): remove small components, apply the min-area rule, encode. Ours
(postprocess.clean + encode_masks) against the usual Kaggle notebook loop
(cv2.connectedComponents, a Python loop over components, the numpy mask2rle), side by side
in one run, on the same realistic masks and per-class parameters (1st place's).

Run: python -m competition bench postprocess (also the last part of `bench predict`)
"""
from __future__ import annotations

import time

import cv2
import numba
import numpy as np

from competition.data import rle
from competition.bench.notebook import numpy_encode
from competition.data.postprocess import clean, encode_masks
from competition.data.synth import DRAW

MIN_COMPONENT = (150, 150, 150, 150)  # pixels, per class
MIN_AREA = (600, 600, 900, 2000)  # pixels, per class
CLASSES = 4


def speck(mask: np.ndarray, rng: np.random.Generator) -> None:
    """A small false-positive blob of about 5 to 300 pixels (a filled ellipse), in place."""
    H, W = mask.shape
    center = (int(rng.integers(0, W)), int(rng.integers(0, H)))
    axes = (int(rng.integers(1, 13)), int(rng.integers(1, 8)))
    cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)


def thresholded_mask(class_id: int, rng: np.random.Generator) -> np.ndarray:
    """(256, 1600) uint8 0/1 mask as a trained model's thresholded output: a real defect
    shape of the class with up to two specks (15%), only one to five small false-positive
    specks (35%), or empty (50%)."""
    mask = np.zeros(rle.SHAPE, np.uint8)
    u = rng.random()
    specks = 0
    if u < 0.15:
        DRAW[class_id](mask, rng)
        specks = int(rng.integers(0, 3))
    elif u < 0.5:
        specks = int(rng.integers(1, 6))
    for _ in range(specks):
        speck(mask, rng)
    return mask


def notebook(mask: np.ndarray, min_size: int, min_area: int) -> str:
    """The usual notebook post-processing of one mask, then its mask2rle."""
    n, labels = cv2.connectedComponents(mask, connectivity=8)
    out = np.zeros(mask.shape, np.uint8)
    for c in range(1, n):
        p = labels == c
        if p.sum() >= min_size:
            out[p] = 1
    if out.sum() < min_area:
        out[:] = 0
    return numpy_encode(out)


def bench_postprocess(masks: int = 22024, seed: int = 0, pool: int = 512, batch: int = 64,
                      notebook_masks: int = 2000) -> dict:
    """Seconds to post-process and encode `masks` masks (rounded up to whole images of four
    classes; mask i is of class i % 4 + 1), cycling through a pool of `pool` distinct masks.

    Ours is timed on all of them, `batch` masks at a time: each batch is first copied from
    the pool into a buffer (clean works in place; the copy is not timed, and it leaves the
    batch in cache as a copy from the GPU would). The notebook's loop is timed on the first
    `notebook_masks` and extrapolated linearly. Both run on one thread (numba's and OpenCV's
    thread counts are set to 1, then restored) and must give the same RLE strings.
    Returns the figures printed: masks, pool, kept (pool masks left non-empty), ours_s,
    notebook_s, notebook_timed_masks, ratio (notebook_s / ours_s).
    """
    rng = np.random.default_rng(seed)
    pool = max(CLASSES, min(pool, masks) // CLASSES * CLASSES)  # whole images of 4 classes
    masks_pool = np.stack([thresholded_mask(i % CLASSES + 1, rng) for i in range(pool)])
    masks_pool = masks_pool.reshape(pool // CLASSES, CLASSES, *rle.SHAPE)
    images = -(-masks // CLASSES)
    masks = images * CLASSES  # whole images of four classes
    per_batch = max(1, batch // CLASSES)
    buffer = np.empty((per_batch, CLASSES, *rle.SHAPE), np.uint8)
    warm = np.zeros((1, CLASSES, *rle.SHAPE), np.uint8)
    encode_masks(warm, clean(warm, MIN_COMPONENT, MIN_AREA))  # compile or load the kernels
    threads, cv2_threads = numba.get_num_threads(), cv2.getNumThreads()
    numba.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        ours, strings = 0.0, []
        for first in range(0, images, per_batch):
            index = [i % len(masks_pool) for i in range(first, min(first + per_batch, images))]
            b = buffer[: len(index)]
            np.copyto(b, masks_pool[index])
            start = time.perf_counter()
            encoded = encode_masks(b, clean(b, MIN_COMPONENT, MIN_AREA))
            ours += time.perf_counter() - start
            if first < len(masks_pool):
                strings += [s for row in encoded for s in row]
        flat = masks_pool.reshape(-1, *rle.SHAPE)
        n_notebook = min(masks, notebook_masks)
        theirs = []
        start = time.perf_counter()
        for i in range(n_notebook):
            c = i % CLASSES
            theirs.append(notebook(flat[i % len(flat)], MIN_COMPONENT[c], MIN_AREA[c]))
        notebook_seconds = (time.perf_counter() - start) * masks / n_notebook
    finally:
        numba.set_num_threads(threads)
        cv2.setNumThreads(cv2_threads)
    n_check = min(len(flat), n_notebook, len(strings))
    assert strings[:n_check] == theirs[:n_check], "ours and the notebook's RLE strings differ"
    result = {
        "masks": masks, "pool": len(flat), "kept": sum(s != "" for s in strings[:len(flat)]),
        "ours_s": ours, "notebook_s": notebook_seconds, "notebook_timed_masks": n_notebook,
        "ratio": notebook_seconds / ours,
    }
    print(f"{masks} masks of 256x1600 (pool of {len(flat)} distinct: "
          f"{result['kept']} non-empty after post-processing), one thread")
    print(f"{'approach':44} {'seconds':>8} {'us/mask':>8}")
    print(f"{'ours: clean + encode_masks (numba)':44} {ours:8.2f} {ours / masks * 1e6:8.1f}")
    label = f"notebook (timed on {n_notebook}, extrapolated)"
    print(f"{label:44} {notebook_seconds:8.2f} {notebook_seconds / masks * 1e6:8.1f}")
    print(f"ratio {result['ratio']:.1f}x")
    return result


def run(args) -> None:
    """`bench postprocess` (also the last table of `bench predict`)."""
    bench_postprocess(masks=args.masks_pp, seed=args.seed)
