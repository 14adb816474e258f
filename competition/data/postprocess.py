"""Post-processing of predicted probabilities into the masks that are submitted.

The competition punishes every false-positive pixel on an empty (image, class) pair, so a
mask is kept only when it is large enough. Per class, in this order: a pixel is on iff its
probability > threshold; the 8-connected components of fewer than min_component pixels are
removed; the mask is emptied when fewer than min_area pixels remain.

binarize, pair_counts and threshold_levels are functions of tensors (any device); the
component kernels (grid_counts, clean, apply) are numba on CPU numpy arrays, with numba's
on-disk cache; clean works in place.
"""
from __future__ import annotations

import numba
import numpy as np
import torch

from competition.data import rle


def binarize(probs: torch.Tensor, threshold: float, min_area) -> torch.Tensor:
    """(N, C, H, W) probabilities -> (N, C, H, W) bool masks: pixels above `threshold`,
    with a whole channel cleared when it has fewer than min_area[c] such pixels."""
    masks = probs > threshold
    areas = masks.sum(dim=(2, 3))  # (N, C)
    keep = areas >= torch.as_tensor(min_area, device=probs.device).view(1, -1)
    return masks & keep[:, :, None, None]


def pair_counts(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) bool/0-1 masks -> (N, C, 3) int64: |pred ∩ truth|, |pred|, |truth|."""
    pred, truth = pred.bool(), truth.bool()
    return torch.stack([(pred & truth).sum(dim=(2, 3)), pred.sum(dim=(2, 3)),
                        truth.sum(dim=(2, 3))], dim=-1)


def threshold_levels(probs: torch.Tensor, thresholds) -> torch.Tensor:
    """(N, C, H, W) probabilities (any device) and K increasing thresholds -> (N, C, H, W)
    uint8 levels: the number of thresholds t with probs > t. Each comparison is exactly
    `probs > t` (t a Python float), so `level > k` is bit-identical to `probs > thresholds[k]`."""
    thresholds = [float(t) for t in thresholds]
    if len(thresholds) > 255:
        raise ValueError(f"at most 255 thresholds fit a uint8 level, got {len(thresholds)}")
    if any(b <= a for a, b in zip(thresholds, thresholds[1:])):
        raise ValueError(f"thresholds must be strictly increasing, got {thresholds}")
    levels = torch.zeros(probs.shape, dtype=torch.uint8, device=probs.device)
    for t in thresholds:
        levels += probs > t
    return levels


# ---------------------------------------------------------------- connected components
#
# 8-connected components are found on a mask's horizontal runs, since the rows of a C-ordered
# (H, W) array are contiguous in memory: runs of adjacent rows that overlap or touch
# diagonally are joined by union-find, and a component's size is the sum of its run lengths.
# One vectorized pass first takes the minimum and maximum of every block of _BLOCK pixels of
# each row; the run scan then skips the blocks where the level cannot change (all 0 outside a
# run, all at the top level inside one). An empty channel costs that one pass.

_BLOCK = 64  # pixels of a row summarized by one (minimum, maximum) pair


@numba.njit(cache=True, nogil=True)
def _blocks(m: np.ndarray):
    """(H, W) uint8 -> (lo, hi, top): lo and hi (H, ceil(W / _BLOCK)) uint8, the minimum and
    maximum of each block of _BLOCK pixels of each row (the last block of a row may be
    shorter); top (H,) uint8, the maximum of each row.
    LLVM vectorizes the fixed-length loop over a full block (not a variable-length one)."""
    H, W = m.shape
    full = W // _BLOCK
    n_blocks = (W + _BLOCK - 1) // _BLOCK
    lo = np.empty((H, n_blocks), np.uint8)
    hi = np.empty((H, n_blocks), np.uint8)
    top = np.empty(H, np.uint8)
    for r in range(H):
        t = np.uint8(0)
        for b in range(full):
            a, z = np.uint8(255), np.uint8(0)
            for x in range(b * _BLOCK, b * _BLOCK + _BLOCK):
                a = min(a, m[r, x])
                z = max(z, m[r, x])
            lo[r, b] = a
            hi[r, b] = z
            t = max(t, z)
        if full < n_blocks:
            a, z = np.uint8(255), np.uint8(0)
            for x in range(full * _BLOCK, W):
                a = min(a, m[r, x])
                z = max(z, m[r, x])
            lo[r, full] = a
            hi[r, full] = z
            t = max(t, z)
        top[r] = t
    return lo, hi, top


@numba.njit(cache=True, nogil=True)
def _row_runs(row, K, lo, hi, start, ks, x0, x1) -> int:
    """Runs of one row of levels (levels above K count as K) for every threshold k < K, in
    the order they end: run i covers columns x0[i] to x1[i] inclusive, where row > ks[i].
    lo, hi: the row's block minima and maxima; start: (K,) scratch. Returns the run count."""
    W = row.shape[0]
    n = 0
    prev = 0  # level of the pixel before x
    for b in range(lo.shape[0]):
        if (prev == 0 and hi[b] == 0) or (prev == K and lo[b] >= K):
            continue
        for x in range(b * _BLOCK, min(W, (b + 1) * _BLOCK)):
            v = min(np.int64(row[x]), K)
            if v != prev:
                for k in range(prev, v):  # runs of thresholds prev..v-1 start at x
                    start[k] = x
                for k in range(v, prev):  # runs of thresholds v..prev-1 ended at x - 1
                    ks[n], x0[n], x1[n] = k, start[k], x - 1
                    n += 1
                prev = v
    for k in range(prev):
        ks[n], x0[n], x1[n] = k, start[k], W - 1
        n += 1
    return n


