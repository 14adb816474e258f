import torch

from competition.postprocess import binarize, pair_counts


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
