import math

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from competition.losses import (DiceBCELoss, PresenceLoss, SegmentLoss, presence,
                                presence_bce, soft_dice_loss)

LN3 = math.log(3.0)  # sigmoid(ln 3) = 3/4, sigmoid(-ln 3) = 1/4
ONE_PIXEL = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])  # (1, 1, 2, 2), truth = top-left pixel


def random_batch(seed=0, shape=(2, 4, 8, 8)):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator) * 3
    targets = (torch.rand(shape, generator=generator) < 0.3).to(torch.uint8)
    return logits, targets


def test_soft_dice_by_hand():
    # logits 0 -> p = 0.5 on 4 pixels: sum(p*t) = 0.5, sum(p) = 2, sum(t) = 1
    # 1 - (2 * 0.5 + 1) / (2 + 1 + 1) = 0.5
    loss = soft_dice_loss(torch.zeros(1, 1, 2, 2), ONE_PIXEL)
    assert loss.shape == (1, 1) and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(0.5)
    # p = 3/4 on the true pixel, 1/4 on the three others, smooth 0:
    # sum(p*t) = 0.75, sum(p) = 1.5, sum(t) = 1 -> 1 - 1.5 / 2.5 = 0.4
    logits = torch.tensor([[[[LN3, -LN3], [-LN3, -LN3]]]])
    assert soft_dice_loss(logits, ONE_PIXEL, smooth=0.0).item() == pytest.approx(0.4)


def test_soft_dice_is_per_image_and_class():
    # image 0 is the example above (0.5); image 1 has empty truth, p = 0.5:
    # sum(p) = 2 -> 2 / (2 + 1) = 2/3
    targets = torch.cat([ONE_PIXEL, torch.zeros(1, 1, 2, 2)])
    loss = soft_dice_loss(torch.zeros(2, 1, 2, 2), targets)
    assert loss.shape == (2, 1)
    assert loss[:, 0].tolist() == pytest.approx([0.5, 2 / 3])


def test_dice_bce_by_hand():
    # dice 0.5 (above); BCE at p = 0.5 is ln 2 on every pixel whatever the target
    logits = torch.zeros(1, 1, 2, 2)
    assert DiceBCELoss()(logits, ONE_PIXEL).item() == pytest.approx(0.5 + math.log(2))
    assert DiceBCELoss(dice_weight=0.0)(logits, ONE_PIXEL).item() == pytest.approx(math.log(2))
    assert DiceBCELoss(bce_weight=0.0)(logits, ONE_PIXEL).item() == pytest.approx(0.5)
    assert DiceBCELoss(dice_weight=2.0, bce_weight=3.0)(logits, ONE_PIXEL).item() == \
        pytest.approx(2 * 0.5 + 3 * math.log(2))
    # p = 3/4 on the true pixel and 1/4 elsewhere: every pixel is right with probability 3/4,
    # BCE = -ln(3/4) = ln(4/3) per pixel
    logits = torch.tensor([[[[LN3, -LN3], [-LN3, -LN3]]]])
    assert DiceBCELoss(dice_weight=0.0)(logits, ONE_PIXEL).item() == pytest.approx(math.log(4 / 3))


