"""Post-processing of predicted probabilities into the masks that are submitted.

Pure functions on tensors (any device). The competition punishes every false-positive
pixel on an empty (image, class) pair, so a mask is kept only when it is large enough.
"""
from __future__ import annotations

import torch


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
