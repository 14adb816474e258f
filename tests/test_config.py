import dataclasses

import pytest

from competition.model.config import (OLD_RATES, PRESETS, TrainConfig, build_config, cells,
                                differences, dilations, format_loss, from_dict, live,
                                parse_loss, to_dict, untrained_taps)
from competition.errors import InputError
from test_cli import one_line_error, run


def test_presets_override_defaults_and_options_override_presets():
    demo = build_config("demo_cpu")
    assert demo.name == "demo_cpu" and demo.encoder == "resnet18"
    assert demo.amp == TrainConfig().amp, "fields a preset leaves alone keep the defaults"
    assert build_config("demo_cpu", epochs=1, lr=None).epochs == 1
    assert build_config("demo_cpu", lr=None).lr == PRESETS["demo_cpu"]["lr"]
    assert build_config().name == "deeplabv3_r34" and build_config().encoder == "resnet34"
    assert build_config("deeplabv3_r101").encoder == "resnet101"


def test_classifier_presets():
    for name in ("classifier_r34", "demo_cpu_cls"):
        config = build_config(name)
        assert config.task == "classify" and config.cls_weight == 0.0
        assert config.defect_crop_p == 0.0 and 0.0 < config.mask_dropout_p <= 1.0
    real = build_config("classifier_r34")
    assert (real.encoder, real.encoder_weights, real.batch_size) == ("resnet34", "imagenet", 16)
    assert (real.crop_height, real.crop_width) == (256, 1568)
    demo = build_config("demo_cpu_cls")
    assert (demo.encoder, demo.encoder_weights, demo.num_workers) == ("resnet18", "none", 2)
    assert build_config("demo_cpu").cls_weight == 0.0
    assert build_config("demo_cpu", cls_weight=0.2).cls_weight == 0.2
    assert build_config("demo_cpu_cls", batch_size=1).batch_size == 1, "no ASPP pooling"


def test_json_round_trip_and_differences():
    config = build_config("demo_cpu", pos_weight=(1.0, 2.0, 1.0, 3.0))
    again = from_dict(to_dict(config) | {"pos_weight": [1.0, 2.0, 1.0, 3.0]})  # JSON lists
    assert again == config
    other = dataclasses.replace(config, lr=0.5, num_workers=0)
    assert differences(config, other) == [f"lr: {config.lr!r} != 0.5"], \
        "num_workers changes speed, not results"


@pytest.mark.parametrize("values, message", [
    ({"name": "nope"}, None),
    ({"learning_rate": 1}, "unknown config field 'learning_rate'"),
    ({"amp": "fp8"}, "amp 'fp8'"),
    ({"epochs": 0}, "epochs 0"),
    ({"crop_width": 500}, "multiples of 32"),
    ({"pos_weight": (1.0, 2.0)}, "one value per class"),
    ({"ema_decay": 1.0}, "ema_decay"),
    ({"val_threshold": 1.5}, "val_threshold"),
    ({"atrous_rates_h": (3, 6)}, r"atrous_rates_h \(3, 6\): needs three rates"),
    ({"atrous_rates_w": (0, 6, 9)}, r"atrous_rates_w \(0, 6, 9\): needs three rates of at"),
    ({"mask_dropout_p": 1.5}, r"mask_dropout_p 1.5: a probability, must be in \[0, 1\]"),
    ({"mask_dropout_p": -0.1}, "mask_dropout_p -0.1"),
    ({"hflip_p": 2.0}, "hflip_p 2.0"),
    ({"task": "detect"}, "task 'detect'"),
    ({"task": "classify", "cls_weight": 0.2}, "cls_weight 0.2: weighs a segmenter's"),
])
def test_bad_values_are_input_errors(values, message):
    if message is None:
        with pytest.raises(InputError, match="unknown preset 'nope'; valid: deeplabv3_r34"):
            build_config(values["name"])
        return
    with pytest.raises(InputError, match=message):
        from_dict(to_dict(TrainConfig()) | values)


