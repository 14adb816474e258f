"""bench rle: our numba encode/decode against the numpy kernels found in most Kaggle
notebooks, on the synthetic generator's masks, best of several interleaved rounds; --real
adds the same table for the masks of a real train.csv."""
from __future__ import annotations

import time


import numpy as np

from competition.bench.notebook import numpy_decode, numpy_encode
from competition.data import rle
from competition.data.labels import CLASSES
from competition.data.synth import DRAW
from competition.errors import InputError


REAL_MASKS = (562, 154, 3173, 490)  # masks per class among the 4,379 real ones


def realistic_masks(n: int, seed: int) -> list[np.ndarray]:
    """n masks of the synthetic generator's annotations (smooth outlines around regions,
    sized like the real ones), one class each, classes in the real masks' proportions."""
    rng = np.random.default_rng(seed)
    out = []
    for c in rng.choice(CLASSES, size=n, p=np.array(REAL_MASKS) / sum(REAL_MASKS)):
        mask = np.zeros(rle.SHAPE, np.uint8)
        DRAW[int(c)](mask, rng)
        out.append(mask)
    return out


def _time(fn, items) -> float:
    """Seconds per item of one pass over items."""
    start = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - start) / len(items)


def bench_rle(args) -> None:
    """The kernels on synthetic masks, then (--real CSV) on the masks of a real train.csv."""
    start = time.perf_counter()
    rle.decode(rle.encode(np.eye(256, 1600, dtype=np.uint8)))
    first = time.perf_counter() - start
    real = []
    if args.real:  # read first: a bad file stops the bench before anything is timed
        from competition.data.labels import read_train

        real = [rle.decode(s) for s in read_train(args.real).EncodedPixels]
        if not real:
            raise InputError(f"--real {args.real}: no masks to time")
    print(f"first numba call in this process (compile, or load from cache): {first:.2f} s")
    rle_table("synthetic masks", realistic_masks(args.masks, args.seed), args.repeat)
    if real:
        rle_table(f"real masks of {args.real}", real, args.repeat)


def rle_table(what: str, masks: list[np.ndarray], repeat: int) -> None:
    """Best of `repeat` interleaved rounds of each kernel on `masks`, outputs checked equal
    first; prints the masks' runs and pixels and a table of us per mask and the ratios."""
    strings = [numpy_encode(m) for m in masks]
    assert [rle.encode(m) for m in masks] == strings, "encoders disagree"
    assert all((rle.decode(s) == m).all() for s, m in zip(strings, masks)), "decoders disagree"
    runs = np.array([len(s.split()) // 2 for s in strings])
    pixels = np.array([int(m.sum()) for m in masks])
    print(f"{what}: {len(masks)} masks of 256x1600: {runs.mean():.0f} runs (min {runs.min()}, "
          f"max {runs.max()}), {pixels.mean():.0f} pixels on average")
    kernels = {
        "encode": (numpy_encode, rle.encode, masks),
        "decode": (numpy_decode, rle.decode, strings),
    }
    best = {}
    for _ in range(repeat):  # interleaved rounds, best kept: the same load for both
        for name, (theirs, ours, items) in kernels.items():
            for who, fn in (("numpy", theirs), ("numba", ours)):
                best[name, who] = min(best.get((name, who), np.inf), _time(fn, items))
    print(f"{'kernel':8} {'numpy (us)':>11} {'numba (us)':>11} {'ratio':>7}")
    for name in kernels:
        a, b = best[name, "numpy"] * 1e6, best[name, "numba"] * 1e6
        print(f"{name:8} {a:11.1f} {b:11.1f} {a / b:6.1f}x")
