"""Training data: images and their four masks, albumentations transforms, per-epoch sampling.

Workers return uint8 tensors (a quarter of the bytes of float32 through the pinned-memory
queue); `normalize` turns them into ImageNet-normalised floats on the device.

A training sample's augmentation is a function of (seed, epoch, position in the epoch)
alone: the sampler hands the loader (epoch, position, index) keys and the dataset seeds the
transform from them. So the number of loader workers changes nothing, a resumed run sees
the augmentations an uninterrupted one would, and the workers can live for the whole run.
"""
from __future__ import annotations

import functools
import os
import random
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from competition.errors import InputError
from competition.data.images import read_image
from competition.data.labels import masks

if TYPE_CHECKING:  # imported where used: inference (and the Kaggle kernel) never loads it
    import albumentations as A

MEAN = (0.485, 0.456, 0.406)  # ImageNet, what the encoders were trained with
STD = (0.229, 0.224, 0.225)


CLASS_MASKS = "class_masks"  # the extra target of a train_transform: the (H, W, 4) masks


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


def augment(transform: A.Compose, image: np.ndarray, mask: np.ndarray):
    """A train_transform applied to an (H, W, 3) uint8 image and its (H, W, 4) {0, 1} masks
    -> (image (h, w, 3), masks (h, w, 4)), h x w the crop. The union is the maximum of the
    four planes taken two at a time: `mask.max(axis=-1)` gives the same bytes in 14 ms a
    256x1600 item, reducing over a last axis of 4 (measured), against 0.6 ms."""
    union = functools.reduce(np.maximum, (mask[..., c] for c in range(mask.shape[-1])))
    out = transform(image=image, mask=union, **{CLASS_MASKS: mask})
    return out["image"], out[CLASS_MASKS]


def seed_transform(transform: A.Compose, seed: int, epoch: int, position: int) -> None:
    """Give `transform` one random stream drawn from (seed, epoch, position) alone.

    One numpy Generator and one random.Random shared by every child transform:
    albumentations' own `set_random_seed` (and `Compose(seed=...)`) gives each child a
    generator of the same seed, so that HorizontalFlip and VerticalFlip of equal p draw the
    same number and flip together every time (measured: 200 of 200 items)."""
    sequence = np.random.SeedSequence([seed, epoch, position])
    transform.set_random_state(np.random.default_rng(sequence),
                               random.Random(int(sequence.generate_state(1, np.uint64)[0])))


def interleave(planes: np.ndarray) -> np.ndarray:
    """(C, H, W) uint8 -> the same values as a contiguous (H, W, C) array: OpenCV's merge
    interleaves four 256x1600 planes in 0.05 ms, numpy's transposed copy in 6 ms."""
    return cv2.merge(list(planes))


def read(folder: Path, image_id: str, cache=None) -> np.ndarray:
    """(256, 1600, 3) uint8 RGB of image `image_id` of `folder`: its grey plane from the
    decoded-image cache (cache.py) made three channels again, when a cache is given; else
    decoded from the file. Both give the same bytes."""
    return read_image(folder / image_id) if cache is None else cache.rgb(image_id)


class SteelDataset(Dataset):
    """Item key -> (image (3, H, W) uint8, masks (4, H, W) uint8, index i).

    The key is an index i, or (epoch, position, i) from `EpochSampler`: the augmentation of
    the item is seeded from (seed, epoch, position) (an index alone: epoch 0, position i).
    `encoded` maps ImageId -> {ClassId: RLE} for the images that have defects. Without a
    transform the items are full size (256x1600), as validation needs. `cache`: the
    folder's decoded images (cache.ImageCache), read instead of decoding (same pixels).
    """

    def __init__(self, folder: str | Path, image_ids: list[str],
                 encoded: dict[str, dict[int, str]], transform: A.Compose | None = None,
                 seed: int = 0, cache=None):
        self.folder = Path(folder)
        self.image_ids = list(image_ids)
        self.encoded = encoded
        self.transform = transform
        self.seed = seed
        self.cache = cache

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, key):
        epoch, position, i = key if isinstance(key, tuple) else (0, key, key)
        image_id = self.image_ids[i]
        image = read(self.folder, image_id, self.cache)
        mask = masks(self.encoded.get(image_id, {}))
        if self.transform is not None:
            seed_transform(self.transform, self.seed, epoch, position)
            image, mask = augment(self.transform, image,
                                  interleave(mask))
            mask = mask.transpose(2, 0, 1)
        return (torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
                torch.from_numpy(np.ascontiguousarray(mask)), i)


