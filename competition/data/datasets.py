"""Images as datasets: labelled (images and their four masks) and unlabelled, loaders, and
the normalisation the networks see. The training augmentation (train/augment.py) and the
per-epoch sampling (train/sampling.py) build on them.

Workers return uint8 tensors (a quarter of the bytes of float32 through the pinned-memory
queue); `normalize` turns them into ImageNet-normalised floats on the device.

A training sample's augmentation is a function of (seed, epoch, position in the epoch)
alone: the sampler hands the loader (epoch, position, index) keys and the dataset seeds the
transform from them. So the number of loader workers changes nothing, a resumed run sees
the augmentations an uninterrupted one would, and the workers can live for the whole run.
The loaders draw their workers' seeds from generators of their own (`loader`), so starting
one leaves the global generator, and the dropout it drives, where a resumed run finds it.
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
from torch.utils.data import DataLoader, Dataset

from competition.errors import InputError
from competition.data.images import read_image
from competition.data.labels import masks

if TYPE_CHECKING:  # imported where used: inference (and the Kaggle kernel) never loads it
    import albumentations as A

MEAN = (0.485, 0.456, 0.406)  # ImageNet, what the encoders were trained with
STD = (0.229, 0.224, 0.225)


CLASS_MASKS = "class_masks"  # the extra target of a train_transform: the (H, W, 4) masks


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


def loader(dataset: SteelDataset, batch_size: int, num_workers: int, *, sampler=None,
           drop_last: bool = False, pin_memory: bool = False,
           persistent: bool = False, seed: int = 0) -> DataLoader:
    """A DataLoader; `persistent` keeps its workers between epochs (a loader iterated every
    epoch of a run), instead of forking them anew at every pass.

    Each iterator that starts draws its workers' base seed; from torch's global generator
    that draw would move the main process's random stream (dropout), and persistent workers
    start once, in a run's first epoch: a resumed run drew it in its first epoch, an
    uninterrupted one before (a weight differed by 1.8 after two epochs with one worker). The
    loader's own generator, seeded from `seed`, draws it instead and leaves the global one
    alone. The items' randomness does not depend on it: SteelDataset seeds each item's."""
    if num_workers:
        check_temp_dir()
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                      num_workers=num_workers, pin_memory=pin_memory, drop_last=drop_last,
                      persistent_workers=persistent and num_workers > 0,
                      generator=torch.Generator().manual_seed(seed))


def release(*loaders: DataLoader) -> None:
    """End the persistent workers of `loaders` now, when their run is done. A run's frames
    can end up in a reference cycle (an exception caught during a lazy import), and left to
    the garbage collector each worker ran into the 5 s join timeout before it was killed
    (measured under pytest: 10.6 s for a run's two workers), likely because the collector
    closed the queues' feeder threads before the iterator's __del__ sent the stop signal."""
    for dl in loaders:
        dl._iterator = None  # the last reference: __del__ stops the workers in order


def check_temp_dir() -> None:
    """Workers hand batches over through a Unix socket in TMPDIR/pymp-XXXXXXXX/; a path past
    the 107-byte limit fails in the worker's feeder thread and the loader waits forever."""
    folder = tempfile.gettempdir()
    longest = len(os.fsencode(os.path.join(folder, "pymp-12345678", "listener-12345678")))
    if longest > 107:
        raise InputError(f"TMPDIR {folder}: {len(folder)} characters is too long for the loader "
                         "workers' sockets (their paths must fit in 107 bytes); set TMPDIR to a "
                         "shorter folder, e.g. TMPDIR=/tmp, or use --workers 0")


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

