"""Training losses of the four-class multilabel masks, chosen by name, and the BCE of
image-level logits against "class present in the image" (an auxiliary head or a classifier).

LOSSES is the registry of mask losses; a run's mask loss is a weighted sum of them given as a
spec, `--loss bce:0.75,lovasz:0.25` (config.parse_loss reads it, MaskLoss sums it). Each is a
pure function of (N, C, H, W) logits and {0, 1} targets giving a () float32 mean:

- bce:    BCE-with-logits over every pixel, per-class pos_weight on the defect pixels.
- dice:   1 - soft Dice, per image and class. The competition scores Dice per (image, class)
          pair and gives 0 to any predicted pixel on an empty pair, so this one keeps
          penalising predictions on channels whose truth is empty (smp's multilabel DiceLoss
          zeroes those).
- batch_dice: 1 - soft Dice per class over the whole batch, smp's multilabel DiceLoss: a
          class's pixels are pooled over the batch's images, so one image's defect is not
          weighed against every empty image's prediction, and a class absent from the batch
          adds 0 (its false positives are left to bce).
- lovasz: the Lovasz hinge (Berman et al. 2018), per image and class.
- focal:  the focal loss (Lin et al. 2017) with gamma, without alpha.

Everything is computed in float32 whatever the dtype of the logits.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from competition.model.config import format_loss
from competition.errors import InputError
from competition.model.networks import split_output


def check_shapes(logits: Tensor, targets: Tensor) -> None:
    if logits.dim() != 4 or logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)}: "
                         f"need the same (N, C, H, W) shape")


def soft_dice_loss(logits: Tensor, targets: Tensor, smooth: float = 1.0) -> Tensor:
    """(N, C, H, W) logits and {0, 1} targets -> (N, C) float32 per-image, per-class loss.

    1 - (2 * sum(p * t) + smooth) / (sum(p) + sum(t) + smooth), p = sigmoid(logits), sums over
    H, W. On a channel whose truth is empty this is sum(p) / (sum(p) + smooth): predicted
    pixels there are penalised (smp's multilabel DiceLoss zeroes such channels instead).
    """
    check_shapes(logits, targets)
    p, t = torch.sigmoid(logits.float()), targets.float()
    intersection = (p * t).sum(dim=(2, 3))
    total = p.sum(dim=(2, 3)) + t.sum(dim=(2, 3))
    return 1.0 - (2.0 * intersection + smooth) / (total + smooth)


def dice_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """(N, C, H, W) logits and {0, 1} targets -> () float32: soft_dice_loss (smooth 1)
    averaged over the images and classes."""
    return soft_dice_loss(logits, targets).mean()


def batch_dice_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """(N, C, H, W) logits and {0, 1} targets -> () float32: smp's
    DiceLoss(mode="multilabel", from_logits=True), taken from the library as it is: per class
    c, 1 - 2 sum(p t) / (sum(p) + sum(t)) with the sums over the batch's images and pixels
    (smooth 0, eps 1e-7), times 0 when class c has no defect pixel in the batch; the mean over
    the C classes."""
    check_shapes(logits, targets)
    from segmentation_models_pytorch.losses import DiceLoss

    return DiceLoss(mode="multilabel", from_logits=True)(logits.float(), targets.float())


def bce_loss(logits: Tensor, targets: Tensor, pos_weight: Tensor | None = None) -> Tensor:
    """(N, C, H, W) logits and {0, 1} targets -> () float32: the mean over every pixel of
    -(w_c t log p + (1 - t) log(1 - p)), p = sigmoid(logits). pos_weight: (C, 1, 1) weights
    w_c of class c's defect pixels (None: all 1)."""
    check_shapes(logits, targets)
    logits, targets = logits.float(), targets.float()
    if pos_weight is not None and len(pos_weight) != logits.shape[1]:
        raise ValueError(f"pos_weight has {len(pos_weight)} classes, logits {logits.shape[1]}")
    return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight)


def focal_loss(logits: Tensor, targets: Tensor, gamma: float = 2.0) -> Tensor:
    """(N, C, H, W) logits and {0, 1} targets -> () float32: the mean over every pixel of
    (1 - p_t)^gamma * BCE, where p_t = p on a defect pixel and 1 - p elsewhere (the
    probability given to the truth): confident right pixels weigh less. gamma 0 is BCE.

    No alpha: RetinaNet's alpha 0.25 (torchvision's and smp's functional default) weighs
    the rare positives *down*, tuned there for anchors with gamma 2; here the classes'
    balance is left to bce's pos_weight. smp's FocalLoss(mode="multilabel", alpha=None)
    computes the same value (a class-by-class mean of equal-sized classes; tests compare)."""
    check_shapes(logits, targets)
    logits, targets = logits.float(), targets.float()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    # 1 - p_t = sigmoid(-z) on a defect pixel, sigmoid(z) elsewhere: sigmoid(z * (1 - 2t))
    return (torch.sigmoid(logits * (1.0 - 2.0 * targets)).pow(gamma) * bce).mean()


