"""Options shared by several stages, and the parsers of their values."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from competition.errors import InputError

TTA_HELP = "none, hflip, vflip, hvflip"  # infer.TTA (not imported here: it loads torch)
CHOICE_RULES = ("one_se", "best")  # infer.search.RULES, the default first (not imported here)


def checkpoint_name(text: str) -> str:
    """--checkpoint-name: a file name, no folder."""
    if not text or Path(text).name != text or text in (".", ".."):
        raise argparse.ArgumentTypeError(f"{text!r}: a file name in fold<K>/, e.g. averaged.pt")
    return text


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def run_list(text: str, option: str) -> tuple[Path, ...]:
    """'folds/a,folds/b' -> the run folders (each must exist)."""
    runs = tuple(Path(r.strip()) for r in text.split(",") if r.strip())
    missing = [r for r in runs if not r.is_dir()]
    if not runs or missing:
        raise InputError(f"{option} {text}: no run folder {missing[0] if missing else ''} "
                         "(folders of fold<K>/best.pt, comma-separated)")
    return runs


def run_weights(text: str | None, runs: tuple, option: str) -> tuple[float, ...]:
    """'1,0.5' -> one positive weight per run; None -> () (equal weights)."""
    if text is None:
        return ()
    try:
        weights = tuple(float(w) for w in text.split(","))
    except ValueError:
        raise InputError(f"{option} {text}: expected comma-separated numbers") from None
    if len(weights) != len(runs) or not all(w > 0 for w in weights):
        raise InputError(f"{option} {text}: needs one positive weight per run ({len(runs)})")
    return weights


def parse_bool(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected true or false")
    return text.lower() in ("true", "1", "yes")


class Switch(argparse.Action):
    """A boolean option: `--x` (true), `--no-x` (false), and `--x true|false` as before."""

    def __init__(self, option_strings, dest, default=False, help=None, **_):
        names = [n for name in option_strings for n in (name, "--no-" + name[2:])]
        super().__init__(names, dest, nargs="?", type=parse_bool, default=default, help=help,
                         metavar="true|false")

    def __call__(self, parser, namespace, value, option_string=None):
        if option_string.startswith("--no-") and value is not None:
            parser.error(f"{option_string} takes no value")
        setattr(namespace, self.dest, not option_string.startswith("--no-") and
                (True if value is None else value))

    def format_usage(self) -> str:
        return " | ".join(self.option_strings)


def flag(p, name: str, help: str, default=False) -> None:
    """A Switch option (default False; None: the preset's, for config fields)."""
    p.add_argument(name, action=Switch, default=default, help=help)


class Alias(argparse.Action):
    """An old spelling of another option (`target`): parses as it does, after one line on
    stderr naming the new spelling; hidden from --help."""

    def __init__(self, option_strings, dest, target=None, **_):
        self.target = target
        super().__init__(option_strings, dest, nargs=target.nargs, type=target.type,
                         choices=target.choices, default=argparse.SUPPRESS,
                         metavar=target.metavar, help=argparse.SUPPRESS)

    def __call__(self, parser, namespace, value, option_string=None):
        warned = namespace.__dict__.setdefault("_deprecated", set())
        if option_string not in warned:
            warned.add(option_string)
            print(f"warning: {option_string} is deprecated; use {self.target.option_strings[0]}",
                  file=sys.stderr)
        self.target(parser, namespace, value, self.target.option_strings[0])


def alias(p, old: str, new: str) -> None:
    """Keep `old` as a deprecated spelling of p's option `new`."""
    p.add_argument(old, action=Alias, dest=p._option_string_actions[new].dest,
                   target=p._option_string_actions[new])


def tuple_of(parse, length: int | None = None):
    """'1,2,3' -> (1, 2, 3), each item parsed; with `length`, exactly that many."""
    def parse_tuple(text: str) -> tuple:
        try:
            items = tuple(parse(x) for x in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated values")
        if length is not None and len(items) != length:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {length} comma-separated "
                                             f"values, got {len(items)}")
        return items
    return parse_tuple


def inference_options(p, batch_size: int = 8) -> None:
    p.add_argument("--data", default="input/severstal-steel-defect-detection",
                   help="dataset folder in Kaggle layout")
    p.add_argument("--batch-size", type=int, default=batch_size, help="images per batch")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="loader processes decoding JPEGs")
    device_option(p)


