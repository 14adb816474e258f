"""Training losses: soft Dice + BCE on the four-class multilabel masks, and BCE of
image-level logits against "class present in the image" (an auxiliary head or a classifier).

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

from competition.model import split_output


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


def presence(masks: Tensor) -> Tensor:
    """(N, C, H, W) {0, 1} masks -> (N, C) float32: 1 where class c has a pixel in image n.
    Taken after augmentation: a crop or a MaskDropout that removes a defect makes it 0."""
    return masks.amax(dim=(2, 3)).float()


def presence_bce(image_logits: Tensor, masks: Tensor) -> Tensor:
    """(N, C) image logits (any float dtype) and (N, C, H, W) {0, 1} masks -> () float32: the
    mean BCE-with-logits against presence(masks)."""
    if image_logits.dim() != 2 or image_logits.shape != masks.shape[:2]:
        raise ValueError(f"image logits {tuple(image_logits.shape)} and masks "
                         f"{tuple(masks.shape)}: need (N, C) and (N, C, H, W)")
    return F.binary_cross_entropy_with_logits(image_logits.float(), presence(masks))


class SegmentLoss(nn.Module):
    """A segmenter's loss: `masks` (a DiceBCELoss) on its (N, C, H, W) mask logits, plus
    cls_weight * presence_bce of its (N, C) image logits when it has an image-level head
    (its output is then the tuple (masks, labels), see model.split_output). A float32 scalar."""

    def __init__(self, masks: DiceBCELoss, cls_weight: float = 0.0):
        super().__init__()
        self.masks, self.cls_weight = masks, cls_weight

    def forward(self, out, targets: Tensor) -> Tensor:
        mask_logits, image_logits = split_output(out)
        if mask_logits is None or (self.cls_weight > 0) != (image_logits is not None):
            raise ValueError(f"SegmentLoss(cls_weight={self.cls_weight}) needs mask logits"
                             + (" and image logits" if self.cls_weight > 0 else " alone"))
        loss = self.masks(mask_logits, targets)
        if self.cls_weight > 0:
            loss = loss + self.cls_weight * presence_bce(image_logits, targets)
        return loss


class PresenceLoss(nn.Module):
    """A classifier's loss: presence_bce of its (N, C) logits against the (N, C, H, W) masks."""

    def forward(self, out, targets: Tensor) -> Tensor:
        mask_logits, image_logits = split_output(out)
        if mask_logits is not None:
            raise ValueError("PresenceLoss takes a classifier's (N, C) logits, not mask logits")
        return presence_bce(image_logits, targets)
