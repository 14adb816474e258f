"""Pseudo-labels in training: a pseudo-labelled dataset read from disk, mixed into every batch.

`train --pseudo OUT --pseudo-share S`: OUT is a dataset in the Kaggle layout written by
`python -m competition pseudo` (infer/pseudo.py). Every training batch of B holds
k = pseudo_per_batch(B, S) pseudo-labelled images and B - k of the fold's training images
(MixedSampler); an epoch is still one pass over the fold's training images. Validation, the
folds and the OOF statistics read the original dataset alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset, Sampler

from competition.errors import InputError
from competition.data.labels import by_image, load_train


@dataclass(frozen=True)
class PseudoSet:
    """A pseudo-labelled dataset read for training: its folder, ImageIds and masks."""
    folder: Path
    image_ids: list
    encoded: dict


def load(folder: str | Path, train_ids: list[str], data: Path) -> PseudoSet:
    """Read a pseudo-labelled dataset (load_train: train.csv of either layout, every image
    present and 1600x256). Its ImageIds must differ from every image of `data` (train and
    validation: `train_ids` is all of DATA/train_images), so that no pseudo-labelled image
    can be mistaken for one of the folds. Errors are one line starting with --pseudo."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--pseudo {folder}: no such folder (make it with `python -m "
                         "competition pseudo`)")
    try:
        image_ids, labels = load_train(folder)
    except InputError as e:
        raise InputError(f"--pseudo: {e}") from None
    both = sorted(set(image_ids) & set(train_ids))
    if both:
        raise InputError(f"--pseudo: {folder / 'train_images' / both[0]}: the same ImageId is "
                         f"an image of {data / 'train_images'} ({len(both)} such); "
                         "pseudo-labelled images must have names of their own")
    return PseudoSet(folder, image_ids, by_image(labels))


class Concat(Dataset):
    """Datasets of (image, masks, i) items one after the other: item i of the whole is item
    i - offset of its part, returned with i. Keys may be (epoch, position, i), as
    data.SteelDataset takes them: the augmentation is seeded from (epoch, position) alone,
    whichever part the image comes from."""

    def __init__(self, parts: list):
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, key):
        epoch, position, i = key if isinstance(key, tuple) else (0, key, key)
        part = int(np.searchsorted(self.offsets, i, side="right")) - 1
        image, masks, _ = self.parts[part][(epoch, position, i - int(self.offsets[part]))]
        return image, masks, i


class MixedSampler(Sampler):
    """Keys (epoch, position, index) for a Concat of [labelled, pseudo-labelled] whose every
    run of `batch_size` keys (a batch of a DataLoader with drop_last) holds batch_size - k
    labelled items, in the order `base` gives them (a per-epoch sampler of this rank's
    shard: data.train_sampler's DistributedSampler or WeightedEpochSampler), then k
    pseudo-labelled ones (indices offset + j).

    An epoch is one pass of `base`: len(base) // (batch_size - k) batches. The pseudo-labelled
    items are drawn in one global order per epoch, from (seed, epoch) alone: random
    permutations of the set, one after the other, as long as all ranks need; rank r takes
    every world-th from r, so ranks draw disjoint items as long as the set is larger than
    what an epoch uses (else it is cycled: an image comes back only after the whole set).
    Positions are global too (rank + j * world): every item of an epoch has its own."""

    def __init__(self, base, n_pseudo: int, offset: int, batch_size: int, k: int, seed: int,
                 rank: int = 0, world: int = 1):
        if not 1 <= k < batch_size or n_pseudo < 1:
            raise ValueError(f"k {k} of batch_size {batch_size}, {n_pseudo} pseudo items")
        self.base, self.n_pseudo, self.offset = base, n_pseudo, offset
        self.batch_size, self.k, self.seed = batch_size, k, seed
        self.rank, self.world, self.epoch = rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.base.set_epoch(epoch)

    def batches(self) -> int:
        return len(self.base) // (self.batch_size - self.k)

    def pseudo_order(self, per_rank: int) -> np.ndarray:
        """This rank's `per_rank` pseudo-labelled indices (0-based in the pseudo set)."""
        rng = np.random.default_rng([self.seed, self.epoch, 1])  # [seed, epoch]: the base's
        total = per_rank * self.world
        if total == 0:
            return np.zeros(0, np.int64)
        cycles = -(-total // self.n_pseudo)
        order = np.concatenate([rng.permutation(self.n_pseudo) for _ in range(cycles)])
        return order[:total][self.rank::self.world]

    def __iter__(self):
        m, k = self.batch_size - self.k, self.k
        n = self.batches()
        labelled = list(self.base)[:n * m]
        pseudo = self.pseudo_order(n * k) + self.offset
        j = 0
        for b in range(n):
            for i in [*labelled[b * m:(b + 1) * m], *pseudo[b * k:(b + 1) * k]]:
                yield self.epoch, self.rank + j * self.world, int(i)
                j += 1

    def __len__(self) -> int:
        return self.batches() * self.batch_size


def mix(train_set, base_sampler, pseudo: PseudoSet, transform, config, rank: int = 0,
        world: int = 1) -> tuple[Concat, MixedSampler]:
    """The training set and sampler with `pseudo` mixed in: Concat([train_set, pseudo's
    images with `transform`]) and a MixedSampler of config.batch_size holding
    config.pseudo_per_batch pseudo-labelled images per batch."""
    from competition.model.config import pseudo_per_batch
    from competition.data.datasets import SteelDataset

    extra = SteelDataset(pseudo.folder / "train_images", pseudo.image_ids, pseudo.encoded,
                         transform, config.seed)
    k = pseudo_per_batch(config.batch_size, config.pseudo_share)
    sampler = MixedSampler(base_sampler, len(extra), len(train_set), config.batch_size, k,
                           config.seed, rank, world)
    return Concat([train_set, extra]), sampler
