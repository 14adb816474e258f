"""`kernel`: the Kaggle bundle and its offline rehearsal."""
from __future__ import annotations

from pathlib import Path

from competition.cli.options import Switch, checkpoint_options, tuned_models
from competition.errors import InputError


# the options that say what to build: given without --owner (no build), they are refused
BUILD_OPTIONS = ("checkpoints", "classifiers", "weights", "classifier_weights", "postprocess",
                 "name", "wheels", "wheelhouse", "time_limit", "accelerator",
                 "allow_other_models")


def cmd_kernel(args) -> None:
    from competition.kaggle import bundle as kernel
    from competition.kaggle import upload

    out = Path(args.out)
    if args.owner is None:
        given = [name for name in BUILD_OPTIONS if getattr(args, name) != args.build_defaults[name]]
        if given:
            raise InputError(f"--{given[0].replace('_', '-')} builds a bundle: give --owner "
                             "USER too (without it, --check and --push act on the bundle in "
                             f"{out} as it is)")
        if not (args.check or args.push):
            raise InputError("kernel: --owner USER builds a bundle; without it, --check DATA "
                             f"rehearses and --push uploads the bundle in {out} as it is")
    elif args.push and not args.check:
        raise InputError("--push uploads only a rehearsed bundle: add --check DATA (it "
                         f"rehearses the new bundle first), or push the bundle in {out} as it "
                         "is with `kernel --push` (no --owner)")
    else:
        build(args, out, kernel)
    if args.check:
        result = kernel.rehearse(out, Path(args.check), out / "rehearsal", args.layout)
        print(f"rehearsal: ok: {result} validated against {args.check}/sample_submission.csv; "
              f"recorded in {out / kernel.REHEARSED}")
    if args.push:
        upload.push(out, args.wait)
    elif (out / kernel.REHEARSED).is_file():
        print(f"upload: python -m competition kernel --out {out} --push (this bundle, as "
              f"rehearsed), or by hand: {upload.by_hand(out)}")
    else:
        print(f"upload: rehearse first (python -m competition kernel --out {out} --check DATA),"
              f" then --push; or by hand: {upload.by_hand(out)}")


def build(args, out: Path, kernel) -> None:
    from competition.infer.search import read_params

    wheels = [w.strip() for w in args.wheels.split(",") if w.strip()]
    params = read_params(args.postprocess)  # the kernel predicts with the views it records
    seg, weights, cls, cls_weights = tuned_models(args, Path(args.postprocess),
                                                  params.tta or (), "cls" in params.needs())
    sizes = kernel.build(args.owner, seg, Path(args.postprocess), out, args.name, wheels,
                         Path(args.wheelhouse) if args.wheelhouse else None, args.accelerator,
                         args.time_limit, weights, cls, cls_weights)
    for kind, (folder, size) in sizes.items():
        files = sorted(p.name for p in folder.iterdir())
        print(f"{folder}: {size / 2**20:.1f} MiB: {', '.join(files)}")


def add(sub) -> None:
    """The parsers of kernel."""
    p = sub.add_parser("kernel", help="Kaggle bundle: weights and code datasets, offline "
                       "inference kernel (--push uploads them)")
    p.add_argument("--owner", default=None, help="your Kaggle user name (owns the datasets): "
                   "builds the bundle in --out; without it, --check and --push act on the "
                   "bundle there as it is")
    checkpoint_options(p)
    p.add_argument("--weights", default=None, help="one weight per comma-separated part of "
                   "--checkpoints (default equal)")
    p.add_argument("--classifier-weights", default=None,
                   help="one weight per comma-separated part of --classifiers")
    p.add_argument("--postprocess", default="submissions/postprocess.json")
    p.add_argument("--out", default="kaggle", help="folder of weights/, code/ and kernel/")
    p.add_argument("--name", default="severstal-deeplabv3",
                   help="slug prefix: NAME-weights, NAME-code, NAME-inference")
    p.add_argument("--wheels", default="segmentation-models-pytorch,timm",
                   help="comma-separated packages for the code dataset (pinned to the "
                   "versions installed here unless a spec gives one; '' for none)")
    p.add_argument("--wheelhouse", default=None,
                   help="take those wheels from this folder instead of the package index")
    p.add_argument("--time-limit", type=float, default=55.0, metavar="MINUTES",
                   help="the kernel stops with one line when its projected run passes this "
                        "(default 55; Kaggle kills it at 60 without a word)")
    p.add_argument("--accelerator", default="NvidiaTeslaT4",
                   help="the kernel's machine_shape: NvidiaTeslaT4 (GPU T4 x2) or another GPU "
                   "Kaggle's torch runs on; --push passes it to `kaggle kernels push`")
    p.add_argument("--check", default=None, metavar="DATA",
                   help="then run the kernel here as Kaggle would, offline, on DATA's "
                   "test_images/ (a simulated /kaggle/input), and validate its submission")
    p.add_argument("--layout", choices=["new", "classic"], default="new",
                   help="--check: /kaggle/input as competitions/<slug> and datasets/<owner>/"
                   "<slug> (new) or <slug> for each (classic)")
    p.add_argument("--push", action=Switch,
                   help="upload the bundle with the kaggle CLI (datasets create/version, "
                   "kernels push --accelerator), exactly as rehearsed: one not rehearsed, or "
                   "changed since, is refused")
    p.add_argument("--wait", type=float, default=1200,
                   help="--push: seconds to wait for Kaggle to process the datasets")
    build_defaults = {a.dest: a.default for a in p._actions if a.dest in BUILD_OPTIONS}
    p.set_defaults(func=cmd_kernel, build_defaults=build_defaults)
