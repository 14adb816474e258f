"""`train --help`: each config option's help is its field's comment in model/config.py, the
fields that take a name list the valid ones (the registries' own keys), and tuples show their
length and meaning in the metavar and are refused at parse time at another length."""
import argparse
import dataclasses

import pytest
import torch

from competition.cli.config_help import field_comments, help_text, metavar
from competition.cli.front import build_parser
from competition.model import config as config_lib
from competition.model.networks import ARCHITECTURES, build_model
from competition.train.losses import LOSSES
from competition.train.schedules import DECAYS


def train_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def option(name: str) -> argparse.Action:
    return train_parser()._option_string_actions[name]


@dataclasses.dataclass(frozen=True)
class Example:
    plain: int = 1  # on its line
    continued: str = "a # not a comment"  # first part
    # second part

    # a section title, ended by the blank line above and the field below with its own comment
    titled: float = 0.5  # its own
    # continues its own

    # the block above a field with no comment of its own: that field's
    above: int = 2
    bare: int = 3

    # after a blank line, not a continuation of bare
    last: bool = True  # last


def test_the_comment_convention_on_a_class_written_for_it():
    assert field_comments(Example) == {
        "plain": "on its line",
        "continued": "first part second part",
        "titled": "its own continues its own",
        "above": "the block above a field with no comment of its own: that field's",
        "bare": "",
        "last": "last"}


def test_every_config_field_has_a_comment_and_the_help_repeats_it():
    comments = field_comments()
    assert set(comments) == {f.name for f in dataclasses.fields(config_lib.TrainConfig)}
    assert not [name for name, text in comments.items() if not text]
    # copied by hand from model/config.py
    assert option("--defect-crop-p").help.startswith(
        "share of crops centred on a defect pixel (when there is one)")
    assert option("--workers").help.startswith("loader processes: JPEG decoding")
    assert option("--ema-decay").help == ("EMA of the weights (0.999 is typical); 0 turns it "
                                          "off (default 0.0, or the preset's)")
    assert "(default \"\", or the preset's)" in option("--pseudo").help
    for action in train_parser()._actions:
        if action.dest in comments and action.help != argparse.SUPPRESS:
            assert action.help.startswith(comments[action.dest].rstrip(".")), action.dest


def test_name_lists_are_the_registries():
    assert config_lib.ARCH_NAMES == tuple(ARCHITECTURES)
    assert config_lib.SCHEDULE_NAMES == tuple(DECAYS)
    assert config_lib.LOSS_NAMES == tuple(LOSSES)
    for flag, names in (("--arch", ARCHITECTURES), ("--schedule", DECAYS),
                        ("--loss", LOSSES), ("--task", config_lib.TASKS),
                        ("--amp", config_lib.AMP_MODES), ("--cache", config_lib.CACHES)):
        assert all(name in option(flag).help for name in names), flag
    assert option("--arch").metavar == "{deeplabv3,deeplabv3plus,unet,fpn,tv_deeplabv3}"


@pytest.mark.parametrize("encoder", config_lib.ENCODERS_TRIED)
def test_every_encoder_the_help_names_builds_and_runs(encoder):
    assert encoder in option("--encoder").help
    model = build_model("deeplabv3", encoder, "none", atrous_rates_h=(1, 2, 3),
                        atrous_rates_w=(1, 2, 3)).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 4, 64, 64)


def test_tuples_show_their_items_and_refuse_another_length(capsys):
    assert option("--val-min-area").metavar == "C1,C2,C3,C4"
    assert option("--pos-weight").metavar == "C1,C2,C3,C4"
    assert option("--atrous-rates-h").metavar == "D1,D2,D3"
    assert "one value per defect class 1-4" in option("--val-min-area").help
    assert option("--val-min-area").type("1,2,3,4") == (1, 2, 3, 4)
    with pytest.raises(SystemExit) as stop:
        train_parser().parse_args(["--fold", "0", "--val-min-area", "600,600"])
    assert stop.value.code == 2
    assert "expected 4 comma-separated values, got 2" in capsys.readouterr().err
    with pytest.raises(KeyError, match="tuple of 2"):
        metavar("size", int, 2)


def test_help_text_escapes_percent_for_argparse():
    text = help_text("x", 1, 0, "50% of crops")
    assert text == "50%% of crops (default 1, or the preset's)"
    assert "50% of crops" in argparse.HelpFormatter("p")._expand_help(
        argparse.Action(["--x"], "x", help=text, default=1))
