import numpy as np
import pytest
import torch
from scipy import ndimage

from competition.data import rle
from competition.bench.postprocess import bench_postprocess, thresholded_mask
from competition.data.postprocess import (
    apply, binarize, clean, encode_masks, grid_counts, pair_counts, threshold_levels)


def test_binarize_thresholds_and_clears_small_masks():
    probs = torch.zeros(1, 2, 2, 3)
    probs[0, 0] = torch.tensor([[0.9, 0.6, 0.4], [0.5, 0.7, 0.1]])  # 3 pixels > 0.5
    probs[0, 1] = torch.tensor([[0.9, 0.9, 0.0], [0.0, 0.0, 0.0]])  # 2 pixels > 0.5
    out = binarize(probs, 0.5, [3, 3])
    assert out[0, 0].tolist() == [[True, True, False], [False, True, False]]
    assert not out[0, 1].any(), "2 pixels < min area 3: cleared"
    assert binarize(probs, 0.5, [4, 2])[0].sum(dim=(1, 2)).tolist() == [0, 2]


def test_pair_counts_by_hand():
    pred = torch.tensor([[[[1, 1, 0, 0]], [[0, 0, 0, 0]]]])
    truth = torch.tensor([[[[0, 1, 1, 1]], [[1, 0, 0, 0]]]])
    counts = pair_counts(pred, truth)
    assert counts.shape == (1, 2, 3)
    assert counts[0].tolist() == [[1, 2, 3], [0, 0, 1]]


# ---------------------------------------------------------------- component kernels

EIGHT = np.ones((3, 3), bool)  # scipy structure of 8-connectivity


def reference_clean(mask: np.ndarray, min_component: int, min_area: int) -> np.ndarray:
    """scipy's 8-connected labels: drop small components, then a too small mask."""
    labels, n = ndimage.label(mask != 0, EIGHT)
    keep = np.bincount(labels.ravel(), minlength=n + 1) >= min_component
    keep[0] = False
    out = keep[labels].astype(np.uint8)
    return out if out.sum() >= min_area else np.zeros_like(out)


def reference_grid(levels, truth, K, min_components) -> np.ndarray:
    N, C = levels.shape[:2]
    out = np.zeros((N, C, K, len(min_components), 2), np.int64)
    for n in range(N):
        for c in range(C):
            for k in range(K):
                for m, size in enumerate(min_components):
                    kept = reference_clean(levels[n, c] > k, size, 0) != 0
                    out[n, c, k, m] = kept.sum(), (kept & (truth[n, c] != 0)).sum()
    return out


def one(mask) -> np.ndarray:
    """(H, W) 0/1 list -> (1, 1, H, W) uint8."""
    return np.array(mask, np.uint8)[None, None].copy()


def blobs(rng, shape, sigma) -> np.ndarray:
    """Random values in [0, 1], smoothed into blobs of about sigma pixels (not on a thin
    image: plain noise there)."""
    p = rng.random(shape)
    if min(shape[-2:]) > 3:
        p = ndimage.gaussian_filter(p, sigma)
    return (p - p.min()) / (np.ptp(p) + 1e-12)


def test_diagonal_pixels_are_one_component():
    for mask in ([[1, 0], [0, 1]], [[0, 1], [1, 0]]):
        kept = one(mask)
        assert clean(kept, [2], [0]).tolist() == [[2]], "a diagonal pair is one component"
        assert kept[0, 0].tolist() == mask
        assert grid_counts(one(mask), one(mask), 1, [2, 3])[0, 0, 0].tolist() == [[2, 2], [0, 0]]


def test_bottom_of_a_column_does_not_touch_the_top_of_the_next():
    mask = np.zeros((1, 1, 6, 4), np.uint8)
    mask[0, 0, 5, 1] = mask[0, 0, 0, 2] = 1  # consecutive in the RLE's pixel order
    assert clean(mask.copy(), [2], [0]).tolist() == [[0]]
    mask[0, 0, 1, 3] = 1  # touches (0, 2) diagonally: a component of 2, and a lone pixel
    kept = mask.copy()
    assert clean(kept, [2], [0]).tolist() == [[2]]
    assert kept[0, 0, 5, 1] == 0 and kept[0, 0, 0, 2] == kept[0, 0, 1, 3] == 1


def test_runs_in_one_column_join_only_through_a_neighbour():
    mask = [[1, 0, 0],
            [0, 0, 0],
            [1, 0, 0]]
    assert clean(one(mask), [2], [0]).tolist() == [[0]]
    mask[1][1] = 1  # now both touch (1, 1)
    assert clean(one(mask), [3], [0]).tolist() == [[3]]


def test_component_of_exactly_min_component_pixels_is_kept():
    mask = [[1, 1, 0, 0, 0],
            [0, 1, 0, 0, 1]]
    assert clean(one(mask), [3], [0]).tolist() == [[3]]
    assert clean(one(mask), [4], [0]).tolist() == [[0]]
    assert clean(one(mask), [0], [0]).tolist() == [[4]], "0 keeps everything"