def device_option(p) -> None:
    from competition.model.devices import DEVICES

    p.add_argument("--device", default="auto", choices=DEVICES,
                   help="auto (default): the GPU when torch can use it, else the CPU, but an "
                   "NVIDIA GPU torch cannot use stops with one line; cuda; cpu (on purpose)")


def speed_options(p) -> None:
    from competition.model.config import CACHES

    p.add_argument("--cache", default="none", choices=CACHES,
                   help="decode each image once: ram (this run, in /dev/shm) or disk "
                   "(kept in --cache-dir, reused while the images are unchanged)")
    p.add_argument("--cache-dir", default="cache", help="where --cache disk keeps its files")
    flag(p, "--compile", "torch.compile the models (the first batch pays the compile time)")


def fold_options(p) -> None:
    p.add_argument("--runs", default="folds", help="folder of fold<K>/best.pt runs; "
                   "comma-separated folders average an ensemble (any architectures)")
    p.add_argument("--weights", default=None, help="one weight per run (default equal); "
                   "oof: 'search' chooses them on the OOF data (2 or more runs)")
    p.add_argument("--classifier-runs", default=None,
                   help="folders of classifier runs (train --task classify), averaged "
                   "apart from the segmenters: their probabilities feed the gates")
    p.add_argument("--classifier-weights", default=None,
                   help="one weight per classifier run (default equal)")
    p.add_argument("--folds-csv", default=None,
                   help="folds file (default: the one the runs were trained on, recorded in "
                   "each fold<K>/config.json and checked to be unchanged)")
    p.add_argument("--folds", default=None, help="comma-separated folds (default: all)")
    p.add_argument("--checkpoint-name", default="best.pt", type=checkpoint_name,
                   help="the segmenter runs' file in fold<K>/: best.pt, or averaged.pt "
                   "(`average`); classifier runs give best.pt")


DEFAULT_CHECKPOINTS = "folds/fold*/best.pt"  # for a postprocess.json that records no ensemble


def checkpoint_options(p) -> None:
    p.add_argument("--checkpoints", default=None,
                   help="glob or comma-separated globs of segmenter checkpoints, averaged "
                   "(--weights: one per comma-separated part, shared by its files); default, "
                   "with no --classifiers either: the ensemble postprocess.json was tuned on")
    p.add_argument("--classifiers", default=None,
                   help="glob(s) of classifier checkpoints (train --task classify), "
                   "averaged apart; needed when postprocess.json gates on them")
    flag(p, "--allow-other-models",
         help="apply postprocess.json to models, weights or TTA other than those it "
         "was tuned on (a warning line instead of a refusal)")


def tuned_models(args, where: Path, views, needs_cls: bool) -> tuple:
    """(segmenters, their weights, classifiers, their weights) for predict, kernel and
    pseudo: --checkpoints/--classifiers as given, or with neither, the ensemble `where` (a
    postprocess.json) records; either way checked against it (infer/tuned.py)."""
    import json
    import sys

    from competition.infer import tuned
    from competition.infer.ensemble import checkpoint_paths

    result = json.loads(Path(where).read_text())  # read_params has checked it
    if args.checkpoints is None and args.classifiers is None and tuned.recorded(
            result, "segmenters")[0]:
        (seg, weights), (cls, cls_weights) = (tuned.recorded(result, role)
                                              for role in tuned.ROLES)
        missing = [p for p in seg + cls if not p.is_file()]
        if missing:
            raise InputError(f"{where}: was tuned on {missing[0]}, which is not found; pass "
                             "the models with --checkpoints (and --classifiers)")
        print(f"models: the ensemble {where} was tuned on: {len(seg)} segmenter(s), "
              f"{len(cls)} classifier(s)")
    else:
        seg, weights = checkpoint_paths(args.checkpoints or DEFAULT_CHECKPOINTS, args.weights)
        cls, cls_weights = (checkpoint_paths(args.classifiers, args.classifier_weights,
                                             "--classifiers") if args.classifiers else ([], None))
    said = tuned.check(result, where, views, seg, weights, cls, cls_weights, needs_cls,
                       args.allow_other_models)
    if said:
        print(said, file=sys.stderr)
    return seg, weights, cls, cls_weights