@numba.njit(cache=True, nogil=True)
def _grow(a: np.ndarray, n: int, size: int) -> np.ndarray:
    """A copy of a's first n values in a new array of `size` values."""
    b = np.empty(size, a.dtype)
    b[:n] = a[:n]
    return b


@numba.njit(cache=True, nogil=True)
def _runs(m: np.ndarray, K: int, lo: np.ndarray, hi: np.ndarray, top: np.ndarray):
    """Horizontal runs of the masks (m > k), k = 0..K-1, of one (H, W) uint8 level map
    (levels above K count as K); lo, hi, top: its `_blocks`.

    Returns (first, x0, x1): runs are ordered by row, threshold, then column; those of
    threshold k in row r are first[r * K + k] to first[r * K + k + 1] - 1; run i covers
    columns x0[i] to x1[i] inclusive; first[H * K] runs in all.
    """
    H, W = m.shape
    room = K * (W // 2 + 1)  # the most runs one row can have
    ks = np.empty(room, np.int64)
    row_x0 = np.empty(room, np.int32)
    row_x1 = np.empty(room, np.int32)
    start = np.empty(K, np.int64)
    count = np.empty(K + 1, np.int64)
    first = np.zeros(H * K + 1, np.int64)
    x0 = np.empty(room, np.int32)
    x1 = np.empty(room, np.int32)
    n = 0
    for r in range(H):
        if top[r] == 0:
            continue
        found = _row_runs(m[r], K, lo[r], hi[r], start, ks, row_x0, row_x1)
        if n + found > x0.shape[0]:
            x0 = _grow(x0, n, 2 * (n + found))
            x1 = _grow(x1, n, 2 * (n + found))
        count[:] = 0  # counting sort of the row's runs by threshold (stable: by column)
        for i in range(found):
            count[ks[i] + 1] += 1
        for k in range(K):
            first[r * K + k + 1] = count[k + 1]  # runs of (r, k), summed up below
            count[k + 1] += count[k]
        for i in range(found):
            j = n + count[ks[i]]
            count[ks[i]] += 1
            x0[j], x1[j] = row_x0[i], row_x1[i]
        n += found
    for i in range(H * K):
        first[i + 1] += first[i]
    return first, x0, x1


@numba.njit(cache=True, nogil=True)
def _find(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@numba.njit(cache=True, nogil=True)
def _label(first: np.ndarray, x0: np.ndarray, x1: np.ndarray, K: int, H: int):
    """Components of the runs of `_runs`: runs [a0, a1] of row r and [b0, b1] of row r + 1
    (same threshold) are joined iff b0 <= a1 + 1 and a0 <= b1 + 1.
    Returns (root, size): root[i] the first run of run i's component, size[i] the
    component's pixel count where run i is a root (root[i] == i)."""
    n = first[H * K]
    root = np.arange(n)
    for r in range(H - 1):
        for k in range(K):
            i, i_end = first[r * K + k], first[r * K + k + 1]
            j, j_end = first[(r + 1) * K + k], first[(r + 1) * K + k + 1]
            while i < i_end and j < j_end:
                if x0[j] <= x1[i] + 1 and x0[i] <= x1[j] + 1:
                    a, b = _find(root, i), _find(root, j)
                    root[max(a, b)] = min(a, b)
                if x1[i] < x1[j]:  # run i touches nothing after run j
                    i += 1
                else:
                    j += 1
    size = np.zeros(n, np.int64)
    for i in range(n):
        root[i] = _find(root, i)
        size[root[i]] += x1[i] - x0[i] + 1
    return root, size


@numba.njit(cache=True, nogil=True)
def _grid_channel(levels, truth, K, min_components, out) -> None:
    """One (H, W) level map and its truth -> out (K, M, 2) (zeros on entry): area and
    intersection of (levels > k) without its components smaller than min_components[m]."""
    H, W = levels.shape
    lo, hi, top = _blocks(levels)
    if top.max() == 0:
        return
    first, x0, x1 = _runs(levels, K, lo, hi, top)
    root, size = _label(first, x0, x1, K, H)
    hits = np.zeros(first[H * K], np.int64)  # truth pixels of each component, at its root
    cum = np.zeros(W + 1, np.int64)
    for r in range(H):
        if first[r * K] == first[(r + 1) * K] or truth[r].max() == 0:
            continue
        for x in range(W):
            cum[x + 1] = cum[x] + (truth[r, x] != 0)
        for i in range(first[r * K], first[(r + 1) * K]):
            hits[root[i]] += cum[x1[i] + 1] - cum[x0[i]]
    for r in range(H):
        for k in range(K):
            for i in range(first[r * K + k], first[r * K + k + 1]):
                if root[i] == i:
                    for m in range(min_components.shape[0]):
                        if size[i] >= min_components[m]:
                            out[k, m, 0] += size[i]
                            out[k, m, 1] += hits[i]


@numba.njit(parallel=True, cache=True, nogil=True)
def _grid(levels, truth, K, min_components):
    N, C = levels.shape[0], levels.shape[1]
    out = np.zeros((N, C, K, min_components.shape[0], 2), np.int32)
    for p in numba.prange(N * C):
        n, c = p // C, p % C
        _grid_channel(levels[n, c], truth[n, c], K, min_components, out[n, c])
    return out


def _as_uint8(a: np.ndarray, name: str) -> np.ndarray:
    """C-contiguous uint8 view (or copy) of an (N, C, H, W) uint8 or bool array, H, W >= 1."""
    a = np.asarray(a)
    if a.ndim != 4 or a.shape[2] == 0 or a.shape[3] == 0:
        raise ValueError(f"{name} must be (N, C, H, W) with H, W >= 1, got shape {a.shape}")
    if a.dtype == np.bool_:
        a = a.view(np.uint8)
    if a.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 or bool, got {a.dtype}")
    return np.ascontiguousarray(a)


def grid_counts(levels: np.ndarray, truth: np.ndarray, n_thresholds: int,
                min_components) -> np.ndarray:
    """Out-of-fold statistics of every (threshold, component size) pair.

    levels: (N, C, H, W) uint8 from threshold_levels; truth: (N, C, H, W) uint8/bool,
    nonzero = defect; min_components: M ints, any order.
    Returns (N, C, K, M, 2) int32, K = n_thresholds: [n, c, k, m, 0] the area in pixels of
    the mask (levels[n, c] > k) after removing its 8-connected components smaller than
    min_components[m], [n, c, k, m, 1] that mask's intersection with truth[n, c].
    The (n, c) pairs run in parallel on numba's threads (numba.set_num_threads), without
    the GIL; levels above K count as K.
    """
    levels, truth = _as_uint8(levels, "levels"), _as_uint8(truth, "truth")
    if levels.shape != truth.shape:
        raise ValueError(f"levels {levels.shape} and truth {truth.shape} differ in shape")
    if not 0 <= n_thresholds <= 255:
        raise ValueError(f"n_thresholds must be in 0..255, got {n_thresholds}")
    return _grid(levels, truth, int(n_thresholds), np.asarray(min_components, np.int64))


@numba.njit(cache=True, nogil=True)
def _clean_channel(m, min_component, min_area) -> int:
    """Clear the components of an (H, W) mask smaller than min_component, then the whole
    mask when fewer than min_area pixels remain, in place. Returns the remaining area."""
    H = m.shape[0]
    lo, hi, top = _blocks(m)
    if top.max() == 0:
        return 0
    first, x0, x1 = _runs(m, 1, lo, hi, top)
    root, size = _label(first, x0, x1, 1, H)
    area = 0
    for r in range(H):
        for i in range(first[r], first[r + 1]):
            if size[root[i]] < min_component:
                m[r, x0[i]:x1[i] + 1] = 0
            else:
                area += x1[i] - x0[i] + 1
    if area < min_area:
        for r in range(H):
            for i in range(first[r], first[r + 1]):
                m[r, x0[i]:x1[i] + 1] = 0
        area = 0
    return area


@numba.njit(cache=True, nogil=True)
def _clean(masks, min_component, min_area):
    N, C = masks.shape[0], masks.shape[1]
    areas = np.zeros((N, C), np.int64)
    for n in range(N):
        for c in range(C):
            areas[n, c] = _clean_channel(masks[n, c], min_component[c], min_area[c])
    return areas


def clean(masks: np.ndarray, min_component, min_area) -> np.ndarray:
    """Post-process (N, C, H, W) uint8 0/1 C-contiguous masks IN PLACE: clear the
    8-connected components smaller than min_component[c] pixels, then the whole channel when
    fewer than min_area[c] pixels remain. Returns the (N, C) int64 remaining areas.
    One thread (tens of microseconds a mask, see bench_postprocess), without the GIL."""
    if (not isinstance(masks, np.ndarray) or masks.dtype != np.uint8 or masks.ndim != 4
            or not masks.flags.c_contiguous or not masks.flags.writeable
            or masks.shape[2] == 0 or masks.shape[3] == 0):
        raise ValueError("masks must be a writeable C-contiguous (N, C, H, W) uint8 array, "
                         "H, W >= 1")
    C = masks.shape[1]
    min_component = np.asarray(min_component, np.int64)
    min_area = np.asarray(min_area, np.int64)
    if min_component.shape != (C,) or min_area.shape != (C,):
        raise ValueError(f"min_component and min_area need {C} values each (one per class)")
    return _clean(masks, min_component, min_area)


def apply(probs: np.ndarray, threshold, min_component, min_area) -> np.ndarray:
    """(C, H, W) or (N, C, H, W) float probabilities -> uint8 0/1 masks of the same shape:
    pixels with probs > threshold[c] (compared in the probabilities' dtype, as torch does
    with a Python float), then `clean` with the per-class min_component and min_area.
    threshold, min_component, min_area: C values each."""
    probs = np.asarray(probs)
    if probs.ndim not in (3, 4):
        raise ValueError(f"probs must be (C, H, W) or (N, C, H, W), got shape {probs.shape}")
    if len(threshold) != probs.shape[-3]:
        raise ValueError(f"threshold needs {probs.shape[-3]} values (one per class)")
    masks = np.empty(probs.shape, np.uint8)
    for c, t in enumerate(threshold):
        np.greater(probs[..., c, :, :], float(t), out=masks[..., c, :, :])
    clean(masks.reshape(-1, *masks.shape[-3:]), min_component, min_area)
    return masks


def encode_masks(masks: np.ndarray, areas: np.ndarray) -> list[list[str]]:
    """(N, C, H, W) masks and their (N, C) areas (from `clean`) -> N lists of C RLE strings;
    '' where the area is 0, without calling the encoder."""
    return [[rle.encode(mask) if area else "" for mask, area in zip(ms, row)]
            for ms, row in zip(masks, areas)]