def lovasz_hinge(logits: Tensor, targets: Tensor) -> Tensor:
    """(N, C, H, W) logits and {0, 1} targets -> (N, C) float32: the Lovasz hinge of each
    image and class (Berman, Rannen Triki, Blaschko 2018, "The Lovasz-Softmax loss"), a
    convex surrogate of that pair's Jaccard loss 1 - |X n Y| / |X u Y|.

    Per pixel the hinge error e_i = max(0, 1 - z_i s_i), s_i = +1 on a defect pixel and -1
    elsewhere. Sorted so that e_1 >= e_2 >= ..., the loss is sum_k e_k g_k with
    g_k = J_k - J_{k-1}, J_k the Jaccard loss when the k pixels of largest error are the
    wrong ones: J_k = 1 - (P - pos_k) / (P + neg_k), P the defect pixels, pos_k and neg_k the
    defect and background pixels among those k (J_0 = 0). On an empty truth every J_k is 1:
    the loss is the hinge of the most confident false positive alone.

    Written here rather than taken from smp 0.5's LovaszLoss: in multilabel mode it flattens
    the C channels of an image into one Jaccard (per_image=True) or the whole batch
    (per_image=False), never one per image *and* class as here; its binary mode on (N*C, H, W)
    is per pair but sorts the pairs one by one in a Python loop, where this sorts them all in
    one batched call (the tests compare the two)."""
    check_shapes(logits, targets)
    n, c = logits.shape[:2]
    z, t = logits.float().reshape(n * c, -1), targets.float().reshape(n * c, -1)
    errors = 1.0 - z * (2.0 * t - 1.0)
    errors, order = errors.sort(dim=1, descending=True)
    t = t.gather(1, order)
    positives = t.sum(dim=1, keepdim=True)
    # float32 counts are exact up to 2^24 pixels (a 256x1600 image has 409,600)
    jaccard = 1.0 - (positives - t.cumsum(1)) / (positives + (1.0 - t).cumsum(1))
    grad = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
    return (F.relu(errors) * grad).sum(dim=1).view(n, c)


def lovasz_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """(N, C, H, W) logits and {0, 1} targets -> () float32: lovasz_hinge averaged over the
    images and classes (empty pairs included)."""
    return lovasz_hinge(logits, targets).mean()


# name -> (logits, targets, the MaskLoss holding pos_weight and gamma) -> () float32
LOSSES = {
    "bce": lambda logits, targets, settings: bce_loss(logits, targets, settings.pos_weight),
    "dice": lambda logits, targets, settings: dice_loss(logits, targets),
    "batch_dice": lambda logits, targets, settings: batch_dice_loss(logits, targets),
    "focal": lambda logits, targets, settings: focal_loss(logits, targets, settings.gamma),
    "lovasz": lambda logits, targets, settings: lovasz_loss(logits, targets),
}


class MaskLoss(nn.Module):
    """sum of weight * LOSSES[name](logits, targets) over `terms`, in their order; a float32
    scalar. terms: ((name, weight), ...) as config.parse_loss reads them from a spec; the
    default "dice:1,bce:1" is the soft Dice + BCE every run trained with before the registry.

    pos_weight: one weight per class multiplying bce's loss on that class's defect pixels (a
    buffer of shape (C, 1, 1), broadcast over (N, C, H, W)); None weighs them all 1.
    gamma: focal's exponent."""

    def __init__(self, terms: Sequence[tuple[str, float]] = (("dice", 1.0), ("bce", 1.0)),
                 pos_weight: Sequence[float] | None = None, gamma: float = 2.0):
        super().__init__()
        if not terms:
            raise ValueError("MaskLoss needs at least one (name, weight) term")
        unknown = [name for name, _ in terms if name not in LOSSES]
        if unknown:
            raise InputError(f"--loss {format_loss(terms)!r}: unknown loss {unknown[0]!r}; "
                             f"valid: {', '.join(sorted(LOSSES))}")
        self.terms, self.gamma = tuple((name, float(weight)) for name, weight in terms), gamma
        self.register_buffer("pos_weight", None if pos_weight is None else
                             torch.tensor(pos_weight, dtype=torch.float32).view(-1, 1, 1))

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        """(N, C, H, W) logits (any float dtype) and {0, 1} targets (uint8 or float) -> ()."""
        logits, targets = logits.float(), targets.float()
        total = None
        for name, weight in self.terms:
            term = weight * LOSSES[name](logits, targets, self)
            total = term if total is None else total + term
        return total


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
    """A segmenter's loss: `masks` (a MaskLoss) on its (N, C, H, W) mask logits, plus
    cls_weight * presence_bce of its (N, C) image logits when it has an image-level head
    (its output is then the tuple (masks, labels), see model.split_output). A float32 scalar."""

    def __init__(self, masks: MaskLoss, cls_weight: float = 0.0):
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
