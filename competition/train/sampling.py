"""Per-epoch sampling of the training images: shuffled or weighted (defect and defect-free
images balanced, or the classes balanced), sharded over the DDP ranks, as (epoch, position,
index) keys that seed each item's augmentation (data/datasets.py), so the number of loader
workers changes nothing and a resumed run sees the batches an uninterrupted one would."""
from __future__ import annotations

import numpy as np
from torch.utils.data import DataLoader, DistributedSampler, Sampler


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


def rarest_class(image_ids: list[str], encoded: dict[str, dict[int, str]]) -> np.ndarray:
    """Per image, the class of its defects that has the fewest training images (0 for a
    defect-free image): the group class_balance_weights puts it in."""
    counts: dict[int, int] = {}
    for i in image_ids:
        for c in encoded.get(i, {}):
            counts[c] = counts.get(c, 0) + 1
    return np.array([min(encoded[i], key=lambda c: (counts[c], c)) if encoded.get(i) else 0
                     for i in image_ids])


def class_balance_weights(group: np.ndarray) -> np.ndarray:
    """Sampling weights that give each group (rarest_class: classes 1-4 and defect-free) the
    same total weight: an epoch draws about as many images with the rarest class 2 as with
    class 3. Why: a class with 1% of the images gets ~2 crops an epoch otherwise, too few
    updates for a network trained from scratch to leave the all-empty level (issue 26)."""
    group = np.asarray(group)
    weights = np.zeros(len(group))
    present = np.unique(group)
    for g in present:
        weights[group == g] = 1.0 / (len(present) * (group == g).sum())
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


def set_epoch(dl: DataLoader, epoch: int) -> None:
    """Start epoch `epoch` of a training loader: its shuffle and, through the sampler's keys,
    its augmentations are functions of (seed, epoch) alone, so a resumed run sees the same
    crops and flips as an uninterrupted one, whatever the number of workers."""
    dl.sampler.set_epoch(epoch)
