"""The training augmentation: crops around defects, flips, brightness and contrast, defect
blackout (albumentations), applied and seeded by data/datasets.py (`augment`,
`seed_transform`) so that an item's augmentation depends on (seed, epoch, position) alone."""
from __future__ import annotations

from typing import TYPE_CHECKING

from competition.data.datasets import CLASS_MASKS, seed_transform

if TYPE_CHECKING:  # imported where used: inference (and the Kaggle kernel) never loads it
    import albumentations as A


def train_transform(config) -> A.Compose:
    """Crop (around a defect pixel with probability defect_crop_p, else anywhere: the
    classifier presets crop anywhere), flips, brightness/contrast, then with probability
    mask_dropout_p "defect blackout": albumentations' MaskDropout sets one connected defect
    region to 0 in the image and in every mask, so a class whose only region it was is no
    longer present. Apply it with `augment`: image (H, W, 3), masks (H, W, 4).

    MaskDropout labels the regions of a single-channel `mask`; so `mask` is the union of the
    four masks (H, W) and the four masks travel as the extra mask target CLASS_MASKS, which
    every step transforms as it does `mask` (the defect crop finds the same pixels in the
    union as in the four) and MaskDropout zeroes, all channels, where it drops a region."""
    import albumentations as A

    h, w, p = config.crop_height, config.crop_width, config.defect_crop_p
    crop = A.OneOf([A.CropNonEmptyMaskIfExists(h, w, p=p), A.RandomCrop(h, w, p=1.0 - p)], p=1.0)
    if p in (0.0, 1.0):  # OneOf would drop a child of probability 0
        crop = A.CropNonEmptyMaskIfExists(h, w) if p == 1.0 else A.RandomCrop(h, w)
    steps = [
        crop,
        A.HorizontalFlip(p=config.hflip_p),
        A.VerticalFlip(p=config.vflip_p),
        A.RandomBrightnessContrast(0.15, 0.15, p=config.brightness_contrast_p),
    ]
    if config.mask_dropout_p > 0:  # last: the dropped region stays exactly 0 in the image
        steps.append(A.MaskDropout(max_objects=1, fill=0, fill_mask=0, p=config.mask_dropout_p))
    transform = A.Compose(steps, additional_targets={CLASS_MASKS: "mask"})
    seed_transform(transform, config.seed, 0, 0)  # a stream for direct calls; items reseed it
    return transform
