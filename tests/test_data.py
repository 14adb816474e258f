import dataclasses
import tempfile

import numpy as np
import pytest
import torch

from competition import data as data_lib, rle
from competition.config import TrainConfig
from competition.images import read_image
from competition.labels import by_image, load_train


@pytest.fixture(scope="module")
def train_set(synthetic):
    image_ids, labels = load_train(synthetic)
    return synthetic / "train_images", image_ids, by_image(labels), labels


def test_full_size_item_is_the_image_and_its_decoded_masks(train_set):
    folder, image_ids, encoded, labels = train_set
    image_id = labels.ImageId.iloc[0]
    i = image_ids.index(image_id)
    image, mask, index = data_lib.SteelDataset(folder, image_ids, encoded)[i]
    assert index == i and image.dtype == torch.uint8 and mask.dtype == torch.uint8
    assert image.shape == (3, 256, 1600) and mask.shape == (4, 256, 1600)
    assert np.array_equal(image.numpy(), read_image(folder / image_id).transpose(2, 0, 1))
    for _, row in labels[labels.ImageId == image_id].iterrows():
        assert np.array_equal(mask[row.ClassId - 1].numpy(), rle.decode(row.EncodedPixels))
    absent = set(range(1, 5)) - set(labels[labels.ImageId == image_id].ClassId)
    assert all(mask[c - 1].sum() == 0 for c in absent)


def stripes():
    """A mask with class 3 on columns 1000..1099 and an image whose red channel is the mask:
    any transform that moves the image and the mask differently shows up."""
    mask = np.zeros((256, 1600, 4), np.uint8)
    mask[:, 1000:1100, 2] = 1
    mask[10:30, 200:230, 0] = 1
    image = np.zeros((256, 1600, 3), np.uint8)
    image[..., 0] = mask.any(-1) * 255
    return image, mask


def test_train_transform_crops_flips_and_keeps_image_and_mask_aligned():
    config = dataclasses.replace(TrainConfig(), crop_height=128, crop_width=256,
                                 hflip_p=0.5, vflip_p=0.5, brightness_contrast_p=0.0,
                                 defect_crop_p=1.0)
    transform = data_lib.train_transform(config)
    image, mask = stripes()
    for _ in range(20):
        out = transform(image=image, mask=mask)
        assert out["image"].shape == (128, 256, 3) and out["mask"].shape == (128, 256, 4)
        assert np.array_equal(out["image"][..., 0] > 127, out["mask"].any(-1))
        assert out["mask"].any(), "defect_crop_p=1 must always crop on a defect"


def test_random_crops_miss_a_small_defect_that_defect_crops_always_hit():
    image, mask = stripes()
    mask[..., 2] = 0  # only the 20x30 class-1 box is left
    hits = {}
    for p in (0.0, 1.0):
        config = dataclasses.replace(TrainConfig(), crop_height=128, crop_width=256,
                                     defect_crop_p=p, seed=1)
        transform = data_lib.train_transform(config)
        hits[p] = np.mean([transform(image=image, mask=mask)["mask"].any() for _ in range(100)])
    # a random 256-wide window covers the box (x 200..229) with chance ~ (256+30)/1344 < 0.3
    assert hits[1.0] == 1.0 and hits[0.0] < 0.4


def crops(dataset, indices):
    return [dataset[i][0][0].float().mean().item() for i in indices]


def test_reseed_makes_augmentations_repeatable(train_set):
    folder, image_ids, encoded, _ = train_set
    config = dataclasses.replace(TrainConfig(), crop_height=128, crop_width=256)
    dataset = data_lib.SteelDataset(folder, image_ids[:1] * 6, encoded,
                                    data_lib.train_transform(config))
    dataset.reseed(5)
    first = crops(dataset, range(6))
    dataset.reseed(5)
    assert crops(dataset, range(6)) == first
    dataset.reseed(6)
    assert crops(dataset, range(6)) != first
    assert len(set(first)) > 1, "one image, six different crops"