def test_cells_and_live_taps_by_hand():
    # ResNet stages halve with rounding up: 256x1600 is 16x100 at stride 16, 32x200 at 8
    assert [cells(256, 16), cells(1600, 16), cells(512, 16), cells(128, 16)] == [16, 100, 32, 8]
    assert [cells(1600, 8), cells(1600, 32), cells(100, 16)] == [200, 50, 7]
    # a tap d cells off centre reads an n-cell axis at some output cell iff |d| < n
    assert live(0, 1) and live(15, 16) and live(-15, 16)
    assert not live(16, 16) and not live(-16, 16) and not live(36, 32)
    assert dilations((3, 6, 9), 16) == (3, 6, 9) and dilations((3, 6, 9), 8) == (6, 12, 18)


def old(**overrides) -> TrainConfig:
    """A config with the pre-field rates, (12, 24, 36) on both axes, not checked."""
    return dataclasses.replace(TrainConfig(), atrous_rates_h=OLD_RATES,
                               atrous_rates_w=OLD_RATES, **overrides)


def test_old_rates_at_a_512_crop_leave_one_branch_untrained():
    # 16x32 cells at the crop, 16x100 at full size: rows 12 live at both, 24 and 36 at
    # neither; columns 12 and 24 live at both, 36 only at full size
    problems = untrained_taps(old())
    assert len(problems) == 1
    assert problems[0].startswith("atrous_rates_w 36 (ASPP branch 3): at output stride 16 its "
                                  "taps 36 columns off centre read 256x1600 images (100 "
                                  "columns) but never a 256x512 crop (32 columns)")
    # 31 < 32 cells; a 608-wide crop is 38 cells (> 36), 576 only 36
    assert problems[0].endswith("the largest rate that fits is 31, or crop_width 608 fits "
                                "this one")


def test_old_rates_at_the_demo_crop_leave_three_branches_untrained():
    # 8x16 cells at 128x256: rows 12 read 16 full-size rows but not 8; columns 24 and 36
    # read 100 full-size columns but not 16. 224 high is 14 rows (> 12), 192 only 12;
    # 416 wide is 26 columns (> 24), 384 only 24
    problems = untrained_taps(old(crop_height=128, crop_width=256))
    assert [p.split(":")[0] for p in problems] == [
        "atrous_rates_h 12 (ASPP branch 1)", "atrous_rates_w 24 (ASPP branch 2)",
        "atrous_rates_w 36 (ASPP branch 3)"]
    assert [p.split("fits is ")[1] for p in problems] == [
        "7, or crop_height 224 fits this one", "15, or crop_width 416 fits this one",
        "15, or crop_width 608 fits this one"]


def test_rates_are_stride_16_cells_so_the_rule_holds_at_stride_8_too():
    # stride 8: rates double (24, 48, 72) and so do the maps (32x64 crop, 32x200 full)
    problems = untrained_taps(old(output_stride=8))
    assert len(problems) == 1
    assert ("atrous_rates_w 36 (ASPP branch 3): at output stride 8 its taps 72 columns off "
            "centre read 256x1600 images (200 columns) but never a 256x512 crop (64 columns)"
            in problems[0])
    assert problems[0].endswith("largest rate that fits is 31, or crop_width 608 fits this one")


@pytest.mark.parametrize("overrides", [
    dict(atrous_rates_w=(6, 12, 31)),  # 31 < 32 crop columns: live at both sizes
    dict(atrous_rates_h=(15, 16, 40)),  # 15 live at both; 16 and 40 >= 16 rows: at neither
    dict(atrous_rates_w=(6, 100, 150)),  # >= 100 columns: dead at full size too
    dict(atrous_rates_h=OLD_RATES, atrous_rates_w=OLD_RATES, crop_width=1600),
    dict(atrous_rates_h=OLD_RATES, atrous_rates_w=OLD_RATES, crop_width=608),  # 38 columns
    dict(atrous_rates_h=OLD_RATES, atrous_rates_w=OLD_RATES, crop_height=64, arch="unet"),
])
def test_rates_that_train_every_live_tap_or_no_aspp(overrides):
    assert untrained_taps(dataclasses.replace(TrainConfig(), **overrides)) == []


