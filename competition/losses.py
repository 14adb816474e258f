"""Training losses for the four-class multilabel masks: soft Dice + BCE.

The competition scores Dice per (image, class) pair and gives 0 to any predicted pixel on
an empty pair, so the Dice term here is per image and per class, and keeps penalising
predictions on channels whose truth is empty (smp's multilabel DiceLoss zeroes those).
Everything is computed in float32 whatever the dtype of the logits.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def soft_dice_loss(logits: Tensor, targets: Tensor, smooth: float = 1.0) -> Tensor:
    """(N, C, H, W) logits and {0, 1} targets -> (N, C) float32 per-image, per-class loss.

    1 - (2 * sum(p * t) + smooth) / (sum(p) + sum(t) + smooth), p = sigmoid(logits), sums over
    H, W. On a channel whose truth is empty this is sum(p) / (sum(p) + smooth): predicted
    pixels there are penalised (smp's multilabel DiceLoss zeroes such channels instead).
    """
    if logits.dim() != 4 or logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)}: "
                         f"need the same (N, C, H, W) shape")
    p, t = torch.sigmoid(logits.float()), targets.float()
    intersection = (p * t).sum(dim=(2, 3))
    total = p.sum(dim=(2, 3)) + t.sum(dim=(2, 3))
    return 1.0 - (2.0 * intersection + smooth) / (total + smooth)


class DiceBCELoss(nn.Module):
    """dice_weight * mean soft Dice loss + bce_weight * mean BCE-with-logits; a float32 scalar.

    pos_weight: one weight per class multiplying the BCE of that class's positive pixels
    (a buffer of shape (C, 1, 1), broadcast over (N, C, H, W)); None weighs them all 1.
    """

    def __init__(self, dice_weight: float = 1.0, bce_weight: float = 1.0,
                 pos_weight: Sequence[float] | None = None, smooth: float = 1.0):
        super().__init__()
        self.dice_weight, self.bce_weight, self.smooth = dice_weight, bce_weight, smooth
        self.register_buffer("pos_weight", None if pos_weight is None else
                             torch.tensor(pos_weight, dtype=torch.float32).view(-1, 1, 1))

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        """(N, C, H, W) logits (any float dtype) and {0, 1} targets (uint8 or float) -> ()."""
        logits, targets = logits.float(), targets.float()
        if self.pos_weight is not None and len(self.pos_weight) != logits.shape[1]:
            raise ValueError(f"pos_weight has {len(self.pos_weight)} classes, "
                             f"logits {logits.shape[1]}")
        dice = soft_dice_loss(logits, targets, self.smooth).mean()
        bce = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=self.pos_weight)
        return self.dice_weight * dice + self.bce_weight * bce