def test_min_area_counts_what_is_left_after_removing_components():
    mask = np.zeros((1, 1, 8, 8), np.uint8)
    mask[0, 0, :5, 0] = 1  # 5 pixels
    mask[0, 0, 6:, 6] = 1  # 2 pixels
    kept = mask.copy()
    assert clean(kept, [3], [5]).tolist() == [[5]]
    assert kept[0, 0, :, 6].sum() == 0 and kept[0, 0, :, 0].sum() == 5
    kept = mask.copy()
    assert clean(kept, [3], [6]).tolist() == [[0]], "7 pixels before, 5 after: < 6"
    assert not kept.any()


def test_grid_counts_by_hand():
    levels = one([[2, 0, 0, 1],
                  [1, 0, 0, 0],
                  [0, 0, 3, 3]])
    truth = one([[1, 1, 0, 1],
                 [0, 0, 0, 0],
                 [0, 0, 0, 1]])
    out = grid_counts(levels, truth, 3, [3, 0, 2])
    assert out.shape == (1, 1, 3, 3, 2) and out.dtype == np.int32
    # threshold 0: components {(0,0), (1,0)} 2 px, 1 hit; {(0,3)} 1 px, 1 hit;
    #              {(2,2), (2,3)} 2 px, 1 hit
    assert out[0, 0, 0].tolist() == [[0, 0], [5, 3], [4, 2]]
    # threshold 1: {(0,0)} 1 px, 1 hit; {(2,2), (2,3)}
    assert out[0, 0, 1].tolist() == [[0, 0], [3, 2], [2, 1]]
    assert out[0, 0, 2].tolist() == [[0, 0], [2, 1], [2, 1]]


@pytest.mark.parametrize("shape", [(256, 1600), (1, 37), (41, 1), (3, 2), (45, 130)])
def test_grid_counts_equal_scipy_labels(shape):
    rng = np.random.default_rng(sum(shape))
    thresholds = [0.3, 0.45, 0.6, 0.75, 0.9]
    probs = blobs(rng, (2, 2, *shape), (0, 0, 2, 3))
    levels = threshold_levels(torch.from_numpy(probs), thresholds).numpy()
    truth = blobs(rng, (2, 2, *shape), (0, 0, 3, 3)) > 0.55
    levels[1, 1] = 0  # an empty channel
    sizes = [50, 0, 1, 2, 7, 400]
    out = grid_counts(levels, truth, len(thresholds), sizes)
    assert np.array_equal(out, reference_grid(levels, truth, len(thresholds), sizes))
    assert out[..., 1, 0].sum() > 0, "some masks and hits to compare"


def test_grid_counts_of_every_level_up_to_255():
    rng = np.random.default_rng(7)
    levels = rng.integers(0, 256, (1, 1, 20, 30), dtype=np.uint8)
    truth = rng.random((1, 1, 20, 30)) < 0.5
    sizes = [1, 5, 30]
    want = reference_grid(levels, truth, 255, sizes)
    assert np.array_equal(grid_counts(levels, truth, 255, sizes), want)
    assert np.array_equal(grid_counts(levels, truth, 3, sizes), want[:, :, :3]), \
        "levels above n_thresholds are above every threshold"


@pytest.mark.parametrize("shape", [(256, 1600), (7, 9), (1, 50), (50, 1), (70, 200)])
def test_clean_equals_scipy_labels(shape):
    rng = np.random.default_rng(shape[1])
    probs = blobs(rng, (3, 4, *shape), (0, 0, 2, 4))
    masks = (probs > 0.6).astype(np.uint8)
    masks[2, 1] = 0
    min_component, min_area = [0, 1, 30, 200], [0, 40, 10, 300]
    want = np.stack([[reference_clean(masks[n, c], min_component[c], min_area[c])
                      for c in range(4)] for n in range(3)])
    areas = clean(masks, min_component, min_area)
    assert np.array_equal(masks, want)
    assert areas.dtype == np.int64 and np.array_equal(areas, want.sum(axis=(2, 3)))


def patterns(H: int, W: int) -> dict:
    rows, cols = np.indices((H, W))
    return {
        "checkerboard": (rows + cols) % 2,  # one component, a run per pixel
        "columns": cols % 2 == 0,  # W / 2 components of H pixels
        "rows": rows % 2 == 0,  # H / 2 components of W pixels
        "dots": (rows % 2 == 0) & (cols % 2 == 0),  # lone pixels
        "full": np.ones((H, W)),
        "frame": (rows == 0) | (rows == H - 1) | (cols == 0) | (cols == W - 1),
    }


