"""Experiment files: a YAML mapping of training-config fields, with the preset it starts from.

    preset: deeplabv3_r34          # optional (the default); `name:` works too, as config.json
    arch: unet                     # records its preset under `name`
    encoder: efficientnet-b3
    lr: 3.0e-4
    val_min_area: [600, 600, 900, 2000]

`train --config-file FILE` resolves defaults <- preset <- file <- command-line options (the
options still win; `--preset PRESET` on the command line replaces the file's preset). Every key
is a TrainConfig field, and every value has the field's type, so a typo or a `yes` where a
number belongs stops the run before it starts instead of training another config. A file must
make a valid config by itself over its preset (config.check), so that a file that loads once
loads every time. JSON is YAML: a run's saved config.json is an experiment file that repeats
the run. Each refusal is one InputError naming the file, the key and the value.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path

import yaml

from competition.model.config import (OLD_LOSS_FIELDS, PRESETS, TrainConfig, build_config,
                                field_kinds, upgrade_loss)
from competition.data import provenance
from competition.errors import InputError, about, where

PRESET_KEYS = ("preset", "name")  # name: as config.json records the preset
# what a run's config.json records beside its config (its split, data/provenance.py): read
# as an experiment file, a run's config.json repeats the run's config, not where it trained
RECORD_KEYS = (provenance.KEY,)
# field -> (type, tuple length); a config.json saved before the loss registry has these two
KINDS = {**field_kinds(), **{field: (float, 0) for field in OLD_LOSS_FIELDS}}
KIND_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "text"}
KIND_PLURALS = {int: "integers", float: "numbers"}  # the tuple fields' items
# YAML 1.1 (PyYAML) reads 1e-3 as text (its floats need a dot): a float field takes it as the
# number it means, as YAML 1.2 and JSON read it
EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def read_mapping(path: Path) -> dict:
    """The YAML mapping in `path`. A missing or unreadable file, a syntax error (with its
    line) or anything but a mapping (a list, a bare value, an empty file) -> InputError."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"{path}: experiment file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read it ({e})") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark, context = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
        problem = getattr(e, "problem", None) or " ".join(str(e).split())
        if context is not None and getattr(e, "context", None):
            problem += f" ({e.context} from line {context.line + 1})"
        raise InputError(f"{where(path, mark.line + 1 if mark else None)}: not valid YAML: "
                         f"{problem}") from None
    if values is None:
        raise InputError(f"{path}: the file is empty: expected a mapping of training-config "
                         "fields (key: value lines)")
    if not isinstance(values, dict):
        raise InputError(f"{path}: expected a mapping of training-config fields (key: value "
                         f"lines), got {described(values)}")
    return values


def described(value) -> str:
    """What YAML made of a value, for an error message."""
    if isinstance(value, bool):
        return "true/false (YAML reads yes, no, on and off so too)"
    words = {type(None): "no value", int: "an integer", float: "a number", str: "text",
             list: "a list", dict: "a mapping"}
    return words.get(type(value), type(value).__name__)


def scalar(value, kind: type):
    """`value` as a `kind`, or None when it is not one: a bool is never a number nor a number
    a bool; an integer is a fine float; 1e-3 read as text is the float it means."""
    if kind is bool or isinstance(value, bool):
        return value if kind is bool and isinstance(value, bool) else None
    if kind is float and isinstance(value, str) and EXPONENT.fullmatch(value):
        return float(value)
    if kind is float and isinstance(value, int):
        return float(value)
    return value if isinstance(value, kind) else None


def typed(path: Path, key: str, value):
    """A file's value for field `key` as the config holds it (a tuple for the tuple fields);
    one of the wrong type, or a list of the wrong length -> InputError."""
    kind, length = KINDS[key]
    if not length:
        converted = scalar(value, kind)
        if converted is None:
            raise InputError(f"{path}: {key} {value!r}: expected {KIND_WORDS[kind]}, got "
                             f"{described(value)}")
        return converted
    items = [scalar(v, kind) for v in value] if isinstance(value, list) else []
    if len(items) != length or None in items:
        example = list(getattr(TrainConfig, key))
        raise InputError(f"{path}: {key} {value!r}: expected a list of {length} "
                         f"{KIND_PLURALS[kind]}, e.g. {example}")
    return tuple(items)


def preset_of(path: Path, raw: dict) -> str | None:
    """The preset a file names (`preset:` or `name:`), None when it names none."""
    named = {key: raw[key] for key in PRESET_KEYS if key in raw}
    for key, value in named.items():
        if not isinstance(value, str) or value not in PRESETS:
            raise InputError(f"{path}: {key} {value!r}: unknown preset; valid: "
                             f"{', '.join(PRESETS)}")
    if len(set(named.values())) > 1:
        raise InputError(f"{path}: preset {raw['preset']!r} and name {raw['name']!r} name two "
                         "presets: keep one")
    return next(iter(named.values()), None)


def read_experiment(path: str | Path) -> tuple[str | None, dict]:
    """(the preset a file names or None, its other fields typed) — not checked as a whole
    yet (load does). An unknown key -> InputError suggesting the closest field."""
    path = Path(path)
    raw = {k: v for k, v in read_mapping(path).items() if k not in RECORD_KEYS}
    known = [k for k in KINDS if k != "name"] + list(PRESET_KEYS)
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = (f"did you mean {close[0]!r}?" if close else
                    f"valid: {', '.join(sorted(known))}")
            raise InputError(f"{path}: unknown key {key!r} (value {raw[key]!r}); {hint}")
    values = {key: typed(path, key, value) for key, value in raw.items()
              if key not in PRESET_KEYS}
    return preset_of(path, raw), upgrade_loss(values)


def load(path: str | Path) -> tuple[str | None, dict]:
    """read_experiment, and the file's config over its preset checked (config.check): an
    out-of-range value -> InputError naming the file, the key and the value."""
    preset, values = read_experiment(path)
    with about(path):
        build_config(preset or TrainConfig.name, **values)
    return preset, values


def resolve(config_file: str | Path | None, preset: str | None,
            options: dict) -> tuple[TrainConfig, dict]:
    """defaults <- preset <- config file <- options (None: not given) -> (the config, the
    explicit values: the file's and the options', and `name` when a preset was named). A
    resumed run compares the explicit values with its saved config, so a file behaves as the
    same options given on the command line."""
    file_preset, values = load(config_file) if config_file else (None, {})
    preset = preset or file_preset
    explicit = {**values, **{k: v for k, v in options.items() if v is not None}}
    config = build_config(preset or TrainConfig.name, **explicit)
    if preset:
        explicit["name"] = preset
    return config, explicit
