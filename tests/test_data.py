import dataclasses
import tempfile

import numpy as np
import pytest
import torch

from competition.data import datasets as data_lib
from competition.train import augment, sampling
from competition.data import rle
from competition.model.config import TrainConfig, build_config
from competition.data.images import read_image
from competition.data.labels import by_image, load_train


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
    transform = augment.train_transform(config)
    image, mask = stripes()
    for _ in range(20):
        out_image, out_mask = data_lib.augment(transform, image, mask)
        assert out_image.shape == (128, 256, 3) and out_mask.shape == (128, 256, 4)
        assert np.array_equal(out_image[..., 0] > 127, out_mask.any(-1))
        assert out_mask.any(), "defect_crop_p=1 must always crop on a defect"


def test_random_crops_miss_a_small_defect_that_defect_crops_always_hit():
    image, mask = stripes()
    mask[..., 2] = 0  # only the 20x30 class-1 box is left
    hits = {}
    for p in (0.0, 1.0):
        config = dataclasses.replace(TrainConfig(), crop_height=128, crop_width=256,
                                     defect_crop_p=p, seed=1)
        transform = augment.train_transform(config)
        hits[p] = np.mean([transform(image=image, mask=mask)["mask"].any() for _ in range(100)])
    # a random 256-wide window covers the box (x 200..229) with chance ~ (256+30)/1344 < 0.3
    assert hits[1.0] == 1.0 and hits[0.0] < 0.4


def two_defects():
    """A grey image with two defect regions of different classes: class 1 on rows 10..29,
    columns 200..229; class 3 on columns 1000..1099 (all rows)."""
    image, mask = stripes()
    image[:] = 100
    return image, mask


def blackout(p=1.0):
    """A transform that keeps the whole image in place and drops one region with chance p."""
    config = dataclasses.replace(TrainConfig(), crop_height=256, crop_width=1600,
                                 defect_crop_p=0.0, hflip_p=0.0, vflip_p=0.0,
                                 brightness_contrast_p=0.0, mask_dropout_p=p)
    return augment.train_transform(config)


def test_mask_dropout_blacks_out_one_defect_in_the_image_and_every_mask_channel():
    image, mask = two_defects()
    transform = blackout()
    dropped = []
    for position in range(12):
        data_lib.seed_transform(transform, 0, 0, position)
        out_image, out_mask = data_lib.augment(transform, image, mask)
        assert out_mask.shape == (256, 1600, 4) and out_mask.dtype == np.uint8
        labels = torch.from_numpy(out_mask.transpose(2, 0, 1)).amax(dim=(1, 2)).tolist()
        gone = [c for c in (0, 2) if not out_mask[..., c].any()]
        assert len(gone) == 1, "one region of the two is dropped, whole"
        (c,) = gone
        region = mask[..., c] == 1
        assert (out_image[region] == 0).all(), "the dropped defect is black in the image"
        assert (out_mask[region] == 0).all(), "and 0 in all four mask channels"
        assert (out_image[~region] == 100).all(), "nothing else changes"
        assert np.array_equal(out_mask[~region], mask[~region])
        assert labels == [c != 0, 0, c != 2, 0], "its class is no longer present"
        dropped.append(c)
    assert set(dropped) == {0, 2}, "either region can be dropped"


def test_mask_dropout_off_and_without_defects_changes_nothing():
    image, mask = two_defects()
    out_image, out_mask = data_lib.augment(blackout(0.0), image, mask)
    assert np.array_equal(out_image, image) and np.array_equal(out_mask, mask)
    empty = np.zeros_like(mask)
    out_image, out_mask = data_lib.augment(blackout(), image, empty)
    assert np.array_equal(out_image, image) and not out_mask.any()


def test_the_classifier_transform_crops_randomly_and_is_seeded_by_key(train_set):
    """demo_cpu_cls: plain random crops of the preset's size (no defect bias) with defect
    blackout; an item's augmentation still depends on (seed, epoch, position) alone."""
    folder, image_ids, encoded, _ = train_set
    config = build_config("demo_cpu_cls")
    transform = augment.train_transform(config)
    names = [type(t).__name__ for t in transform.transforms]
    assert names[0] == "RandomCrop" and names[-1] == "MaskDropout"
    dataset = data_lib.SteelDataset(folder, image_ids[:4], encoded, transform, config.seed)
    image, mask, _ = dataset[(0, 3, 2)]
    assert image.shape == (3, 128, 512) and mask.shape == (4, 128, 512)
    again = data_lib.SteelDataset(folder, image_ids[:4], encoded,
                                  augment.train_transform(config), config.seed)
    assert all(torch.equal(a, b) for a, b in zip(dataset[(0, 3, 2)][:2], again[(0, 3, 2)][:2]))
    assert not torch.equal(dataset[(1, 3, 2)][0], image), "another epoch, another crop"


def crop_means(dataset, keys):
    return [dataset[k][0][0].float().mean().item() for k in keys]


def test_an_items_augmentation_depends_on_seed_epoch_and_position_only(train_set):
    folder, image_ids, encoded, _ = train_set
    config = dataclasses.replace(TrainConfig(), crop_height=128, crop_width=256)

    def dataset(seed):
        return data_lib.SteelDataset(folder, image_ids[:1] * 6, encoded,
                                     augment.train_transform(config), seed)

    keys = [(0, p, p) for p in range(6)]
    first = crop_means(dataset(5), keys)
    assert len(set(first)) > 1, "one image, six positions, different crops"
    assert crop_means(dataset(5), keys[::-1]) == first[::-1], "order of requests is irrelevant"
    assert crop_means(dataset(6), keys) != first
    assert crop_means(dataset(5), [(1, p, p) for p in range(6)]) != first, "epoch matters"