@pytest.mark.parametrize("name", list(patterns(2, 2)))
def test_clean_and_grid_counts_of_extreme_patterns(name):
    mask = patterns(70, 301)[name].astype(np.uint8)
    for size in (0, 2, 70, 71, 302):
        want = reference_clean(mask, size, 0)
        kept = mask[None, None].copy()
        assert clean(kept, [size], [0]).tolist() == [[want.sum()]]
        assert np.array_equal(kept[0, 0], want)
    sizes = [0, 2, 70, 71, 302]
    levels = (mask * 2)[None, None]
    assert np.array_equal(grid_counts(levels, mask[None, None], 2, sizes),
                          reference_grid(levels, mask[None, None], 2, sizes))


def test_clean_of_realistic_masks_equals_scipy_labels():
    rng = np.random.default_rng(11)
    masks = np.stack([[thresholded_mask(c, rng) for c in (1, 2, 3, 4)] for _ in range(12)])
    want = np.stack([[reference_clean(m, 150, area) for m, area in zip(ms, (600, 600, 900, 2000))]
                     for ms in masks])
    clean(masks, [150] * 4, [600, 600, 900, 2000])
    assert np.array_equal(masks, want)


def test_bad_arguments_raise():
    masks = np.zeros((1, 2, 4, 4), np.uint8)
    with pytest.raises(ValueError):
        grid_counts(masks, masks[:, :1], 1, [0])
    with pytest.raises(ValueError):
        grid_counts(masks.astype(np.float32), masks, 1, [0])
    with pytest.raises(ValueError):
        clean(masks.transpose(0, 1, 3, 2), [1, 1], [1, 1])
    with pytest.raises(ValueError):
        clean(masks.astype(bool), [1, 1], [1, 1])
    with pytest.raises(ValueError):
        clean(masks, [1], [1, 1])


def test_apply_thresholds_then_cleans_each_class():
    rng = np.random.default_rng(3)
    probs = blobs(rng, (2, 3, 40, 60), (0, 0, 2, 2)).astype(np.float32)
    threshold, min_component, min_area = [0.4, 0.5, 0.6], [0, 5, 20], [0, 30, 100]
    out = apply(probs, threshold, min_component, min_area)
    assert out.shape == probs.shape and out.dtype == np.uint8
    for n in range(2):
        for c in range(3):
            want = reference_clean(probs[n, c] > np.float32(threshold[c]), min_component[c],
                                   min_area[c])
            assert np.array_equal(out[n, c], want)
    assert np.array_equal(apply(probs[1], threshold, min_component, min_area), out[1])


def test_threshold_levels_match_each_comparison():
    rng = np.random.default_rng(5)
    thresholds = [0.1, 0.25, 0.5, 0.5000001, 0.9]
    probs = torch.from_numpy(rng.random((2, 3, 17, 23)).astype(np.float32))
    probs[0, 0, 0, :5] = torch.tensor(thresholds)  # exactly at a threshold: not above it
    for tensor in (probs, probs.half(), probs.double()):
        levels = threshold_levels(tensor, thresholds)
        assert levels.dtype == torch.uint8 and levels.shape == tensor.shape
        assert torch.equal(levels, sum((tensor > t).to(torch.uint8) for t in thresholds))
        for k, t in enumerate(thresholds):
            assert torch.equal(levels > k, tensor > t)


def test_threshold_levels_reject_bad_thresholds():
    probs = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError):
        threshold_levels(probs, [0.5, 0.4])
    with pytest.raises(ValueError):
        threshold_levels(probs, [0.5, 0.5])
    with pytest.raises(ValueError):
        threshold_levels(probs, np.linspace(0, 1, 256, endpoint=False))
    assert threshold_levels(probs, np.linspace(0, 1, 255, endpoint=False)).max() == 0


def test_encode_masks_equals_rle_encode_and_skips_empty(monkeypatch):
    rng = np.random.default_rng(2)
    masks = np.stack([[thresholded_mask(c, rng) for c in (1, 2, 3, 4)] for _ in range(6)])
    masks[0, 0, :50, :40] = 1  # one mask that survives for sure
    areas = clean(masks, [150] * 4, [600, 600, 900, 2000])
    want = [[rle.encode(m) for m in ms] for ms in masks]
    encode, calls = rle.encode, []
    monkeypatch.setattr(rle, "encode", lambda m: calls.append(m) or encode(m))
    strings = encode_masks(masks, areas)
    assert strings == want
    assert len(calls) == int((areas > 0).sum()), "no encoder call for an empty mask"
    assert strings[0][0] != "" and sum(s == "" for row in strings for s in row) > 0


def test_bench_postprocess_smoke():
    result = bench_postprocess(masks=64)
    assert set(result) == {"masks", "pool", "kept", "ours_s", "notebook_s",
                           "notebook_timed_masks", "ratio"}
    assert result["masks"] == 64 and result["pool"] == 64
    assert all(isinstance(result[k], int) for k in ("masks", "pool", "kept",
                                                     "notebook_timed_masks"))
    assert all(isinstance(result[k], float) and result[k] > 0
               for k in ("ours_s", "notebook_s", "ratio"))