def test_empty_truth_channel_penalises_predicted_pixels():
    empty = torch.zeros(1, 1, 2, 2)
    everywhere = torch.full((1, 1, 2, 2), LN3)                   # p = 3/4 on 4 pixels
    one = torch.tensor([[[[LN3, -30.0], [-30.0, -30.0]]]])        # p = 3/4 on 1 pixel, ~0 else
    # sum(p) / (sum(p) + 1): 3 / 4 and 0.75 / 1.75 = 3 / 7
    assert soft_dice_loss(everywhere, empty).item() == pytest.approx(3 / 4)
    assert soft_dice_loss(one, empty).item() == pytest.approx(3 / 7)
    nothing = torch.full((1, 1, 2, 2), -30.0)
    assert soft_dice_loss(nothing, empty).item() == pytest.approx(0.0, abs=1e-9)

    # smp zeroes any channel with empty truth: predicting defects there costs nothing
    smp_dice = smp.losses.DiceLoss(mode="multilabel")
    assert smp_dice(everywhere, empty).item() == pytest.approx(0.0, abs=1e-6)
    assert smp_dice(one, empty).item() == pytest.approx(0.0, abs=1e-6)

    # two channels, the first the hand example, the second empty with p = 3/4 everywhere:
    # ours averages (0.5, 3/4) = 0.625; smp (smooth 0) averages (1 - 2*0.5 / 3, 0) = 1/3
    logits = torch.cat([torch.zeros(1, 1, 2, 2), everywhere], dim=1)
    targets = torch.cat([ONE_PIXEL, empty], dim=1)
    assert soft_dice_loss(logits, targets).mean().item() == pytest.approx(0.625)
    assert smp_dice(logits, targets).item() == pytest.approx(1 / 3)


def test_perfect_confident_prediction_costs_nothing():
    _, targets = random_batch()
    targets[0, 1] = 0  # an empty channel, predicted empty
    logits = 20.0 * (2.0 * targets.float() - 1.0)
    assert soft_dice_loss(logits, targets).max().item() < 1e-6
    assert DiceBCELoss()(logits, targets).item() < 1e-6


def test_pos_weight_by_hand():
    # weight 3 on the one positive pixel: (3 ln 2 + 3 * ln 2) / 4 pixels = 1.5 ln 2
    loss = DiceBCELoss(dice_weight=0.0, pos_weight=[3.0])(torch.zeros(1, 1, 2, 2), ONE_PIXEL)
    assert loss.item() == pytest.approx(1.5 * math.log(2))


