"""`train`: one fold of one model (torchrun for several GPUs)."""
from __future__ import annotations

import os

from competition.cli.options import Switch, alias, device_option, tuple_of


def cmd_train(args) -> None:
    import torch.distributed as dist

    from competition.model.config import TrainConfig
    from competition.model.experiments import resolve
    from competition.train.fit import fit
    from competition.train.history import summary

    options = {f: getattr(args, f) for f in TrainConfig.__dataclass_fields__ if f != "name"}
    config, explicit = resolve(args.config_file, args.preset, options)
    out = args.out or f"folds/fold{args.fold}"
    try:
        row = fit(config, args.data, args.fold, out, args.folds_csv, args.resume, args.overwrite,
                  explicit, args.device)
        if row and os.environ.get("RANK", "0") == "0":
            print(f"fold {args.fold}: {summary(row)}; wrote {out}/best.pt, last.pt, "
                  "history.csv")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


PRESET_ROLES = {"demo_cpu": "CPU demo segmenter", "classifier_r34": "image-level classifier",
                "demo_cpu_cls": "CPU demo classifier"}

# config fields whose option has another name: the one every stage uses for that meaning
OPTION_NAMES = {"num_workers": "--workers"}


def config_options(parser) -> None:
    """One --option per TrainConfig field (default: the preset's value), its help the field's
    comment (cli/config_help.py); booleans are --x/--no-x (or --x true|false)."""
    from competition.cli.config_help import field_comments, help_text, metavar
    from competition.model.config import TrainConfig, field_kinds

    comments = field_comments()
    for name, (kind, length) in field_kinds().items():
        if name == "name":
            continue
        default = getattr(TrainConfig, name)
        option = OPTION_NAMES.get(name, "--" + name.replace("_", "-"))
        helped = help_text(name, default, length, comments[name])
        if kind is bool:
            parser.add_argument(option, dest=name, action=Switch, default=None, help=helped)
            continue
        parse = {int: int, float: float, str: str}[kind]
        if length:
            parse = tuple_of(parse, length)
        parser.add_argument(option, dest=name, type=parse, default=None,
                            metavar=metavar(name, kind, length), help=helped)
    alias(parser, "--num-workers", "--workers")


def add(sub) -> None:
    """The parsers of train."""
    from competition.model.config import PRESETS

    p = sub.add_parser("train", help="train one fold (torchrun --nproc_per_node=N for DDP)")
    p.add_argument("--data", default="input/severstal-steel-defect-detection",
                   help="dataset folder in Kaggle layout")
    p.add_argument("--fold", type=int, required=True, help="the fold to validate on")
    p.add_argument("--preset", default=None, metavar="NAME",
                   help="the defaults' starting point, one of: " + ", ".join(
                       f"{name} ({PRESET_ROLES.get(name, 'segmenter')})" for name in PRESETS)
                   + " (default deeplabv3_r34; --cls-weight W adds a segmenter an image-level "
                   "head)")
    p.add_argument("--config-file", default=None, metavar="FILE",
                   help="an experiment file: YAML (or a run's config.json) setting config "
                        "fields and maybe `preset:`; the options given here still win "
                        "(docs/experiments.md)")
    p.add_argument("--folds-csv", default="folds/folds.csv", metavar="FILE",
                   help="folds file (`folds` stage)")
    p.add_argument("--out", default=None, help="output folder (default folds/fold<K>)")
    p.add_argument("--resume", action=Switch, help="continue the run in --out")
    p.add_argument("--overwrite", action=Switch,
                   help="start again in an --out that holds a run")
    device_option(p)
    config_options(p)
    alias(p, "--config", "--preset")
    alias(p, "--folds", "--folds-csv")
    p.set_defaults(func=cmd_train)
