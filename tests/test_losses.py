import math

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

import reference
from competition.model.config import TrainConfig, from_dict, parse_loss, to_dict
from competition.errors import InputError
from competition.train.losses import (LOSSES, MaskLoss, PresenceLoss, SegmentLoss, bce_loss,
                                batch_dice_loss, dice_loss, focal_loss, lovasz_hinge, lovasz_loss, presence,
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
    assert MaskLoss()(logits, ONE_PIXEL).item() == pytest.approx(0.5 + math.log(2))
    assert MaskLoss((("bce", 1.0),))(logits, ONE_PIXEL).item() == pytest.approx(math.log(2))
    assert MaskLoss((("dice", 1.0),))(logits, ONE_PIXEL).item() == pytest.approx(0.5)
    assert MaskLoss((("dice", 2.0), ("bce", 3.0)))(logits, ONE_PIXEL).item() == \
        pytest.approx(2 * 0.5 + 3 * math.log(2))
    # p = 3/4 on the true pixel and 1/4 elsewhere: every pixel is right with probability 3/4,
    # BCE = -ln(3/4) = ln(4/3) per pixel
    logits = torch.tensor([[[[LN3, -LN3], [-LN3, -LN3]]]])
    assert bce_loss(logits, ONE_PIXEL).item() == pytest.approx(math.log(4 / 3))


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
    assert dice_loss(logits, targets).item() == pytest.approx(0.625)
    assert smp_dice(logits, targets).item() == pytest.approx(1 / 3)


def test_batch_dice_pools_the_images_of_a_class_by_hand():
    # class 0: image 0 the hand example (p = 1/2 on 4 pixels, 1 true), image 1 empty truth with
    # p = 3/4 on 4 pixels. Pooled: sum(p t) = 0.5, sum(p) = 2 + 3 = 5, sum(t) = 1 ->
    # 1 - 2 * 0.5 / 6 = 5/6 (per image it would be mean(0.5, 3/4) = 0.625).
    # class 1: empty in both images, p = 3/4 everywhere -> absent from the batch: 0.
    # Mean over the 2 classes: 5/12.
    empty = torch.zeros(1, 1, 2, 2)
    logits = torch.cat([torch.cat([torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), LN3)]),
                        torch.full((2, 1, 2, 2), LN3)], dim=1)
    targets = torch.cat([torch.cat([ONE_PIXEL, empty]), torch.zeros(2, 1, 2, 2)], dim=1)
    assert batch_dice_loss(logits, targets).item() == pytest.approx(5 / 12, rel=1e-6)
    assert MaskLoss((("batch_dice", 1.0),))(logits, targets).item() == \
        pytest.approx(5 / 12, rel=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_perfect_confident_prediction_costs_nothing(name):
    _, targets = random_batch()
    targets[0, 1] = 0  # an empty channel, predicted empty
    logits = 20.0 * (2.0 * targets.float() - 1.0)
    assert MaskLoss(((name, 1.0),), [1.0, 2.0, 3.0, 4.0])(logits, targets).item() < 1e-6
    assert soft_dice_loss(logits, targets).max().item() < 1e-6


def test_pos_weight_by_hand():
    # weight 3 on the one positive pixel: (3 ln 2 + 3 * ln 2) / 4 pixels = 1.5 ln 2
    weight = torch.tensor([3.0]).view(1, 1, 1)
    assert bce_loss(torch.zeros(1, 1, 2, 2), ONE_PIXEL, weight).item() == \
        pytest.approx(1.5 * math.log(2))
    loss = MaskLoss((("bce", 1.0),), pos_weight=[3.0])(torch.zeros(1, 1, 2, 2), ONE_PIXEL)
    assert loss.item() == pytest.approx(1.5 * math.log(2))
    # p = 3/4 on the positive pixel, weight 3: (3 ln(4/3) + 3 ln(4/3)) / 4 = 1.5 ln(4/3)
    logits = torch.tensor([[[[LN3, -LN3], [-LN3, -LN3]]]])
    assert bce_loss(logits, ONE_PIXEL, weight).item() == pytest.approx(1.5 * math.log(4 / 3))


def test_pos_weight_is_per_class():
    logits, targets = random_batch()
    weights = [1.0, 2.0, 5.0, 0.5]
    loss = MaskLoss((("bce", 1.0),), pos_weight=weights)(logits, targets)
    full = torch.tensor(weights)[:, None, None].expand_as(logits)  # (N, C, H, W), explicit
    assert loss.item() == pytest.approx(
        F.binary_cross_entropy_with_logits(logits, targets.float(), pos_weight=full).item())
    p, t, w = torch.sigmoid(logits), targets.float(), full
    by_hand = -(w * t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert loss.item() != pytest.approx(bce_loss(logits, targets).item())


def test_pos_weight_is_a_buffer_of_the_right_length():
    loss = MaskLoss(pos_weight=[1.0, 2.0, 3.0, 4.0])
    assert dict(loss.named_buffers())["pos_weight"].shape == (4, 1, 1)
    assert "pos_weight" in loss.state_dict()
    logits, targets = random_batch(shape=(1, 3, 4, 4))
    with pytest.raises(ValueError, match="pos_weight"):
        loss(logits, targets)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_bf16_logits_match_float32_and_give_float32(name):
    logits, targets = random_batch()
    loss = MaskLoss(((name, 1.0),), pos_weight=[1.0, 2.0, 3.0, 4.0])
    half = logits.bfloat16()
    value = loss(half, targets)
    assert value.dtype == torch.float32
    assert value.item() == loss(half.float(), targets).item()  # the cast is the only change
    assert value.item() == pytest.approx(loss(logits, targets).item(), rel=1e-2)
    assert loss(logits, targets).item() == pytest.approx(loss(logits, targets.float()).item())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert loss(half, targets).dtype == torch.float32


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradient_flows(name, dtype):
    logits, targets = random_batch()
    logits = logits.to(dtype).requires_grad_()
    MaskLoss(((name, 1.0),), pos_weight=[1.0, 2.0, 3.0, 4.0])(logits, targets).backward()
    assert logits.grad.dtype == dtype
    assert torch.isfinite(logits.grad.float()).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_a_nan_logit_gives_a_nan_loss_never_a_number(name):
    """The training loop stops on a non-finite loss: no loss may hide a NaN logit."""
    logits, targets = random_batch()
    logits[1, 2, 3, 4] = float("nan")
    assert torch.isnan(MaskLoss(((name, 1.0),))(logits, targets))


# --- the registry: today's default, weighted sums, names ----------------------------------

@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_default_spec_is_the_old_dice_bce_loss_bit_for_bit(seed, dtype):
    """TrainConfig's default loss "dice:1,bce:1" computes what DiceBCELoss computed before the
    registry (tests/reference.py keeps it as it was): the same operations in the same order,
    so the same bits. A config saved with dice_weight/bce_weight reads as the same sum."""
    logits, targets = random_batch(seed)
    logits = logits.to(dtype)
    weights = [1.0, 2.0, 5.0, 0.5]
    default = MaskLoss(parse_loss(TrainConfig.loss), weights)
    assert torch.equal(default(logits, targets), reference.DiceBCELoss(1.0, 1.0, weights)(
        logits, targets))
    assert torch.equal(MaskLoss(parse_loss(TrainConfig.loss))(logits, targets),
                       reference.DiceBCELoss()(logits, targets))
    for dice_weight, bce_weight in ((2.0, 0.5), (0.0, 1.0), (1.0, 0.0)):
        old = to_dict(TrainConfig()) | {"dice_weight": dice_weight, "bce_weight": bce_weight}
        del old["loss"]
        spec = from_dict(old).loss  # e.g. "dice:2,bce:0.5"; a 0 weight's term is left out
        # 0 x a finite Dice (or BCE) is +0, and x + 0 is x: the same bits without the term
        assert torch.equal(MaskLoss(parse_loss(spec), weights)(logits, targets),
                           reference.DiceBCELoss(dice_weight, bce_weight, weights)(
                               logits, targets)), spec


def test_a_weighted_sum_is_the_sum_of_its_parts():
    """The same operations as the sum written out, in the spec's order: the same bits."""
    logits, targets = random_batch(2)
    weights = [1.0, 2.0, 5.0, 0.5]
    buffer = torch.tensor(weights).view(-1, 1, 1)
    loss = MaskLoss(parse_loss("bce:0.75,lovasz:0.25"), weights)
    assert torch.equal(loss(logits, targets), 0.75 * bce_loss(logits, targets, buffer)
                       + 0.25 * lovasz_loss(logits, targets))
    loss = MaskLoss(parse_loss("focal:2,dice:0.5,bce:1"), weights, gamma=1.5)
    assert torch.equal(loss(logits, targets), 2.0 * focal_loss(logits, targets, 1.5)
                       + 0.5 * dice_loss(logits, targets) + 1.0 * bce_loss(logits, targets, buffer))


def test_an_unknown_loss_name_is_one_input_error_listing_the_valid_ones():
    with pytest.raises(InputError, match=r"^--loss 'bce:1,lovaz:0.5': unknown loss 'lovaz'; "
                                         r"valid: batch_dice, bce, dice, focal, lovasz$"):
        MaskLoss(parse_loss("bce:1,lovaz:0.5"))


# --- focal --------------------------------------------------------------------------------

def test_focal_with_gamma_0_is_bce():
    """(1 - p_t)^0 = 1: the same per-pixel BCE, averaged in another call (to 1e-6)."""
    logits, targets = random_batch(3)
    assert focal_loss(logits, targets, 0.0).item() == pytest.approx(
        bce_loss(logits, targets).item(), rel=1e-6)
    assert focal_loss(torch.zeros(1, 1, 2, 2), ONE_PIXEL, 0.0).item() == \
        pytest.approx(math.log(2))


def test_focal_by_hand():
    # p = 3/4 everywhere, truth the top-left pixel. There p_t = 3/4: (1/4)^2 ln(4/3); on the
    # three others p_t = 1/4: (3/4)^2 ln 4 each. Mean over 4 pixels.
    logits = torch.full((1, 1, 2, 2), LN3)
    by_hand = (math.log(4 / 3) / 16 + 3 * 9 / 16 * math.log(4)) / 4
    assert focal_loss(logits, ONE_PIXEL, 2.0).item() == pytest.approx(by_hand)
    # gamma 1: (1/4) ln(4/3) and (3/4) ln 4
    assert focal_loss(logits, ONE_PIXEL, 1.0).item() == pytest.approx(
        (math.log(4 / 3) / 4 + 3 * 3 / 4 * math.log(4)) / 4)
    # every pixel right with p_t = 3/4: (1/4)^2 ln(4/3) each
    logits = torch.tensor([[[[LN3, -LN3], [-LN3, -LN3]]]])
    assert focal_loss(logits, ONE_PIXEL, 2.0).item() == pytest.approx(math.log(4 / 3) / 16)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_matches_smp_without_alpha(gamma):
    """smp's FocalLoss (multilabel, alpha None) averages per class, then over the classes of
    equal size: the same mean, summed in another order (to 1e-5)."""
    logits, targets = random_batch(4)
    theirs = smp.losses.FocalLoss("multilabel", alpha=None, gamma=gamma)(logits, targets)
    assert focal_loss(logits, targets, gamma).item() == pytest.approx(theirs.item(), rel=1e-5)


# --- Lovasz hinge -------------------------------------------------------------------------

# Four pixels a, b, c, d; truth t = 1, 0, 1, 0 (P = 2 defect pixels), logits z = 0.5, 1,
# -0.5, -3. Hinge errors e = 1 - z * (2t - 1): a 0.5, b 2, c 1.5, d -2 (d is right by a
# margin: max(0, e) = 0). Sorted by error: b (t 0), c (t 1), a (t 1), d (t 0).
# Jaccard loss of the first k sorted pixels taken as the errors, J_k = 1 - (P - pos_k) /
# (P + neg_k) (Berman et al.'s Delta_J = |M| / |truth u M|):
#   k=1 {b}: 1 - 2/3 = 1/3;  k=2 {b,c}: 1 - 1/3 = 2/3;  k=3 {b,c,a}: 1 - 0/3 = 1;
#   k=4 {b,c,a,d}: 1 - 0/4 = 1.  g_k = J_k - J_{k-1} = 1/3, 1/3, 1/3, 0.
# Loss = 2 * 1/3 + 1.5 * 1/3 + 0.5 * 1/3 + 0 * 0 = 4/3.
LOVASZ_LOGITS = torch.tensor([[[[0.5, -0.5], [1.0, -3.0]]]])  # rows: a c, b d (any order)
LOVASZ_TRUTH = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
# An empty truth (P = 0): every J_k = 1 - 0/k = 1, so g = 1, 0, 0, 0 and the loss is the
# largest error alone: logits 0, -2, 1, -0.5 -> errors 1, -1, 2, 0.5 -> 2 (= 1 + max z).
EMPTY_LOGITS = torch.tensor([[[[0.0, -2.0], [1.0, -0.5]]]])


def test_lovasz_by_hand():
    assert lovasz_hinge(LOVASZ_LOGITS, LOVASZ_TRUTH).item() == pytest.approx(4 / 3)
    assert lovasz_hinge(EMPTY_LOGITS, torch.zeros(1, 1, 2, 2)).item() == pytest.approx(2.0)
    # all pixels right by a margin of 1 or more: no error, no loss
    assert lovasz_hinge(3.0 * (2 * LOVASZ_TRUTH - 1), LOVASZ_TRUTH).item() == 0.0
    # where the errors are 0 or 1 (z s = 1: right, z = 0: wrong) the extension is the Jaccard
    # loss of the wrong set itself: wrong {a, b} -> 1 - |{c}| / |{a, c} u {b}| = 2/3
    half = torch.tensor([[[[0.0, 1.0], [0.0, -1.0]]]])
    assert lovasz_hinge(half, LOVASZ_TRUTH).item() == pytest.approx(2 / 3)


def test_lovasz_is_per_image_and_class():
    """(N, C) = (2, 2): each pair its own Jaccard. smp's multilabel LovaszLoss flattens an
    image's channels into one (per_image=True), which is another number."""
    logits = torch.cat([torch.cat([LOVASZ_LOGITS, EMPTY_LOGITS], 1),
                        torch.cat([EMPTY_LOGITS, LOVASZ_LOGITS], 1)])
    truth = torch.cat([torch.cat([LOVASZ_TRUTH, torch.zeros(1, 1, 2, 2)], 1),
                       torch.cat([torch.zeros(1, 1, 2, 2), LOVASZ_TRUTH], 1)])
    per_pair = lovasz_hinge(logits, truth)
    assert per_pair.shape == (2, 2) and per_pair.dtype == torch.float32
    assert per_pair.flatten().tolist() == pytest.approx([4 / 3, 2.0, 2.0, 4 / 3])
    assert lovasz_loss(logits, truth).item() == pytest.approx((4 / 3 + 2.0) / 2)
    pooled = smp.losses.LovaszLoss("multilabel", per_image=True)(logits, truth).item()
    assert pooled != pytest.approx(lovasz_loss(logits, truth).item(), rel=1e-3)


def test_lovasz_matches_smps_binary_hinge_pair_by_pair():
    """smp's binary per-image hinge on the (N*C, H, W) pairs is Berman's reference code run
    pair by pair: the same value, summed in another order (to 1e-5)."""
    logits, targets = random_batch(5, shape=(3, 4, 16, 24))
    targets[1, 2] = 0  # an empty pair
    ours = lovasz_hinge(logits, targets)
    reference_hinge = smp.losses.LovaszLoss("binary", per_image=True)
    for n in range(3):
        for c in range(4):
            theirs = reference_hinge(logits[n:n + 1, c], targets[n:n + 1, c])
            assert ours[n, c].item() == pytest.approx(theirs.item(), rel=1e-5), (n, c)


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
    loss = SegmentLoss(MaskLoss(), cls_weight=0.2)
    assert loss((mask_logits, IMAGE_LOGITS), masks).item() == pytest.approx(
        masks_only + 0.2 * BCE_BY_HAND)
    assert SegmentLoss(MaskLoss())(mask_logits, masks).item() == pytest.approx(masks_only)
    with pytest.raises(ValueError, match="needs mask logits and image logits"):
        loss(mask_logits, masks)  # a head's weight, no head
    with pytest.raises(ValueError, match="needs mask logits alone"):
        SegmentLoss(MaskLoss())((mask_logits, IMAGE_LOGITS), masks)


def test_the_head_gets_a_gradient_only_from_its_weight():
    masks, mask_logits = two_images(), torch.zeros(2, 4, 2, 2, requires_grad=True)
    image_logits = IMAGE_LOGITS.clone().requires_grad_()
    SegmentLoss(MaskLoss(), 0.5)((mask_logits, image_logits), masks).backward()
    # d BCE / d logit = (p - y) / (N * C): 0.5 * (1/2 - 1) / 8 for image 0, class 1
    assert image_logits.grad[0, 0].item() == pytest.approx(0.5 * -0.5 / 8)
    assert mask_logits.grad.abs().sum() > 0