def test_pos_weight_is_per_class():
    logits, targets = random_batch()
    weights = [1.0, 2.0, 5.0, 0.5]
    loss = DiceBCELoss(dice_weight=0.0, pos_weight=weights)(logits, targets)
    full = torch.tensor(weights)[:, None, None].expand_as(logits)  # (N, C, H, W), explicit
    assert loss.item() == pytest.approx(
        F.binary_cross_entropy_with_logits(logits, targets.float(), pos_weight=full).item())
    p, t, w = torch.sigmoid(logits), targets.float(), full
    by_hand = -(w * t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert loss.item() != pytest.approx(DiceBCELoss(dice_weight=0.0)(logits, targets).item())


def test_pos_weight_is_a_buffer_of_the_right_length():
    loss = DiceBCELoss(pos_weight=[1.0, 2.0, 3.0, 4.0])
    assert dict(loss.named_buffers())["pos_weight"].shape == (4, 1, 1)
    assert "pos_weight" in loss.state_dict()
    logits, targets = random_batch(shape=(1, 3, 4, 4))
    with pytest.raises(ValueError, match="pos_weight"):
        loss(logits, targets)


def test_bf16_logits_match_float32_and_give_float32():
    logits, targets = random_batch()
    loss = DiceBCELoss(pos_weight=[1.0, 2.0, 3.0, 4.0])
    half = logits.bfloat16()
    value = loss(half, targets)
    assert value.dtype == torch.float32
    assert value.item() == loss(half.float(), targets).item()  # the cast is the only change
    assert value.item() == pytest.approx(loss(logits, targets).item(), rel=1e-2)
    assert loss(logits, targets).item() == pytest.approx(loss(logits, targets.float()).item())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert loss(half, targets).dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradient_flows(dtype):
    logits, targets = random_batch()
    logits = logits.to(dtype).requires_grad_()
    DiceBCELoss(pos_weight=[1.0, 2.0, 3.0, 4.0])(logits, targets).backward()
    assert logits.grad.dtype == dtype
    assert torch.isfinite(logits.grad.float()).all() and logits.grad.abs().sum() > 0


# --- image-level: "class present in the image" --------------------------------------------

def two_images():
    """(2, 4, 2, 2) masks: image 0 has one pixel of class 1 and all of class 3, image 1 one
    pixel of class 4: presence [[1, 0, 1, 0], [0, 0, 0, 1]]."""
    masks = torch.zeros(2, 4, 2, 2, dtype=torch.uint8)
    masks[0, 0, 1, 1] = 1
    masks[0, 2] = 1
    masks[1, 3, 0, 1] = 1
    return masks


# image logits: p = 1/2, 3/4, 1/4, 3/4 for image 0 and 3/4, 1/4, 1/2, 1/4 for image 1
IMAGE_LOGITS = torch.tensor([[0.0, LN3, -LN3, LN3], [LN3, -LN3, 0.0, -LN3]])
# BCE per entry against presence [[1, 0, 1, 0], [0, 0, 0, 1]]: -ln(p) for a 1, -ln(1-p) for a 0
#   image 0: ln 2, ln 4, ln 4, ln 4;  image 1: ln 4, ln(4/3), ln 2, ln 4
BCE_BY_HAND = (2 * math.log(2) + 5 * math.log(4) + math.log(4 / 3)) / 8


def test_presence_by_hand():
    labels = presence(two_images())
    assert labels.dtype == torch.float32 and labels.shape == (2, 4)
    assert labels.tolist() == [[1, 0, 1, 0], [0, 0, 0, 1]]


def test_presence_bce_by_hand():
    assert presence_bce(IMAGE_LOGITS, two_images()).item() == pytest.approx(BCE_BY_HAND)
    assert PresenceLoss()(IMAGE_LOGITS, two_images()).item() == pytest.approx(BCE_BY_HAND)
    assert PresenceLoss()(IMAGE_LOGITS.bfloat16(), two_images()).dtype == torch.float32
    with pytest.raises(ValueError, match="image logits"):
        presence_bce(IMAGE_LOGITS[:, :3], two_images())
    with pytest.raises(ValueError, match="not mask logits"):
        PresenceLoss()(torch.zeros(2, 4, 2, 2), two_images())


def test_segment_loss_adds_the_weighted_head_bce():
    masks = two_images()
    mask_logits = torch.zeros(2, 4, 2, 2)
    # Dice per (image, class) at p = 1/2 on 4 pixels, smooth 1: 1 - (2 * s/2 + 1) / (2 + s + 1)
    # with s truth pixels: s = 1 -> 0.5, s = 4 -> 1 - 5/7 = 2/7, s = 0 -> 2/3 (5 such pairs)
    dice = (0.5 + 2 / 7 + 5 * 2 / 3 + 0.5) / 8
    masks_only = dice + math.log(2)  # BCE at p = 1/2 is ln 2 on every pixel
    loss = SegmentLoss(DiceBCELoss(), cls_weight=0.2)
    assert loss((mask_logits, IMAGE_LOGITS), masks).item() == pytest.approx(
        masks_only + 0.2 * BCE_BY_HAND)
    assert SegmentLoss(DiceBCELoss())(mask_logits, masks).item() == pytest.approx(masks_only)
    with pytest.raises(ValueError, match="needs mask logits and image logits"):
        loss(mask_logits, masks)  # a head's weight, no head
    with pytest.raises(ValueError, match="needs mask logits alone"):
        SegmentLoss(DiceBCELoss())((mask_logits, IMAGE_LOGITS), masks)


def test_the_head_gets_a_gradient_only_from_its_weight():
    masks, mask_logits = two_images(), torch.zeros(2, 4, 2, 2, requires_grad=True)
    image_logits = IMAGE_LOGITS.clone().requires_grad_()
    SegmentLoss(DiceBCELoss(), 0.5)((mask_logits, image_logits), masks).backward()
    # d BCE / d logit = (p - y) / (N * C): 0.5 * (1/2 - 1) / 8 for image 0, class 1
    assert image_logits.grad[0, 0].item() == pytest.approx(0.5 * -0.5 / 8)
    assert mask_logits.grad.abs().sum() > 0