def test_rate_32_at_a_512_crop_is_refused():
    assert [p.split(":")[0] for p in untrained_taps(
        dataclasses.replace(TrainConfig(), atrous_rates_w=(6, 12, 32)))] == [
        "atrous_rates_w 32 (ASPP branch 3)"]


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_trains_every_live_tap(name):
    assert untrained_taps(build_config(name)) == []


def test_untrained_taps_refused_in_one_line_unless_allowed():
    with pytest.raises(InputError) as e:
        build_config(atrous_rates_h=OLD_RATES, atrous_rates_w=OLD_RATES)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("atrous_rates_w 36 (ASPP branch 3)")
    assert message.endswith("crop_width 608 fits this one; allow_untrained_taps true trains "
                            "them anyway")
    with pytest.raises(InputError, match=r"branch 1\).* \(and 2 more\); allow_untrained"):
        build_config("demo_cpu", atrous_rates_h=OLD_RATES, atrous_rates_w=OLD_RATES)
    allowed = build_config(atrous_rates_w=OLD_RATES, allow_untrained_taps=True)
    assert allowed.atrous_rates_w == OLD_RATES
    assert build_config("demo_cpu", arch="unet", crop_height=64).arch == "unet"  # no ASPP


def test_refusal_reaches_the_terminal_before_anything_is_written(tmp_path):
    out = tmp_path / "fold0"
    one_line_error(run("train", "--data", tmp_path / "nowhere", "--fold", "0", "--out", out,
                       "--atrous-rates-w", "12,24,36"),
                   "atrous_rates_w 36 (ASPP branch 3)", "crop_width 608",
                   "allow_untrained_taps true")
    assert not out.exists()


@pytest.mark.parametrize("stride, rates", [(0, (12, 24, 36)), (16, (12, 24, 36)),
                                           (8, (6, 12, 18))])
def test_a_config_saved_before_the_rate_fields_keeps_its_model(stride, rates):
    """Its model had dilations (12, 24, 36) at any stride: in stride-16 cells that is
    (6, 12, 18) at stride 8. It trained with whatever taps those left untrained."""
    saved = {k: v for k, v in to_dict(TrainConfig(output_stride=stride)).items()
             if k not in ("atrous_rates_h", "atrous_rates_w", "allow_untrained_taps")}
    config = from_dict(saved)
    assert config.atrous_rates_h == config.atrous_rates_w == rates
    assert config.allow_untrained_taps
    assert dilations(config.atrous_rates_w, stride or 16) == OLD_RATES


# --- the loss spec --------------------------------------------------------------------------

def test_loss_specs_read_in_order_and_are_saved_in_one_form():
    assert parse_loss("bce:0.75,lovasz:0.25") == (("bce", 0.75), ("lovasz", 0.25))
    assert parse_loss(" lovasz : 0.25 , bce:1e-1") == (("lovasz", 0.25), ("bce", 0.1))
    assert parse_loss("focal") == (("focal", 1.0),), "a bare name weighs 1"
    assert format_loss(parse_loss("dice:1.0,bce:1")) == TrainConfig.loss == "dice:1,bce:1"
    config = build_config("demo_cpu", loss="bce:0.75, lovasz:.25")
    assert config.loss == "bce:0.75,lovasz:0.25"
    assert from_dict(to_dict(config)) == config
    assert parse_loss(format_loss(((("dice", 1 / 3)),))) == (("dice", 1 / 3),), "exact floats"


@pytest.mark.parametrize("spec, why", [
    ("", "no loss given"),
    ("  ", "no loss given"),
    ("bce:", "the weight '' of 'bce' is not a number"),
    ("bce:x", "the weight 'x' of 'bce' is not a number"),
    ("bce:-1", "the weight '-1' of 'bce' must be a positive number"),
    ("bce:0", "the weight '0' of 'bce' must be a positive number"),
    ("bce:nan", "the weight 'nan' of 'bce' must be a positive number"),
    ("bce:inf", "the weight 'inf' of 'bce' must be a positive number"),
    ("bce:1,bce:2", "'bce' is given twice"),
    ("bce:1,,dice:1", "an empty part"),
    (":1", "':1' has no loss name"),
])
def test_malformed_loss_specs_are_one_line_naming_the_option_and_value(spec, why):
    with pytest.raises(InputError) as e:
        build_config("demo_cpu", loss=spec)
    assert str(e.value).startswith(f"--loss {spec!r}: {why}; expected NAME:WEIGHT pairs")
    assert "\n" not in str(e.value)


