"""Recipe files: the models of a submission and how to make it, read by `pipeline`.

    data: input/synthetic                      # dataset folder (Kaggle layout)
    split: {file: folds/demo/folds.csv, n_folds: 5, seed: 42}
    out: submissions/demo                      # oof/, postprocess.json, cv_report/, ...
    models:
      - name: deeplabv3                        # unique; the summary's name for it
        role: segmenter                        # or classifier
        preset: demo_cpu                       # and/or experiment: experiments/x.yaml
        overrides: {cls_weight: 0.2}           # training-config fields over both
        folds: [0]                             # default: every fold of the split
        weight: 1.0                            # its weight in its role's average
        run: folds/demo                        # run folder: RUN/fold<k>/ (default folds/NAME)
    oof: {tta: [none, hflip], gates: null, gate_sources: null, min_areas: null, oof_csv: true,
          weights: given}                      # search: chosen on the OOF data
    inference: {batch_size: 8, workers: null}
    kernel: {owner: demo-user, out: kaggle/demo, check: true}   # absent or null: no bundle

docs/pipeline.md lists every key. Every key is checked when the file is read, before
anything runs: an unknown key, a value of the wrong type or out of range, a model whose
config does not build, a role its config's task contradicts — each one InputError line
naming the file, the key and the value. Paths are relative to the folder the pipeline runs
in (the repository root, as every stage), not to the recipe.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, replace
from pathlib import Path

from competition.errors import InputError, about

ROLES = {"segmenter": "segment", "classifier": "classify"}  # role -> its config's task
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
VIEWS = ("none", "hflip", "vflip", "hvflip")  # infer.ensemble.TTA (not imported: torch)


@dataclass(frozen=True)
class Split:
    file: Path  # made with the `folds` stage when missing
    n_folds: int = 5
    seed: int = 42


@dataclass(frozen=True)
class Model:
    name: str
    role: str  # segmenter | classifier
    config: object  # the resolved TrainConfig
    folds: tuple[int, ...]
    weight: float
    run: Path  # RUN/fold<k>/ holds fold k's run
    source: str  # how the config was given, for the summary: preset/experiment/overrides

    def fold_dir(self, k: int) -> Path:
        return self.run / f"fold{k}"


@dataclass(frozen=True)
class Oof:
    tta: tuple[str, ...] = ("none", "hflip", "vflip")
    gates: tuple[str, ...] | None = None  # None: every kind; (): none only
    gate_sources: tuple[str, ...] | None = None  # None: every source recorded
    min_areas: tuple[int, ...] | None = None  # None: the search's grid
    oof_csv: bool = True  # OUT/oof.csv, the OOF submission predicted again and scored
    weights: str = "given"  # search: the OOF data chooses the segmenters' weights


@dataclass(frozen=True)
class Inference:
    batch_size: int = 8
    workers: int | None = None  # None: one per CPU, at most 8


@dataclass(frozen=True)
class Kernel:
    owner: str
    out: Path = Path("kaggle")
    name: str = "severstal-deeplabv3"
    accelerator: str = "NvidiaTeslaT4"
    time_limit: float = 55.0
    wheels: tuple[str, ...] = ("segmentation-models-pytorch", "timm")
    wheelhouse: Path | None = None
    check: bool = True  # rehearse the kernel offline on the dataset's test images
    layout: str = "new"


@dataclass(frozen=True)
class Recipe:
    path: Path
    data: Path
    split: Split
    models: tuple[Model, ...]
    out: Path
    submission: Path
    truth: Path | None
    oof: Oof
    inference: Inference
    kernel: Kernel | None

    def of_role(self, role: str) -> tuple[Model, ...]:
        return tuple(m for m in self.models if m.role == role)

    @property
    def folds(self) -> tuple[int, ...]:
        return self.models[0].folds


# value parsers: (value, label) -> the value, or InputError "LABEL VALUE: expected ..."
def _bad(label: str, value, expected: str) -> InputError:
    return InputError(f"{label} {value!r}: {expected}")


def text(value, label):
    if not isinstance(value, str) or not value.strip():
        raise _bad(label, value, "expected text")
    return value


def path(value, label):
    return Path(text(value, label))


def integer(low: int = 0):
    def parse(value, label):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(label, value, "expected an integer")
        if value < low:
            raise _bad(label, value, f"must be at least {low}")
        return value
    return parse


def positive(value, label):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise _bad(label, value, "expected a positive number")
    return float(value)


def boolean(value, label):
    if not isinstance(value, bool):
        raise _bad(label, value, "expected true or false")
    return value


def optional(parse):
    return lambda value, label: None if value is None else parse(value, label)


def one_of(valid):
    def parse(value, label):
        if value not in valid:
            raise _bad(label, value, f"expected one of {', '.join(valid)}")
        return value
    return parse


def names(valid, empty_ok: bool = False):
    """A list (or comma-separated text) of names from `valid`, none repeated."""
    def parse(value, label):
        items = ([v.strip() for v in value.split(",") if v.strip()]
                 if isinstance(value, str) else value)
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise _bad(label, value, "expected a list of names")
        wrong = [v for v in items if v not in valid]
        if wrong or len(set(items)) != len(items) or not (items or empty_ok):
            raise _bad(label, value, f"expected distinct names of {', '.join(valid)}")
        return tuple(items)
    return parse


def ints(low: int = 0):
    def parse(value, label):
        if not isinstance(value, list) or not value:
            raise _bad(label, value, "expected a list of integers, e.g. [0, 1, 2]")
        return tuple(integer(low)(v, label) for v in value)
    return parse


def mapping(value, label) -> dict:
    if not isinstance(value, dict):
        raise _bad(label, value, "expected a mapping (key: value lines)")
    return value


def fields(raw: dict, spec: dict, label: str) -> dict:
    """raw's keys parsed by spec {key: (parse, default)}; `...` as default: required. An
    unknown or missing key -> InputError naming it."""
    for key in raw:
        if key not in spec:
            close = difflib.get_close_matches(str(key), list(spec), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(spec)}"
            raise InputError(f"{label}unknown key {key!r} (value {raw[key]!r}); {hint}")
    out = {}
    for key, (parse, default) in spec.items():
        if key in raw:
            out[key] = parse(raw[key], f"{label}{key}")
        elif default is ...:
            raise InputError(f"{label}{key}: missing (required)")
        else:
            out[key] = default
    return out


def model_config(recipe: Path, label: str, values: dict):
    """The TrainConfig of a model entry: defaults <- preset <- experiment <- overrides."""
    from competition.model.config import PRESETS
    from competition.model.experiments import KINDS, resolve, typed

    overrides = mapping(values["overrides"], f"{label}overrides")
    for key in overrides:
        if key not in KINDS or key == "name":
            close = difflib.get_close_matches(str(key), list(KINDS), n=1)
            raise InputError(f"{label}overrides: unknown config field {key!r} (value "
                             f"{overrides[key]!r})" + (f"; did you mean {close[0]!r}?"
                                                       if close else ""))
    typed_values = {k: typed(f"{label}overrides", k, v) for k, v in overrides.items()}
    preset = values["preset"]
    if preset is not None and preset not in PRESETS:
        raise InputError(f"{label}preset {preset!r}: unknown preset; valid: "
                         f"{', '.join(PRESETS)}")
    experiment = values["experiment"]
    with about(f"{label}experiment {str(experiment)!r}" if experiment else label[:-1]):
        config, _ = resolve(experiment, preset, typed_values)
    task = ROLES[values["role"]]
    if config.task != task:
        raise InputError(f"{label}role {values['role']!r}: its config trains task "
                         f"{config.task!r} (a {values['role']} trains {task!r})")
    source = " ".join(x for x in (preset, str(experiment) if experiment else None,
                                  " ".join(f"{k}={v}" for k, v in overrides.items()))
                      if x)
    return config, source or config.name


MODEL_KEYS = {"name": (text, ...), "role": (one_of(tuple(ROLES)), ...),
              "preset": (optional(text), None), "experiment": (optional(path), None),
              "overrides": (mapping, {}), "folds": (optional(ints()), None),
              "weight": (positive, 1.0), "run": (optional(path), None)}


def read_models(recipe: Path, raw, split: Split) -> tuple[Model, ...]:
    if not isinstance(raw, list) or not raw:
        raise _bad(f"{recipe}: models", raw, "expected a list of models (- name: ... lines)")
    models = []
    for i, entry in enumerate(raw):
        label = f"{recipe}: models[{i}]."
        values = fields(mapping(entry, label[:-1]), MODEL_KEYS, label)
        if not NAME.match(values["name"]):
            raise _bad(f"{label}name", values["name"], "expected letters, digits, _ . -")
        if values["name"] in [m.name for m in models]:
            raise _bad(f"{label}name", values["name"], "another model has this name")
        folds = values["folds"] or tuple(range(split.n_folds))
        for k in folds:
            if k >= split.n_folds:
                raise _bad(f"{label}folds", list(folds),
                           f"fold {k} is not one of split.n_folds {split.n_folds}")
        if len(set(folds)) != len(folds):
            raise _bad(f"{label}folds", list(folds), "a fold is repeated")
        if models and tuple(sorted(folds)) != tuple(sorted(models[0].folds)):
            raise _bad(f"{label}folds", list(folds), "every model of the ensemble needs the "
                       f"folds of models[0] ({list(models[0].folds)}): oof averages each "
                       "fold's models")
        config, source = model_config(recipe, label, values)
        run = values["run"] or Path("folds") / values["name"]
        if run in [m.run for m in models]:
            raise _bad(f"{label}run", str(run), "another model trains in this folder")
        models.append(Model(values["name"], values["role"], config, tuple(sorted(folds)),
                            values["weight"], run, source))
    if not any(m.role == "segmenter" for m in models):
        raise InputError(f"{recipe}: models: no segmenter (role: segmenter): the masks come "
                         "from the segmenters; classifiers only gate them")
    return tuple(models)


def read_kernel(recipe: Path, raw) -> Kernel | None:
    from competition.kaggle.bundle import ACCELERATORS, OWNER

    if raw is None:
        return None
    label = f"{recipe}: kernel."
    values = fields(mapping(raw, label[:-1]), {
        "owner": (text, ...), "out": (path, Kernel.out), "name": (text, Kernel.name),
        "accelerator": (one_of(ACCELERATORS), Kernel.accelerator), "time_limit": (positive, Kernel.time_limit),
        "wheels": (wheel_list, Kernel.wheels),
        "wheelhouse": (optional(path), None), "check": (boolean, True),
        "layout": (one_of(("new", "classic")), "new")}, label)
    if not OWNER.match(values["owner"]):
        raise _bad(f"{label}owner", values["owner"], "not a Kaggle user name (letters, "
                   "digits, - and _)")
    if values["time_limit"] > 60:
        raise _bad(f"{label}time_limit", values["time_limit"], "minutes in (0, 60]")
    return Kernel(**values)


PLACEHOLDER_OWNER = "YOUR-KAGGLE-NAME"  # the shipped recipes' kernel.owner, to be replaced


def with_owner(recipe: Recipe, owner: str | None) -> Recipe:
    """`pipeline --owner NAME`: the recipe with kernel.owner NAME. A kernel still owned by
    the shipped placeholder is refused before anything runs: a bundle built for it could
    never be pushed."""
    from competition.kaggle.bundle import OWNER

    if recipe.kernel is None:
        if owner is not None:
            raise InputError(f"--owner {owner}: {recipe.path} builds no kernel (no kernel: "
                             "section)")
        return recipe
    if owner is not None:
        if not OWNER.match(owner):
            raise InputError(f"--owner {owner!r}: not a Kaggle user name (letters, digits, "
                             "- and _)")
        recipe = replace(recipe, kernel=replace(recipe.kernel, owner=owner))
    if recipe.kernel.owner == PLACEHOLDER_OWNER:
        raise InputError(f"{recipe.path}: kernel.owner is {PLACEHOLDER_OWNER}: pass --owner "
                         "NAME (your Kaggle user name) or write it in the recipe")
    return recipe


def wheel_list(value, label) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _bad(label, value, "expected a list of package names (or specs), [] for none")
    return tuple(value)


def read_yaml(recipe: Path) -> dict:
    from competition.model.experiments import read_mapping

    try:
        return read_mapping(recipe)
    except InputError as e:  # its words say "experiment file"
        raise InputError(str(e).replace("experiment file", "recipe file").replace(
            "training-config fields", "recipe keys")) from None


def load(recipe: str | Path, need_data: bool = True) -> Recipe:
    """Read and check a recipe file -> Recipe. Every refusal is one InputError line.
    need_data=False reads a recipe whose dataset is not here yet (`bench flops`)."""
    recipe = Path(recipe)
    raw = read_yaml(recipe)
    top = f"{recipe}: "
    values = fields(raw, {
        "data": (path, ...), "split": (mapping, {}), "models": (lambda v, _: v, ...),
        "out": (path, Path("submissions")), "submission": (optional(path), None),
        "truth": (lambda v, lab: v if v is False else optional(path)(v, lab), None),
        "oof": (mapping, {}), "inference": (mapping, {}), "kernel": (lambda v, _: v, None)},
        top)
    data = values["data"]
    if need_data and not (data / "train.csv").is_file():
        raise _bad(f"{top}data", str(data), "no train.csv there (a dataset folder in the "
                   "Kaggle layout: train.csv, train_images/, test_images/)")
    split = Split(**fields(values["split"], {
        "file": (path, Path("folds/folds.csv")), "n_folds": (integer(2), 5),
        "seed": (integer(0), 42)}, f"{top}split."))
    models = read_models(recipe, values["models"], split)
    from competition.infer.gates import GATES, SOURCES

    oof = Oof(**fields(values["oof"], {
        "tta": (names(VIEWS), Oof.tta),
        "gates": (optional(names(("none", *GATES), True)), None),
        "gate_sources": (optional(names(tuple(SOURCES))), None),
        "min_areas": (optional(ints()), None), "oof_csv": (boolean, True),
        "weights": (one_of(("given", "search")), "given")}, f"{top}oof."))
    segmenters = [m for m in models if m.role == "segmenter"]
    if oof.weights == "search" and len(segmenters) < 2:
        raise _bad(f"{top}oof.weights", oof.weights, "expected two or more segmenters to "
                   f"weigh (models has {len(segmenters)})")
    if oof.gates is not None:  # "none" is always searched: [none] = [] = no gate
        oof = replace(oof, gates=tuple(g for g in oof.gates if g != "none"))
    inference = Inference(**fields(values["inference"], {
        "batch_size": (integer(1), 8), "workers": (optional(integer(0)), None)},
        f"{top}inference."))
    out = values["out"]
    truth = values["truth"]
    if truth is None:  # the dataset's own truth where it has one (synthetic data)
        truth = data / "test_truth.csv" if (data / "test_truth.csv").is_file() else None
    elif truth is False:
        truth = None
    elif not truth.is_file():
        raise _bad(f"{top}truth", str(truth), "no such file")
    return Recipe(recipe, data, split, models, out, values["submission"] or
                  out / "submission.csv", truth, oof, inference,
                  read_kernel(recipe, values["kernel"]))