def loader_crops(dataset, epoch, workers):
    dl = data_lib.loader(dataset, batch_size=1, num_workers=workers,
                         sampler=data_lib.train_sampler(dataset, seed=0))
    data_lib.reseed_loader(dl, seed=0, epoch=epoch)
    return {int(i): img[0, 0].float().mean().item() for img, _, i in dl}


def test_workers_do_not_repeat_each_others_augmentations(train_set):
    """albumentations 2.0.8 would give every worker the same random stream: the same image
    at positions handled by different workers would get the same crop."""
    folder, image_ids, encoded, _ = train_set
    config = dataclasses.replace(TrainConfig(), crop_height=128, crop_width=256,
                                 defect_crop_p=0.0)
    dataset = data_lib.SteelDataset(folder, image_ids[:1] * 8, encoded,
                                    data_lib.train_transform(config))
    epoch0 = loader_crops(dataset, 0, workers=2)
    assert len(set(epoch0.values())) == 8
    assert loader_crops(dataset, 0, workers=2) == epoch0, "same epoch, same augmentations"
    assert loader_crops(dataset, 1, workers=2) != epoch0, "next epoch, new augmentations"


@pytest.mark.parametrize("weighted", [False, True])
def test_train_sampler_shards_and_reshuffles_per_epoch(weighted):
    n = 10
    weights = np.full(n, 1 / n) if weighted else None

    def sampler(rank=0, world=1):
        return data_lib.train_sampler(range(n), 3, rank, world, weights)

    full = sampler()
    order0 = list(full)
    assert len(order0) == n and (weighted or sorted(order0) == list(range(n)))
    full.set_epoch(1)
    assert list(full) != order0
    full.set_epoch(0)
    assert list(full) == order0
    shards = [sampler(r, 3) for r in range(3)]
    assert all(len(s) == len(list(s)) == 3 for s in shards)  # 10 // 3 on every rank
    if not weighted:
        assert len(set(sum(map(list, shards), []))) == 9, "ranks see disjoint images"


def test_balance_weights_by_hand():
    weights = data_lib.balance_weights(np.array([1, 1, 1, 0], bool))
    # three defect images share one half, the defect-free one has the other half
    assert np.allclose(weights, [1 / 6, 1 / 6, 1 / 6, 1 / 2])
    sampler = data_lib.WeightedEpochSampler(weights, seed=0)
    draws = np.concatenate([sampler.set_epoch(e) or sampler.indices() for e in range(500)])
    assert abs(np.mean(draws == 3) - 0.5) < 0.05
    sampler.set_epoch(0)
    for rank in range(2):
        shard = data_lib.WeightedEpochSampler(weights, 0, rank, 2).indices()
        assert np.array_equal(shard, sampler.indices()[rank::2])


def test_normalize_by_hand():
    images = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    out = data_lib.normalize(images)
    assert out.dtype == torch.float32
    for c in range(3):
        lo = (0 - data_lib.MEAN[c]) / data_lib.STD[c]
        hi = (1 - data_lib.MEAN[c]) / data_lib.STD[c]
        assert out[0, c, 0].tolist() == pytest.approx([lo, hi], rel=1e-6)
    assert data_lib.normalize(images, channels_last=True).is_contiguous(
        memory_format=torch.channels_last)


def test_a_temp_dir_too_long_for_the_worker_sockets_is_one_clear_error(monkeypatch, tmp_path):
    """With TMPDIR past 75 characters the workers' Unix sockets cannot bind and the loader
    would wait forever (seen in a rehearsal); the limit is the 107 bytes of sun_path."""
    from competition.errors import InputError

    dataset = list(range(4))
    fits = "/" + "a" * 74  # 75 + len("/pymp-12345678/listener-12345678") = 107
    monkeypatch.setattr(tempfile, "tempdir", fits)
    data_lib.check_temp_dir()
    monkeypatch.setattr(tempfile, "tempdir", fits + "b")
    with pytest.raises(InputError, match=r"TMPDIR /a+b: 76 characters is too long"):
        data_lib.loader(dataset, 2, num_workers=2)
    assert len(list(data_lib.loader(dataset, 2, num_workers=0))) == 2  # no workers, no sockets