def test_flips_are_drawn_independently():
    """albumentations' set_random_seed gives HorizontalFlip and VerticalFlip generators of
    the same seed: with equal p they flipped together on every item (200 of 200)."""
    config = dataclasses.replace(TrainConfig(), crop_height=256, crop_width=1600,
                                 brightness_contrast_p=0.0, defect_crop_p=0.0)
    transform = augment.train_transform(config)
    image = np.zeros((256, 1600, 3), np.uint8)
    image[0, 0] = 255  # top left: where it lands tells which flips were applied
    seen = set()
    for position in range(64):
        data_lib.seed_transform(transform, 0, 0, position)
        out = transform(image=image, mask=np.zeros((256, 1600, 4), np.uint8))["image"]
        row, col = np.argwhere(out[..., 0] == 255)[0]
        seen.add((bool(row), bool(col)))  # (vflip, hflip)
    assert seen == {(False, False), (False, True), (True, False), (True, True)}


def loader_batches(dataset, epoch, workers, batch_size=2):
    dl = data_lib.loader(dataset, batch_size=batch_size, num_workers=workers,
                         sampler=sampling.train_sampler(dataset, seed=0), drop_last=True,
                         persistent=True)
    sampling.set_epoch(dl, epoch)
    return [(images, masks, index) for images, masks, index in dl]


def test_the_number_of_workers_changes_no_batch(train_set):
    """Each item is augmented from (seed, epoch, position) in whichever process decodes it:
    0, 1 or 2 workers give bit-identical batches (the same code on the same inputs)."""
    folder, image_ids, encoded, _ = train_set
    config = dataclasses.replace(TrainConfig(), crop_height=128, crop_width=256,
                                 defect_crop_p=0.5, brightness_contrast_p=0.5)
    dataset = data_lib.SteelDataset(folder, image_ids[:8], encoded,
                                    augment.train_transform(config))
    runs = {w: loader_batches(dataset, 1, w) for w in (0, 1, 2)}
    for w in (1, 2):
        for (a, am, ai), (b, bm, bi) in zip(runs[0], runs[w]):
            assert torch.equal(ai, bi) and torch.equal(a, b) and torch.equal(am, bm)
    assert not all(torch.equal(a[0], b[0]) for (a, _, _), (b, _, _) in
                   zip(runs[0], loader_batches(dataset, 2, 0))), "a new epoch, new batches"


def test_workers_do_not_repeat_each_others_augmentations(train_set):
    """albumentations 2.0.8 would give every worker the same random stream: the same image
    at positions handled by different workers would get the same crop."""
    folder, image_ids, encoded, _ = train_set
    config = dataclasses.replace(TrainConfig(), crop_height=128, crop_width=256,
                                 defect_crop_p=0.0)
    dataset = data_lib.SteelDataset(folder, image_ids[:1] * 8, encoded,
                                    augment.train_transform(config))
    epoch0 = [images[0, 0].float().mean().item()
              for images, _, _ in loader_batches(dataset, 0, 2, batch_size=1)]
    assert len(set(epoch0)) == 8


@pytest.mark.parametrize("weighted", [False, True])
def test_train_sampler_shards_and_reshuffles_per_epoch(weighted):
    n = 10
    weights = np.full(n, 1 / n) if weighted else None

    def sampler(rank=0, world=1):
        keyed = sampling.train_sampler(range(n), 3, rank, world, weights)
        positions = [p for _, p, _ in keyed]
        assert positions == [rank + k * world for k in range(len(keyed))]
        return keyed.sampler

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
    weights = sampling.balance_weights(np.array([1, 1, 1, 0], bool))
    # three defect images share one half, the defect-free one has the other half
    assert np.allclose(weights, [1 / 6, 1 / 6, 1 / 6, 1 / 2])
    sampler = sampling.WeightedEpochSampler(weights, seed=0)
    draws = np.concatenate([sampler.set_epoch(e) or sampler.indices() for e in range(500)])
    assert abs(np.mean(draws == 3) - 0.5) < 0.05
    sampler.set_epoch(0)
    for rank in range(2):
        shard = sampling.WeightedEpochSampler(weights, 0, rank, 2).indices()
        assert np.array_equal(shard, sampler.indices()[rank::2])


def test_class_balance_weights_by_hand():
    # a: classes 3 and 1 (class 1 has 2 images, class 3 has 3: rarest 1); b: class 3; c: 3 and
    # 4 (4 has 1 image: rarest 4); d: class 1 alone; e, f: defect-free
    encoded = {"a": {3: "x", 1: "x"}, "b": {3: "x"}, "c": {3: "x", 4: "x"}, "d": {1: "x"}}
    ids = ["a", "b", "c", "d", "e", "f"]
    group = sampling.rarest_class(ids, encoded)
    assert group.tolist() == [1, 3, 4, 1, 0, 0]
    # four groups present (1, 3, 4, none), a quarter each, shared within a group
    weights = sampling.class_balance_weights(group)
    assert np.allclose(weights, [1 / 8, 1 / 4, 1 / 4, 1 / 8, 1 / 8, 1 / 8])
    # a tie in counts goes to the lower class number
    assert sampling.rarest_class(["a"], {"a": {2: "x", 4: "x"}}).tolist() == [2]


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
    # the constants are made once per device, not copied to it on every batch
    assert data_lib._constants(images.device)[0] is data_lib._constants(images.device)[0]


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
