"""`runs`, `curves` and `average`: what training left in its run folders."""
from __future__ import annotations

from pathlib import Path

from competition.cli.options import Switch
from competition.errors import InputError


def cmd_average(args) -> None:
    from competition.train.average import average_run, describe

    summary = average_run(args.run, args.top, args.last, args.bn_batches, args.data, args.fold,
                          args.folds_csv, args.batch_size, args.workers, args.out)
    print(describe(summary))
    out = Path(args.out or Path(args.run) / "averaged.pt")
    print(f"wrote {out} and {out.with_suffix('.json')}")


def cmd_runs(args) -> None:
    from competition.train import runs
    from competition.files import write_csv

    submissions = args.submissions
    if submissions is None:  # the default folder where there is one
        submissions = ["submissions"] if Path("submissions").is_dir() else []
    for folder in submissions:
        if not Path(folder).is_dir():
            raise InputError(f"--submissions {folder}: no such folder")
    rows = runs.sort_rows(runs.table([Path(f) for f in args.folders],
                                     [Path(f) for f in submissions]), args.sort)
    if args.csv:
        write_csv(args.csv, runs.as_frame(rows))
    if not rows:
        print(f"no runs below {', '.join(args.folders)} (a run is a folder with config.json "
              "and history.csv)")
        return
    print(runs.as_markdown(rows) if args.markdown else runs.as_text(rows))
    if args.csv:
        print(f"wrote {args.csv}")


def cmd_curves(args) -> None:
    from competition.train.curves import CURVES, history_path, read_history, write_curves

    paths = [history_path(run) for run in args.runs]
    runs = [(str(path.parent), read_history(path)) for path in paths]  # all read, then drawn
    if args.out:
        write_curves(args.out, runs)
        print(f"wrote {args.out}: the curves of {len(runs)} run(s)")
        return
    for path, run in zip(paths, runs):
        write_curves(path.parent / CURVES, [run])
        print(f"wrote {path.parent / CURVES}: {len(run[1])} epoch(s)")


def add(sub) -> None:
    """The parsers of runs, curves, average."""
    p = sub.add_parser("runs", help="a table of the training runs below folders: model, "
                       "options, epochs, best validation scores, OOF CV (reads files only)")
    p.add_argument("folders", nargs="*", default=["folds"], metavar="FOLDER",
                   help="searched for runs: folders with config.json and history.csv "
                        "(default folds)")
    p.add_argument("--submissions", nargs="+", default=None, metavar="FOLDER",
                   help="searched for oof's postprocess.json, for each run's OOF CV "
                        "(default submissions, where it exists)")
    p.add_argument("--sort", default="run", metavar="COLUMN",
                   help="sort by a column (scores descending); default run")
    p.add_argument("--csv", default=None, metavar="FILE", help="also write the table as CSV")
    p.add_argument("--markdown", action=Switch, help="print a Markdown table")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("curves", help="redraw RUN/curves.png from RUN/history.csv (loss, LR, "
                       "validation Dice or AUC per class), or overlay runs in one PNG (--out)")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder (or its history.csv)")
    p.add_argument("--out", default=None,
                   help="one PNG of every RUN overlaid (default: each RUN/curves.png)")
    p.set_defaults(func=cmd_curves)

    p = sub.add_parser("average", help="average a run's kept epochs (train --keep-top/--keep-"
                       "last), re-estimate BatchNorm, validate -> RUN/averaged.pt")
    p.add_argument("--run", required=True, help="run folder with kept/ (e.g. folds/fold0)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--top", type=int, help="average the K epochs of best validation score")
    which.add_argument("--last", type=int, help="average the K last epochs")
    p.add_argument("--bn-batches", type=int, default=None,
                   help="BatchNorm re-estimation on this many batches of the fold's full-size "
                   "training images (default: all; 0: keep the averaged statistics)")
    p.add_argument("--data", default=None, help="dataset (default: the run's, kept/index.json)")
    p.add_argument("--fold", type=int, default=None, help="default: the run's")
    p.add_argument("--folds-csv", default=None, help="default: the run's")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per batch, BatchNorm and validation (default: the run's "
                   "val_batch_size)")
    p.add_argument("--workers", type=int, default=None,
                   help="loader processes (default: the run's num_workers)")
    p.add_argument("--out", default=None,
                   help="default RUN/averaged.pt (and its .json beside it)")
    p.set_defaults(func=cmd_average)
