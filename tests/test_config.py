import dataclasses

import pytest

from competition.config import (PRESETS, TrainConfig, build_config, differences, from_dict,
                                to_dict)
from competition.errors import InputError


def test_presets_override_defaults_and_options_override_presets():
    demo = build_config("demo_cpu")
    assert demo.name == "demo_cpu" and demo.encoder == "resnet18"
    assert demo.amp == TrainConfig().amp, "fields a preset leaves alone keep the defaults"
    assert build_config("demo_cpu", epochs=1, lr=None).epochs == 1
    assert build_config("demo_cpu", lr=None).lr == PRESETS["demo_cpu"]["lr"]
    assert build_config().name == "deeplabv3_r34" and build_config().encoder == "resnet34"
    assert build_config("deeplabv3_r101").encoder == "resnet101"


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
])
def test_bad_values_are_input_errors(values, message):
    if message is None:
        with pytest.raises(InputError, match="unknown preset 'nope'; valid: deeplabv3_r34"):
            build_config(values["name"])
        return
    with pytest.raises(InputError, match=message):
        from_dict(to_dict(TrainConfig()) | values)
