"""One name per meaning across every stage's options (the real parser, as front.py builds it):
old spellings parse as the new ones after one warning line, and every boolean takes --x,
--no-x, --x true and --x false."""
import argparse
import re

import pytest

from competition.cli.front import build_parser
from competition.cli.options import Alias, Switch

# meaning -> (the canonical option, spellings no stage may show for it)
MEANINGS = {
    "dataset folder": ("--data", ["--dataset", "--data-dir"]),
    "folds file": ("--folds-csv", ["--folds-file"]),
    "fold numbers": ("--folds", []),
    "loader processes": ("--workers", ["--num-workers", "--loader-workers"]),
    "training preset": ("--preset", ["--config"]),
    "experiment file": ("--config-file", []),
    "run folders (fold<K>/ inside)": ("--runs", ["--run-dirs"]),
    "checkpoint files (globs)": ("--checkpoints", ["--ckpts", "--models-glob"]),
    "models of a benchmark ensemble": ("--models", []),
    "images per batch": ("--batch-size", ["--bs"]),
}
# (stage, old spelling, canonical, a value or None for a switch): the deprecated aliases
ALIASES = [("train", "--config", "--preset", "demo_cpu"),
           ("train", "--folds", "--folds-csv", "x.csv"),
           ("train", "--num-workers", "--workers", "3"),
           ("bench", "--config", "--preset", "demo_cpu"),
           ("bench", "--folds", "--models", "3")]
# what each stage needs to parse at all
REQUIRED = {"train": ["--fold", "0"], "folds": ["--data", "d"], "check": ["--data", "d"],
            "baseline": ["--sample", "s"], "validate": ["--submission", "a", "--sample", "s"],
            "score": ["--truth", "t", "--submission", "a"], "curves": ["RUN"],
            "average": ["--run", "r", "--top", "2"], "bench": ["rle"]}


def stages() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def shown(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if a.option_strings and a.help != argparse.SUPPRESS]


def test_no_stage_shows_another_name_for_a_meaning():
    for stage, p in stages().items():
        names = {s for a in shown(p) for s in a.option_strings}
        for meaning, (canonical, others) in MEANINGS.items():
            assert not names & set(others), (stage, meaning, names & set(others))


def kind(action: argparse.Action) -> tuple:
    """What an option takes: its action class, value type (str for plain text), nargs."""
    return (type(action).__name__, getattr(action.type, "__name__", "str")
            if action.type is not None else "str", action.nargs)


def test_each_option_name_takes_the_same_kind_of_value_everywhere():
    seen: dict[str, dict] = {}
    for stage, p in stages().items():
        for action in shown(p):
            for name in action.option_strings:
                seen.setdefault(name, {}).setdefault(kind(action), []).append(stage)
    different = {name: kinds for name, kinds in seen.items() if len(kinds) > 1}
    assert different == {}
    for canonical, _ in MEANINGS.values():
        assert canonical in seen, canonical  # every canonical name is in use somewhere
    # the file and the numbers: --folds-csv is a file wherever it is, --folds never int
    assert seen["--folds"] == {("_StoreAction", "str", None): ["oof", "search", "predict"]}


@pytest.mark.parametrize("stage, old, new, value", ALIASES)
def test_old_spellings_parse_as_the_new_and_warn_once(stage, old, new, value, capsys):
    parser = build_parser()
    base = [stage, *REQUIRED.get(stage, [])]
    want = vars(parser.parse_args([*base, new, value]))
    assert capsys.readouterr().err == ""
    got = vars(parser.parse_args([*base, old, value, old, value]))  # given twice: one line
    assert capsys.readouterr().err == f"warning: {old} is deprecated; use {new}\n"
    got.pop("_deprecated")
    assert got == want
    p = stages()[stage]
    assert not re.search(rf"{old}(?![-\w])", p.format_help())  # hidden from --help
    action = p._option_string_actions[old]
    assert isinstance(action, Alias) and action.target is p._option_string_actions[new]


def test_every_boolean_is_a_switch_taking_both_forms():
    switches = []
    for stage, p in stages().items():
        for action in p._actions:
            assert not isinstance(action, (argparse._StoreTrueAction,
                                           argparse._StoreFalseAction,
                                           argparse.BooleanOptionalAction)), (stage, action)
            if isinstance(action, Switch) and not action.option_strings[0].startswith("--no-"):
                switches.append((stage, action))
    assert {(s, a.option_strings[0]) for s, a in switches} >= {
        ("train", "--compile"), ("train", "--tensorboard"), ("train", "--resume"),
        ("oof", "--compile"), ("predict", "--compile"), ("kernel", "--push"),
        ("runs", "--markdown"), ("score", "--json")}
    parser = build_parser()
    for stage, action in switches:
        name, no = action.option_strings
        assert no == "--no-" + name[2:]
        base = [stage, *REQUIRED.get(stage, [])]
        dest = action.dest
        for given, value in (([name], True), ([no], False), ([name, "true"], True),
                             ([name, "false"], False), ([name, "yes"], True), ([name, "0"], False),
                             ([name, "false", name], True), ([name, no], False)):
            assert getattr(parser.parse_args([*base, *given]), dest) is value, (stage, given)
        assert getattr(parser.parse_args(base), dest) == action.default


@pytest.mark.parametrize("given", [["--compile", "maybe"], ["--no-compile", "true"]])
def test_a_bad_boolean_is_a_usage_error(given, capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["oof", *given])
    assert stop.value.code == 2
    assert "Traceback" not in capsys.readouterr().err