class ImageDataset(Dataset):
    """Item i: (image (3, 256, 1600) uint8, i), decoded in a loader worker (or read from
    `cache`, a cache.ImageCache of the folder)."""

    def __init__(self, folder: str | Path, image_ids: list[str], cache=None):
        self.folder, self.image_ids, self.cache = Path(folder), list(image_ids), cache

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, i: int):
        image = read(self.folder, self.image_ids[i], self.cache)
        return torch.from_numpy(image.transpose(2, 0, 1).copy()), i


def has_defect(image_ids: list[str], encoded: dict[str, dict[int, str]]) -> np.ndarray:
    return np.array([bool(encoded.get(i)) for i in image_ids])


def balance_weights(defect: np.ndarray) -> np.ndarray:
    """Sampling weights that give defect and defect-free images the same total weight."""
    defect = np.asarray(defect, bool)
    weights = np.ones(len(defect))
    for group in (defect, ~defect):
        if group.any():
            weights[group] = 0.5 / group.sum()
    return weights / weights.sum()


class WeightedEpochSampler(Sampler):
    """DistributedSampler's contract (`set_epoch`, one shard per rank, the same number of
    batches on every rank) for weighted sampling: each epoch draws len(dataset) indices with
    replacement from seed + epoch, and rank r takes every world-th index from r."""

    def __init__(self, weights: np.ndarray, seed: int, rank: int = 0, world: int = 1):
        self.weights = np.asarray(weights, np.float64)
        self.n, self.seed, self.rank, self.world = len(self.weights), seed, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.choice(self.n, size=self.n, replace=True, p=self.weights)
        return order[self.rank::self.world][:len(self)]

    def __iter__(self):
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.n // self.world


class EpochSampler(Sampler):
    """Wraps a per-epoch sampler of rank `rank` of `world` and yields (epoch, position, index)
    keys, position being the sample's place in the epoch's global order (rank r takes every
    world-th from r, as both inner samplers do). The key seeds the item's augmentation."""

    def __init__(self, sampler, rank: int = 0, world: int = 1):
        self.sampler, self.rank, self.world, self.epoch = sampler, rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        for k, i in enumerate(self.sampler):
            yield self.epoch, self.rank + k * self.world, int(i)

    def __len__(self) -> int:
        return len(self.sampler)


def train_sampler(dataset, seed: int, rank: int = 0, world: int = 1,
                  weights: np.ndarray | None = None) -> EpochSampler:
    """torch's DistributedSampler (shuffled per epoch, cut to equal shards; also right for
    one process), or the weighted sampler when `weights` are given; keys from EpochSampler."""
    if weights is not None:
        return EpochSampler(WeightedEpochSampler(weights, seed, rank, world), rank, world)
    return EpochSampler(DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                           seed=seed, drop_last=True), rank, world)


def loader(dataset: SteelDataset, batch_size: int, num_workers: int, *, sampler=None,
           drop_last: bool = False, pin_memory: bool = False,
           persistent: bool = False) -> DataLoader:
    """A DataLoader; `persistent` keeps its workers between epochs (a loader iterated every
    epoch of a run), instead of forking them anew at every pass."""
    if num_workers:
        check_temp_dir()
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                      num_workers=num_workers, pin_memory=pin_memory, drop_last=drop_last,
                      persistent_workers=persistent and num_workers > 0)


def check_temp_dir() -> None:
    """Workers hand batches over through a Unix socket in TMPDIR/pymp-XXXXXXXX/; a path past
    the 107-byte limit fails in the worker's feeder thread and the loader waits forever."""
    folder = tempfile.gettempdir()
    longest = len(os.fsencode(os.path.join(folder, "pymp-12345678", "listener-12345678")))
    if longest > 107:
        raise InputError(f"TMPDIR {folder}: {len(folder)} characters is too long for the loader "
                         "workers' sockets (their paths must fit in 107 bytes); set TMPDIR to a "
                         "shorter folder, e.g. TMPDIR=/tmp, or use --workers 0")


def set_epoch(dl: DataLoader, epoch: int) -> None:
    """Start epoch `epoch` of a training loader: its shuffle and, through the sampler's keys,
    its augmentations are functions of (seed, epoch) alone, so a resumed run sees the same
    crops and flips as an uninterrupted one, whatever the number of workers."""
    dl.sampler.set_epoch(epoch)


@functools.cache
def _constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalisation's mean and std (1, 3, 1, 1) on `device`, made once per device: a
    `torch.tensor(..., device=cuda)` per call is a host-to-device copy on every batch."""
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
    return mean, torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255


def normalize(images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """(N, 3, H, W) uint8 on any device -> float32 ImageNet-normalised, same device."""
    mean, std = _constants(images.device)
    out = (images.float() - mean) / std
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out

