"""`predict` and `pseudo`: the ensemble on the test images."""
from __future__ import annotations

import time
from pathlib import Path

from competition.cli.options import (Switch, TTA_HELP, checkpoint_options, fold_args,
                                     fold_options, inference_options, open_images,
                                     speed_options, tuned_models)
from competition.errors import InputError


def params_and_views(args) -> tuple:
    """--postprocess and --tta -> (Params, views): the views given, else those the file was
    tuned with, else none,hflip,vflip (other views than the file's: tuned_models refuses)."""
    from competition.infer.ensemble import parse_tta
    from competition.infer.search import read_params

    params = read_params(args.postprocess)
    if params.tta:
        parse_tta(params.tta, source=f"{args.postprocess}: \"tta\"")
    return params, parse_tta(args.tta or params.tta or "none,hflip,vflip")


def cmd_predict(args) -> None:
    started = time.perf_counter()  # --time-limit counts from here: imports and loading count
    from competition.infer import predict

    if args.time_limit is not None and not args.time_limit > 0:
        raise InputError(f"--time-limit {args.time_limit}: must be a positive number of minutes")
    params, views = params_and_views(args)
    data = Path(args.data)
    if args.oof:
        import json

        from competition.infer.oof import weighed_runs

        out = Path(args.out or "submissions/oof.csv")
        runs, folds_csv, folds = fold_args(args)
        if args.weights is None:  # the weights the OOF data chose, where it chose them
            runs = weighed_runs(runs, json.loads(Path(args.postprocess).read_text()))
        frame = predict.predict_oof(data, runs, folds_csv, folds, params, views, out,
                                    args.batch_size, args.workers, args.postprocess,
                                    open_images(args, data / "train_images"), args.compile,
                                    args.device)
    else:
        out = Path(args.out or "submissions/submission.csv")
        seg, weights, cls, cls_weights = tuned_models(args, Path(args.postprocess), views,
                                                      "cls" in params.needs())
        frame = predict.predict_test(data, seg, params, views, out, args.batch_size,
                                     args.workers, Path(args.sample) if args.sample else None,
                                     None if args.time_limit is None else args.time_limit * 60,
                                     weights, cls, cls_weights, args.postprocess,
                                     open_images(args, data / "test_images"), args.compile,
                                     started, args.device)
    filled = int((frame.EncodedPixels != "").sum())
    print(f"wrote {out}: {len(frame)} rows, {filled} non-empty masks (validated)")


def cmd_pseudo(args) -> None:
    from competition.infer import pseudo

    rule = pseudo.Rule(args.confident_high, args.confident_low, args.source)
    pseudo.check_rule(rule)
    params, views = params_and_views(args)
    seg, weights, cls, cls_weights = tuned_models(args, Path(args.postprocess), views,
                                                  "cls" in params.needs() or args.source in ("auto", "cls"))
    out = Path(args.out)
    summary = pseudo.make(Path(args.data), seg, params, views, out, rule, args.batch_size,
                          args.workers, weights, cls, cls_weights, args.postprocess,
                          args.device)
    print(f"wrote {out}: train.csv, train_images/ ({summary['kept']} {summary['links']}s to "
          f"{Path(args.data) / 'test_images'}), summary.json; train with --pseudo {out} "
          "--pseudo-share 0.15")


def add(sub) -> None:
    """The parsers of predict, pseudo."""
    p = sub.add_parser("predict", help="fold ensemble + TTA + post-processing -> submission CSV")
    inference_options(p)
    checkpoint_options(p)
    p.add_argument("--tta", default=None,
                   help=f"views ({TTA_HELP}); default: those postprocess.json was tuned with")
    p.add_argument("--postprocess", default="submissions/postprocess.json")
    p.add_argument("--sample", default=None, help="default DATA/sample_submission.csv")
    p.add_argument("--out", default=None,
                   help="default submissions/submission.csv (--oof: submissions/oof.csv)")
    p.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                   help="stop with one line, writing nothing, as soon as the measured rate "
                        "projects the whole prediction past this (the kernel passes what is "
                        "left of its hour)")
    p.add_argument("--oof", action=Switch, help="predict each fold's validation images "
                   "with its own model (train layout, for `score --truth train.csv`)")
    fold_options(p)
    speed_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("pseudo", help="pseudo-labels: the test images whose every class the "
                       "ensemble calls confidently present or absent -> a dataset in the Kaggle "
                       "layout for train --pseudo DIR")
    inference_options(p)
    checkpoint_options(p)
    p.add_argument("--weights", default=None, help="one weight per comma-separated part of "
                   "--checkpoints (default equal)")
    p.add_argument("--classifier-weights", default=None,
                   help="one weight per comma-separated part of --classifiers")
    p.add_argument("--tta", default=None,
                   help=f"views ({TTA_HELP}); default: those postprocess.json was tuned with")
    p.add_argument("--postprocess", default="submissions/postprocess.json",
                   help="the post-processing (and gates) that make the masks, as predict's")
    p.add_argument("--out", default="input/pseudo",
                   help="the dataset folder to (re)write: train.csv, train_images/, summary.json")
    p.add_argument("--confident-high", type=float, default=0.95,
                   help="a class is present where its image-level probability is above this "
                   "and its post-processed mask is not empty (default 0.95, 1st place's)")
    p.add_argument("--confident-low", type=float, default=0.05,
                   help="absent where the probability is below this and the mask is empty "
                   "(default 0.05); an image is kept when all four classes are one or the other")
    p.add_argument("--source", default="auto",
                   help="the image-level probability: cls (the classifiers), aux (the "
                   "segmenters' heads), maxprob (the largest pixel probability); auto (default):"
                   " the first of these the models give")
    p.set_defaults(func=cmd_pseudo)
