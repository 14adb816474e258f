"""Slow, obvious references the fast code is checked against: pixel by pixel, pure Python."""


def encode(mask) -> str:
    """Walk pixels in Kaggle order (down each column, columns left to right)."""
    H, W = mask.shape
    pairs = []
    run_start = None
    for p in range(H * W):
        on = bool(mask[p % H][p // H])
        if on and run_start is None:
            run_start = p
        if not on and run_start is not None:
            pairs += [run_start + 1, p - run_start]
            run_start = None
    if run_start is not None:
        pairs += [run_start + 1, H * W - run_start]
    return " ".join(str(v) for v in pairs)


def decode(rle: str, shape) -> list[list[int]]:
    H, W = shape
    mask = [[0] * W for _ in range(H)]
    values = [int(v) for v in rle.split()]
    for start, length in zip(values[0::2], values[1::2]):
        for p in range(start - 1, start - 1 + length):
            mask[p % H][p // H] = 1
    return mask


def pixels(rle: str) -> set[int]:
    values = [int(v) for v in rle.split()]
    return {p for s, n in zip(values[0::2], values[1::2]) for p in range(s, s + n)}


def dice(pred: str, truth: str) -> float:
    """Dice on sets of pixel numbers; 1 when both are empty."""
    x, y = pixels(pred), pixels(truth)
    if not x and not y:
        return 1.0
    return 2 * len(x & y) / (len(x) + len(y))


class DiceBCELoss:
    """The mask loss every run trained with before the loss registry, as it was in
    competition/losses.py (commit e4ff2bf), kept to check that the registry's default spec
    "dice:1,bce:1" computes the same bits: dice_weight * mean soft Dice (smooth 1, per image
    and class) + bce_weight * mean BCE-with-logits with a per-class pos_weight."""

    def __init__(self, dice_weight=1.0, bce_weight=1.0, pos_weight=None, smooth=1.0):
        import torch

        self.dice_weight, self.bce_weight, self.smooth = dice_weight, bce_weight, smooth
        self.pos_weight = (None if pos_weight is None else
                           torch.tensor(pos_weight, dtype=torch.float32).view(-1, 1, 1))

    def __call__(self, logits, targets):
        import torch
        import torch.nn.functional as F

        logits, targets = logits.float(), targets.float()
        p, t = torch.sigmoid(logits.float()), targets.float()
        intersection = (p * t).sum(dim=(2, 3))
        total = p.sum(dim=(2, 3)) + t.sum(dim=(2, 3))
        dice = (1.0 - (2.0 * intersection + self.smooth) / (total + self.smooth)).mean()
        bce = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=self.pos_weight)
        return self.dice_weight * dice + self.bce_weight * bce
