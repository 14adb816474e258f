"""The RLE kernels found in most Kaggle notebooks: the reference our numba ones are timed
against (bench rle, bench postprocess) and checked against (tests)."""
from __future__ import annotations

import numpy as np

from competition.data import rle


def numpy_encode(mask: np.ndarray) -> str:
    """The usual notebook encoder: transpose, flatten, diff, join."""
    pixels = np.concatenate([[0], mask.T.flatten(), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def numpy_decode(encoded: str, shape=rle.SHAPE) -> np.ndarray:
    """The usual notebook decoder: split, slice into a flat array, reshape column-major."""
    s = encoded.split()
    starts, lengths = [np.asarray(x, dtype=int) for x in (s[0:][::2], s[1:][::2])]
    starts -= 1
    ends = starts + lengths
    img = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    for lo, hi in zip(starts, ends):
        img[lo:hi] = 1
    return img.reshape(shape, order="F")