def test_a_config_saved_with_dice_and_bce_weights_loads_as_their_sum():
    """Before the loss registry the loss was dice_weight x Dice + bce_weight x BCE; such a
    config.json or checkpoint loads with the spec of the same sum (a 0 weight's term left
    out, see test_losses for the bits), and resumes as the same config."""
    saved = {k: v for k, v in to_dict(build_config("demo_cpu")).items() if k != "loss"}
    assert from_dict(saved | {"dice_weight": 1.0, "bce_weight": 1.0}) == build_config("demo_cpu")
    assert from_dict(saved | {"dice_weight": 2.0, "bce_weight": 0.5}).loss == "dice:2,bce:0.5"
    assert from_dict(saved | {"dice_weight": 0.0, "bce_weight": 1.0}).loss == "bce:1"
    assert from_dict(saved | {"dice_weight": 1.0, "bce_weight": 0.0}).loss == "dice:1"
    with pytest.raises(InputError, match="dice_weight 0 and bce_weight 0"):
        from_dict(saved | {"dice_weight": 0.0, "bce_weight": 0.0})
    # a classifier's dice and bce weights were unused: the default spec
    classifier = {k: v for k, v in to_dict(build_config("demo_cpu_cls")).items() if k != "loss"}
    assert from_dict(classifier | {"dice_weight": 3.0, "bce_weight": 1.0}).loss == TrainConfig.loss
    # with the registry's field they are unknown fields
    with pytest.raises(InputError, match="unknown config field 'dice_weight'"):
        from_dict(to_dict(TrainConfig()) | {"dice_weight": 1.0})


def test_loss_fields_that_cannot_be_used_are_refused():
    with pytest.raises(InputError, match=r"loss 'lovasz:1': weighs a segmenter's mask losses"):
        build_config("demo_cpu_cls", loss="lovasz")
    assert build_config("demo_cpu_cls").loss == TrainConfig.loss
    with pytest.raises(InputError, match=r"focal_gamma -1.0: must be 0 or more"):
        build_config("demo_cpu", focal_gamma=-1.0)
    with pytest.raises(InputError, match=r"focal_gamma nan"):
        build_config("demo_cpu", focal_gamma=float("nan"))
    assert build_config("demo_cpu", focal_gamma=0.0).focal_gamma == 0.0


def test_init_from_is_part_of_what_a_run_is():
    """A resumed run with another --init-from is another run (resolve_config refuses it)."""
    config = build_config("demo_cpu", init_from="folds/a/fold0/best.pt")
    assert from_dict(to_dict(config)).init_from == "folds/a/fold0/best.pt"
    assert differences(config, dataclasses.replace(config, init_from="b.pt")) == [
        "init_from: 'folds/a/fold0/best.pt' != 'b.pt'"]
    assert TrainConfig().init_from == ""


def test_bad_loss_options_exit_2_before_anything_is_written(tmp_path):
    out = tmp_path / "fold0"
    one_line_error(run("train", "--data", tmp_path / "nowhere", "--fold", "0", "--out", out,
                       "--loss", "bce:x"), "--loss 'bce:x': the weight 'x' of 'bce'")
    # names are the registry's: checked as the run starts, before the data is read
    one_line_error(run("train", "--data", tmp_path / "nowhere", "--fold", "0", "--out", out,
                       "--preset", "demo_cpu", "--loss", "bce:0.75,lovaz:0.25"),
                   "--loss 'bce:0.75,lovaz:0.25': unknown loss 'lovaz'; valid: batch_dice, bce, "
                   "dice, focal, lovasz")
    assert not out.exists()
