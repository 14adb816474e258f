"""Training data: images and their four masks, albumentations transforms, per-epoch sampling.

Workers return uint8 tensors (a quarter of the bytes of float32 through the pinned-memory
queue); `normalize` turns them into ImageNet-normalised floats on the device.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from competition.errors import InputError
from competition.images import read_image
from competition.labels import masks

if TYPE_CHECKING:  # imported where used: inference (and the Kaggle kernel) never loads it
    import albumentations as A

MEAN = (0.485, 0.456, 0.406)  # ImageNet, what the encoders were trained with
STD = (0.229, 0.224, 0.225)


def train_transform(config) -> A.Compose:
    """Crop (biased to defects), flips, brightness/contrast. Image (H, W, 3), mask (H, W, 4)."""
    import albumentations as A

    h, w, p = config.crop_height, config.crop_width, config.defect_crop_p
    crop = A.OneOf([A.CropNonEmptyMaskIfExists(h, w, p=p), A.RandomCrop(h, w, p=1.0 - p)], p=1.0)
    if p in (0.0, 1.0):  # OneOf would drop a child of probability 0
        crop = A.CropNonEmptyMaskIfExists(h, w) if p == 1.0 else A.RandomCrop(h, w)
    return A.Compose([
        crop,
        A.HorizontalFlip(p=config.hflip_p),
        A.VerticalFlip(p=config.vflip_p),
        A.RandomBrightnessContrast(0.15, 0.15, p=config.brightness_contrast_p),
    ], seed=config.seed)


class SteelDataset(Dataset):
    """Item i: (image (3, H, W) uint8, masks (4, H, W) uint8, index i).

    `encoded` maps ImageId -> {ClassId: RLE} for the images that have defects. Without a
    transform the items are full size (256x1600), as validation needs.
    """

    def __init__(self, folder: str | Path, image_ids: list[str],
                 encoded: dict[str, dict[int, str]], transform: A.Compose | None = None):
        self.folder = Path(folder)
        self.image_ids = list(image_ids)
        self.encoded = encoded
        self.transform = transform

    def __len__(self) -> int:
        return len(self.image_ids)

    def reseed(self, seed: int) -> None:
        """Seed the augmentations (each worker and each epoch gets its own stream)."""
        if self.transform is not None:
            self.transform.set_random_seed(seed % 2**32)

    def __getitem__(self, i: int):
        image_id = self.image_ids[i]
        image = read_image(self.folder / image_id)
        mask = masks(self.encoded.get(image_id, {}))
        if self.transform is not None:
            out = self.transform(image=image, mask=np.ascontiguousarray(mask.transpose(1, 2, 0)))
            image, mask = out["image"], out["mask"].transpose(2, 0, 1)
        return (torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
                torch.from_numpy(np.ascontiguousarray(mask)), i)


class ImageDataset(Dataset):
    """Item i: (image (3, 256, 1600) uint8, i), decoded in a loader worker."""

    def __init__(self, folder: str | Path, image_ids: list[str]):
        self.folder, self.image_ids = Path(folder), list(image_ids)

    def __len__(self) -> int:
        return len(self.image_ids)

    def reseed(self, seed: int) -> None:  # the loader's worker init calls it; nothing random
        pass

    def __getitem__(self, i: int):
        image = read_image(self.folder / self.image_ids[i])
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


def train_sampler(dataset, seed: int, rank: int = 0, world: int = 1,
                  weights: np.ndarray | None = None) -> Sampler:
    """torch's DistributedSampler (shuffled per epoch, cut to equal shards; also right for
    one process), or the weighted sampler when `weights` are given."""
    if weights is not None:
        return WeightedEpochSampler(weights, seed, rank, world)
    return DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed,
                              drop_last=True)


def _worker_init(worker_id: int) -> None:
    """albumentations 2.x copies one RNG state into every worker: reseed each from torch's
    per-worker seed (which the loader draws afresh from its generator every epoch)."""
    info = torch.utils.data.get_worker_info()
    info.dataset.reseed(torch.initial_seed())


def loader(dataset: SteelDataset, batch_size: int, num_workers: int, *, sampler=None,
           drop_last: bool = False, pin_memory: bool = False) -> DataLoader:
    """A DataLoader whose workers reseed their augmentations; `reseed_loader` per epoch."""
    if num_workers:
        check_temp_dir()
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                      num_workers=num_workers, pin_memory=pin_memory, drop_last=drop_last,
                      worker_init_fn=_worker_init if num_workers else None,
                      generator=torch.Generator())


def check_temp_dir() -> None:
    """Workers hand batches over through a Unix socket in TMPDIR/pymp-XXXXXXXX/; a path past
    the 107-byte limit fails in the worker's feeder thread and the loader waits forever."""
    folder = tempfile.gettempdir()
    longest = len(os.fsencode(os.path.join(folder, "pymp-12345678", "listener-12345678")))
    if longest > 107:
        raise InputError(f"TMPDIR {folder}: {len(folder)} characters is too long for the loader "
                         "workers' sockets (their paths must fit in 107 bytes); set TMPDIR to a "
                         "shorter folder, e.g. TMPDIR=/tmp, or use --workers 0")


def reseed_loader(dl: DataLoader, seed: int, epoch: int, rank: int = 0) -> None:
    """Make the epoch's augmentations a function of (seed, epoch, rank) alone, so that a
    resumed run sees the same crops and flips as an uninterrupted one."""
    epoch_seed = (seed * 1_000_003 + epoch * 1009 + rank) % 2**62
    dl.generator.manual_seed(epoch_seed)
    if dl.num_workers == 0:
        dl.dataset.reseed(epoch_seed)
    if hasattr(dl.sampler, "set_epoch"):
        dl.sampler.set_epoch(epoch)


def normalize(images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """(N, 3, H, W) uint8 on any device -> float32 ImageNet-normalised, same device."""
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1) * 255
    out = (images.float() - mean) / std
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out