def search_options(p) -> None:
    p.add_argument("--out", default="submissions",
                   help="folder for postprocess.json and cv_report/")
    p.add_argument("--min-areas", type=tuple_of(int), default=None,
                   help="min-area grid in pixels, comma-separated (default 0..6000)")
    p.add_argument("--oof-dir", default=None,
                   help="folder of the OOF statistics, fold<K>/ (default OUT/oof)")
    p.add_argument("--gates", default=None,
                   help="gate kinds searched beside none, comma-separated, of gate, "
                   "scale, maxprob; 'none' for no gate (default: all)")
    p.add_argument("--gate-sources", default=None,
                   help="image-level sources the gates read, of aux (the segmenters' "
                   "heads) and cls (the classifiers) (default: all recorded)")
    p.add_argument("--choose", default=CHOICE_RULES[0], choices=CHOICE_RULES,
                   help="how each class's setting is chosen: one_se, the simplest of empty "
                   "(predict nothing), the best without a gate, the best gated whose OOF "
                   "Dice is within one standard error (over images) of the best of them; "
                   "best, the best OOF Dice (default: %(default)s)")


def fold_args(args, search_weights: bool = False) -> tuple:
    """--runs, --weights, --classifiers, --classifier-weights (an oof.Runs), --folds-csv
    (default: the folds file the runs record, provenance.trained_folds), --folds (default:
    all of the folds file). search_weights: `--weights search` is accepted (oof's: the OOF
    data chooses the weights; elsewhere they are a given)."""
    from competition.infer.oof import Runs, parse_folds

    segmenters = run_list(args.runs, "--runs")
    classifiers = (run_list(args.classifier_runs, "--classifier-runs")
                   if args.classifier_runs else ())
    search = (args.weights or "").strip() == "search"
    if search and not search_weights:
        raise InputError("--weights search: only `oof` searches the weights; here they are "
                         "those postprocess.json records, or --weights W1,W2")
    if search and len(segmenters) < 2:
        raise InputError(f"--weights search: needs two or more --runs to weigh, got "
                         f"{len(segmenters)} ({args.runs})")
    runs = Runs(segmenters, () if search else run_weights(args.weights, segmenters, "--weights"),
                classifiers,
                run_weights(args.classifier_weights, classifiers, "--classifier-weights"),
                args.checkpoint_name, search)
    if args.folds_csv:
        folds_csv = Path(args.folds_csv)
        if not folds_csv.is_file():
            raise InputError(f"--folds-csv {folds_csv}: no such file (the folds file the runs "
                             "trained on; without --folds-csv, the one they record)")
    else:
        from competition.data.provenance import trained_folds

        wanted = parse_folds(args.folds, None) if args.folds else None
        folds_csv, source = trained_folds(segmenters + classifiers, wanted)
        print(f"folds: {folds_csv} (recorded by {source})")
    return runs, folds_csv, parse_folds(args.folds, folds_csv)


def open_images(args, folder: Path):
    """--cache and --cache-dir of an inference stage: the decoded-image cache of `folder`
    (cache.open_cache, filled with --workers processes, said in one line), or None."""
    from competition.data.cache import open_cache

    images = open_cache(args.cache, folder, args.cache_dir, args.workers)
    if images is not None:
        print(images.describe())
    return images
