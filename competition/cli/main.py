"""`python -m competition <stage>`: one subcommand per stage; each reads and writes files.

Stage modules are imported inside their handlers so that `--help` and light stages start
quickly. An InputError reaches the terminal as one line and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from competition.errors import InputError, one_line

TTA_HELP = "none, hflip, vflip, hvflip"  # infer.TTA (not imported here: it loads torch)


def cmd_synth(args) -> None:
    from competition.data.synth import make_dataset

    if args.compare:
        return compare_synth(args)
    if args.train < 1 or args.test < 1:
        raise InputError(f"--train {args.train} --test {args.test}: need at least one of each")
    info = make_dataset(args.out, args.train, args.test, args.seed, args.layout, args.workers)
    counts = ", ".join(f"class {c}: {n}" for c, n in info["train_images_per_class"].items())
    print(f"wrote {args.out}: {args.train} train images ({counts}; "
          f"defect-free: {info['train_defect_free']}), {args.test} test images")


def compare_synth(args) -> None:
    from competition.data import fidelity
    from competition.data.labels import read_train
    from competition.data.synth import train_masks

    real = fidelity.summary(fidelity.table_stats(read_train(args.compare)))
    synthetic = fidelity.summary(fidelity.table_stats(train_masks(args.train, args.seed)))
    print(f"real: {args.compare}; synthetic: the masks of `synth --train {args.train} "
          f"--seed {args.seed}` (no image drawn)")
    print(fidelity.report(real, synthetic))
    misses = fidelity.misses(real, synthetic)
    print("\n".join(misses) if misses else
          f"every median within {fidelity.MEDIAN_FACTOR}x of the real one, every p90 area "
          f"within {fidelity.P90_AREA_FACTOR}x")


def cmd_folds(args) -> None:
    from competition.files import write_csv
    from competition.data.folds import fold_counts, make_folds
    from competition.data.labels import load_train, read_image_labels

    if args.labels:
        image_ids, labels = read_image_labels(args.labels)
    else:
        image_ids, labels = load_train(args.data)
    folds = make_folds(image_ids, labels, args.n_folds, args.seed)
    write_csv(args.out, folds)
    print(fold_counts(folds).to_string())
    print(f"wrote {args.out}: {len(folds)} images in {args.n_folds} folds (seed {args.seed})")


def cmd_check(args) -> None:
    from competition.data.images import list_images, read_image
    from competition.data.labels import load_train, read_sample
    from competition.progress import progress

    data = Path(args.data)
    image_ids, labels = load_train(data, check_images=False)
    paths = [data / "train_images" / i for i in image_ids]
    if (data / "sample_submission.csv").exists():
        sample = read_sample(data / "sample_submission.csv")
        test_ids = list_images(data / "test_images")
        missing = sorted(set(sample.pairs.ImageId) - set(test_ids))
        if missing:
            raise InputError(f"{data / 'sample_submission.csv'}: no image file "
                             f"{data / 'test_images' / missing[0]} ({len(missing)} missing)")
        paths += [data / "test_images" / i for i in test_ids]
    for path in progress(paths, desc="decode images", unit="img"):
        read_image(path)
    print(f"{data}: ok: {len(image_ids)} train images, {len(labels)} defect masks, "
          f"{len(paths) - len(image_ids)} test images, all readable and 1600x256")


def cmd_baseline(args) -> None:
    from competition.data import submission
    from competition.data.labels import read_sample

    frame = submission.write(args.out, read_sample(args.sample), {})
    print(f"wrote {args.out}: all-empty submission, {len(frame)} rows")


def cmd_validate(args) -> None:
    from competition.data.submission import validate

    table = validate(args.submission, args.sample)
    filled = int((table.EncodedPixels != "").sum())
    print(f"{args.submission}: valid, {len(table)} rows, {filled} non-empty masks")


def cmd_score(args) -> None:
    from competition.data.labels import read_table
    from competition.data.metric import score_tables

    submission, _, _ = read_table(args.submission)
    truth, _, _ = read_table(args.truth)
    shared = set(submission.ImageId) & set(truth.ImageId)
    if len(truth) and not shared:
        print(f"warning: none of the submission's images is in {args.truth}: "
              "is it the truth for these images?", file=sys.stderr)
    result = score_tables(submission, truth)
    print(f"{args.submission} against {args.truth}: {result['pairs']} (image, class) pairs")
    print(f"{'class':>6} {'dice':>8}")
    for c, v in result["per_class"].items():
        print(f"{c:>6} {v:8.5f}")
    print(f"{'mean':>6} {result['mean_dice']:8.5f}   (all-empty baseline "
          f"{result['all_empty_baseline']:.5f})")
    if args.json:
        print(json.dumps(result))


def cmd_train(args) -> None:
    import torch.distributed as dist

    from competition.model.config import TrainConfig
    from competition.model.experiments import resolve
    from competition.train.fit import fit, summary

    options = {f: getattr(args, f) for f in TrainConfig.__dataclass_fields__ if f != "name"}
    config, explicit = resolve(args.config_file, args.config, options)
    out = args.out or f"folds/fold{args.fold}"
    try:
        row = fit(config, args.data, args.fold, out, args.folds, args.resume, args.overwrite,
                  explicit)
        if row and os.environ.get("RANK", "0") == "0":
            print(f"fold {args.fold}: {summary(row)}; wrote {out}/best.pt, last.pt, "
                  "history.csv")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


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


def checkpoint_name(text: str) -> str:
    """--checkpoint-name: a file name, no folder."""
    if not text or Path(text).name != text or text in (".", ".."):
        raise argparse.ArgumentTypeError(f"{text!r}: a file name in fold<K>/, e.g. averaged.pt")
    return text


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def fold_args(args) -> tuple:
    """--runs, --weights, --classifiers, --classifier-weights (an oof.Runs), --folds-csv
    (default: the first run's folds.csv), --folds (default: all of folds.csv)."""
    from competition.infer.oof import Runs, parse_folds

    segmenters = run_list(args.runs, "--runs")
    classifiers = (run_list(args.classifier_runs, "--classifier-runs")
                   if args.classifier_runs else ())
    runs = Runs(segmenters, run_weights(args.weights, segmenters, "--weights"), classifiers,
                run_weights(args.classifier_weights, classifiers, "--classifier-weights"),
                args.checkpoint_name)
    folds_csv = Path(args.folds_csv or segmenters[0] / "folds.csv")
    return runs, folds_csv, parse_folds(args.folds, folds_csv)


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


def cmd_oof(args) -> None:
    from competition.infer import oof
    from competition.infer.ensemble import parse_tta

    runs, folds_csv, folds = fold_args(args)
    views, data, out = parse_tta(args.tta), Path(args.data), Path(args.out)
    stats_dir = Path(args.oof_dir or out / "oof")
    images = open_images(args, data / "train_images")  # one cache for both passes
    oof.run(data, runs, folds_csv, folds, views, args.batch_size, args.workers, stats_dir,
            images, args.compile)
    result = oof.tune(stats_dir, folds, out, args.min_areas, data, *gate_args(args))
    print_search(result, out)
    if args.skip_oof_csv:
        return
    # the OOF submission with the chosen post-processing, scored from its CSV like any other
    from competition.data.labels import read_table
    from competition.data.metric import score_tables
    from competition.infer.predict import predict_oof
    from competition.infer.search import read_params

    oof_csv = out / "oof.csv"
    predict_oof(data, runs, folds_csv, folds, read_params(out / "postprocess.json"), views,
                oof_csv, args.batch_size, args.workers, str(out / "postprocess.json"), images,
                args.compile)
    scored = score_tables(read_table(oof_csv)[0], read_table(data / "train.csv")[0])
    print(f"wrote {oof_csv}; scored from the CSV against {data / 'train.csv'}: mean Dice "
          f"{scored['mean_dice']:.5f} (the search: {result['oof_mean_dice']:.5f})")


def open_images(args, folder: Path):
    """--cache and --cache-dir of an inference stage: the decoded-image cache of `folder`
    (cache.open_cache, filled with --workers processes, said in one line), or None."""
    from competition.data.cache import open_cache

    images = open_cache(args.cache, folder, args.cache_dir, args.workers)
    if images is not None:
        print(images.describe())
    return images


def cmd_search(args) -> None:
    from competition.infer import oof

    out = Path(args.out)
    stats_dir = Path(args.oof_dir or out / "oof")
    folds = oof.parse_folds(args.folds, None) if args.folds else stored_folds(stats_dir)
    data = Path(args.data) if args.data else None
    print_search(oof.tune(stats_dir, folds, out, args.min_areas, data, *gate_args(args)), out)


def gate_args(args) -> tuple:
    """--gates and --gate-sources -> (kinds or None, sources or None), checked."""
    from competition.infer.gates import GATES, SOURCES

    def parse(text, valid, option, extra=()):
        if text is None:
            return None
        chosen = [x.strip() for x in text.split(",") if x.strip()]
        wrong = [x for x in chosen if x not in valid and x not in extra]
        if wrong or not chosen:
            raise InputError(f"{option} {text}: unknown {wrong[0] if wrong else 'value'!r}; "
                             f"valid: {', '.join([*extra, *valid])}")
        return [x for x in chosen if x in valid]
    return (parse(args.gates, GATES, "--gates", ("none",)),
            parse(args.gate_sources, SOURCES, "--gate-sources"))


def stored_folds(stats_dir: Path) -> list[int]:
    """The folds whose OOF statistics are under STATS/fold<k>/meta.json."""
    found = sorted(int(p.parent.name[4:]) for p in stats_dir.glob("fold*/meta.json")
                   if p.parent.name[4:].isdigit())
    if not found:
        raise InputError(f"{stats_dir}: no OOF statistics (fold<K>/meta.json); run "
                         "`python -m competition oof` first")
    return found


def print_search(result: dict, out: Path) -> None:
    from competition.infer.gates import NONE, describe

    print(f"{'class':>5} {'threshold':>9} {'min comp':>8} {'min area':>8} {'gate':>16} "
          f"{'OOF dice':>9} {'no gate':>8} {'raw 0.5':>8} {'empty':>7}")
    for c, v in result["classes"].items():
        raw = "-" if v["raw_dice"] is None else f"{v['raw_dice']:.4f}"
        shown = describe(v.get("gate") or NONE)
        none = v.get("gates", {}).get("none", {}).get("dice", v["oof_dice"])
        print(f"{c:>5} {v['threshold']:9.2f} {v['min_component']:8d} {v['min_area']:8d} "
              f"{shown:>16} {v['oof_dice']:9.4f} {none:8.4f} {raw:>8} {v['all_empty']:7.4f}")
    raw = "-" if result["raw_mean_dice"] is None else f"{result['raw_mean_dice']:.4f}"
    print(f"OOF CV over {result['images']} images: mean Dice {result['oof_mean_dice']:.5f} "
          f"(raw threshold 0.5: {raw}; all-empty baseline {result['all_empty_baseline']:.5f})")
    print(f"wrote {out / 'postprocess.json'} and {out / 'cv_report'}/cv_report.md with plots")


def params_and_views(args) -> tuple:
    """--postprocess and --tta -> (Params, views): the views given, else those the file was
    tuned with, else none,hflip,vflip; a warning when they differ from the file's."""
    from competition.infer.ensemble import parse_tta
    from competition.infer.search import read_params

    params = read_params(args.postprocess)
    if params.tta:
        parse_tta(params.tta, source=f"{args.postprocess}: \"tta\"")
    views = parse_tta(args.tta or params.tta or "none,hflip,vflip")
    if params.tta and tuple(views) != params.tta:
        print(f"warning: TTA {','.join(views)} differs from {','.join(params.tta)}, the views "
              f"{args.postprocess} was tuned with", file=sys.stderr)
    return params, views


def cmd_pseudo(args) -> None:
    from competition.infer import pseudo
    from competition.infer.ensemble import checkpoint_paths

    rule = pseudo.Rule(args.confident_high, args.confident_low, args.source)
    pseudo.check_rule(rule)
    params, views = params_and_views(args)
    seg, weights = checkpoint_paths(args.checkpoints, args.weights)
    cls, cls_weights = (checkpoint_paths(args.classifiers, args.classifier_weights,
                                         "--classifiers") if args.classifiers else ([], None))
    out = Path(args.out)
    summary = pseudo.make(Path(args.data), seg, params, views, out, rule, args.batch_size,
                          args.workers, weights, cls, cls_weights, args.postprocess)
    print(f"wrote {out}: train.csv, train_images/ ({summary['kept']} {summary['links']}s to "
          f"{Path(args.data) / 'test_images'}), summary.json; train with --pseudo {out} "
          "--pseudo-share 0.15")


def cmd_predict(args) -> None:
    from competition.infer import predict
    from competition.infer.ensemble import checkpoint_paths

    if args.time_limit is not None and not args.time_limit > 0:
        raise InputError(f"--time-limit {args.time_limit}: must be a positive number of minutes")
    params, views = params_and_views(args)
    data = Path(args.data)
    if args.oof:
        out = Path(args.out or "submissions/oof.csv")
        frame = predict.predict_oof(data, *fold_args(args), params, views, out,
                                    args.batch_size, args.workers, args.postprocess,
                                    open_images(args, data / "train_images"), args.compile)
    else:
        out = Path(args.out or "submissions/submission.csv")
        seg, weights = checkpoint_paths(args.checkpoints, args.weights)
        cls, cls_weights = (checkpoint_paths(args.classifiers, args.classifier_weights,
                                             "--classifiers")
                            if args.classifiers else ([], None))
        frame = predict.predict_test(data, seg, params, views, out, args.batch_size,
                                     args.workers, Path(args.sample) if args.sample else None,
                                     None if args.time_limit is None else args.time_limit * 60,
                                     weights, cls, cls_weights, args.postprocess,
                                     open_images(args, data / "test_images"), args.compile)
    filled = int((frame.EncodedPixels != "").sum())
    print(f"wrote {out}: {len(frame)} rows, {filled} non-empty masks (validated)")


def config_options(parser) -> None:
    """One --option per TrainConfig field (default: the preset's value)."""
    from competition.model.config import TrainConfig, field_kinds

    for name, (kind, length) in field_kinds().items():
        if name == "name":
            continue
        default = getattr(TrainConfig, name)
        parse = {bool: parse_bool, int: int, float: float, str: str}[kind]
        if length:
            parse = tuple_of(parse)
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=parse,
                            default=None, metavar=kind.__name__.upper(),
                            help=f"(default {default!r}" + (", comma-separated" if length
                                                            else "") + ", or the preset's)")


def parse_bool(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected true or false")
    return text.lower() in ("true", "1", "yes")


def tuple_of(parse):
    def parse_tuple(text: str) -> tuple:
        try:
            return tuple(parse(x) for x in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated values")
    return parse_tuple


def cmd_kernel(args) -> None:
    from competition.kaggle import bundle as kernel
    from competition.infer.ensemble import checkpoint_paths

    out = Path(args.out)
    wheels = [w.strip() for w in args.wheels.split(",") if w.strip()]
    seg, weights = checkpoint_paths(args.checkpoints, args.weights)
    cls, cls_weights = (checkpoint_paths(args.classifiers, args.classifier_weights,
                                         "--classifiers") if args.classifiers else ([], None))
    sizes = kernel.build(args.owner, seg, Path(args.postprocess), out, args.name, wheels,
                         Path(args.wheelhouse) if args.wheelhouse else None, args.accelerator,
                         args.time_limit, weights, cls, cls_weights)
    for kind, (folder, size) in sizes.items():
        files = sorted(p.name for p in folder.iterdir())
        print(f"{folder}: {size / 2**20:.1f} MiB: {', '.join(files)}")
    if args.check:
        result = kernel.rehearse(out, Path(args.check), out / "rehearsal", args.layout)
        print(f"rehearsal: ok: {result} validated against {args.check}/sample_submission.csv")
    if args.push:
        kernel.push(out, args.wait)
    else:
        print(f"upload: python -m competition kernel ... --push, or by hand: {kernel.by_hand(out)}")


def cmd_bench(args) -> None:
    from competition.bench import benches as bench

    bench.BENCHES[args.what](args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m competition",
        description="Severstal steel-defect pipeline: each stage reads files and writes files.")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="<stage>")

    p = sub.add_parser("synth", help="write a synthetic dataset in the Kaggle layout")
    p.add_argument("--out", default="input/synthetic", help="dataset folder to (re)write")
    p.add_argument("--train", type=int, default=400, help="number of train images")
    p.add_argument("--test", type=int, default=100, help="number of test images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layout", choices=["current", "original"], default="current",
                   help="train.csv layout: ImageId,ClassId,EncodedPixels or ImageId_ClassId")
    p.add_argument("--compare", default=None, metavar="TRAIN_CSV",
                   help="write nothing: compare the masks of --train images with a real "
                        "train.csv's (area, components, runs, box, edge; per class)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes drawing images (default: one per CPU, at most 8)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("folds", help="stratified folds over the four classes and 'no defect'")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="dataset folder (train.csv, train_images/)")
    source.add_argument("--labels", help="or image-level labels: a CSV with columns ImageId,"
                        "c1,c2,c3,c4 (0/1 per class; other columns ignored)")
    p.add_argument("--n-folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default="folds/folds.csv")
    p.set_defaults(func=cmd_folds)

    p = sub.add_parser("check", help="read every label and decode every image of a dataset")
    p.add_argument("--data", required=True)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("baseline", help="write the all-empty submission for a sample")
    p.add_argument("--sample", required=True, help="sample_submission.csv")
    p.add_argument("--out", default="submissions/empty.csv")
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("validate", help="check a submission against the sample submission")
    p.add_argument("--submission", required=True)
    p.add_argument("--sample", required=True)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("score", help="score a submission against a truth CSV (mean Dice)")
    p.add_argument("--truth", required=True, help="truth CSV, either layout")
    p.add_argument("--submission", required=True, help="submission CSV, either layout")
    p.add_argument("--json", action="store_true", help="end with one JSON line of the scores")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("train", help="train one fold (torchrun --nproc_per_node=N for DDP)")
    p.add_argument("--data", default="input/severstal-steel-defect-detection",
                   help="dataset folder in Kaggle layout")
    p.add_argument("--fold", type=int, required=True, help="the fold to validate on")
    p.add_argument("--config", default=None,
                   help="preset: deeplabv3_r34 (default), deeplabv3_r101, demo_cpu "
                        "(segmenters; --cls-weight W adds an image-level head), "
                        "classifier_r34, demo_cpu_cls (image-level classifiers)")
    p.add_argument("--config-file", default=None, metavar="FILE",
                   help="an experiment file: YAML (or a run's config.json) setting config "
                        "fields and maybe `preset:`; the options given here still win "
                        "(docs/experiments.md)")
    p.add_argument("--folds", default="folds/folds.csv", help="folds file (`folds` stage)")
    p.add_argument("--out", default=None, help="output folder (default folds/fold<K>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--overwrite", action="store_true",
                   help="start again in an --out that holds a run")
    config_options(p)
    p.set_defaults(func=cmd_train)

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
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
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

    def inference_options(p, batch_size: int = 8) -> None:
        p.add_argument("--data", default="input/severstal-steel-defect-detection",
                       help="dataset folder in Kaggle layout")
        p.add_argument("--batch-size", type=int, default=batch_size, help="images per batch")
        p.add_argument("--workers", type=int, default=default_workers(),
                       help="loader processes decoding JPEGs")

    def speed_options(p) -> None:
        from competition.model.config import CACHES

        p.add_argument("--cache", default="none", choices=CACHES,
                       help="decode each image once: ram (this run, in /dev/shm) or disk "
                       "(kept in --cache-dir, reused while the images are unchanged)")
        p.add_argument("--cache-dir", default="cache", help="where --cache disk keeps its files")
        p.add_argument("--compile", action="store_true",
                       help="torch.compile the models (the first batch pays the compile time)")

    def fold_options(p) -> None:
        p.add_argument("--runs", default="folds", help="folder of fold<K>/best.pt runs; "
                       "comma-separated folders average an ensemble (any architectures)")
        p.add_argument("--weights", default=None, help="one weight per run (default equal)")
        p.add_argument("--classifier-runs", default=None,
                       help="folders of classifier runs (train --task classify), averaged "
                       "apart from the segmenters: their probabilities feed the gates")
        p.add_argument("--classifier-weights", default=None,
                       help="one weight per classifier run (default equal)")
        p.add_argument("--folds-csv", default=None,
                       help="folds file (default: the first run's folds.csv)")
        p.add_argument("--folds", default=None, help="comma-separated folds (default: all)")
        p.add_argument("--checkpoint-name", default="best.pt", type=checkpoint_name,
                       help="the segmenter runs' file in fold<K>/: best.pt, or averaged.pt "
                       "(`average`); classifier runs give best.pt")

    def checkpoint_options(p) -> None:
        p.add_argument("--checkpoints", default="folds/fold*/best.pt",
                       help="glob or comma-separated globs of segmenter checkpoints, averaged "
                       "(--weights: one per comma-separated part, shared by its files)")
        p.add_argument("--classifiers", default=None,
                       help="glob(s) of classifier checkpoints (train --task classify), "
                       "averaged apart; needed when postprocess.json gates on them")

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

    p = sub.add_parser("oof", help="out-of-fold statistics of each fold's best.pt, then the "
                       "post-processing search (postprocess.json, CV report)")
    inference_options(p)
    fold_options(p)
    p.add_argument("--tta", default="none,hflip,vflip",
                   help=f"views averaged, comma-separated: {TTA_HELP}")
    search_options(p)
    p.add_argument("--skip-oof-csv", action="store_true",
                   help="do not write OUT/oof.csv (the OOF submission, predicted again)")
    speed_options(p)
    p.set_defaults(func=cmd_oof)

    p = sub.add_parser("search", help="re-run the post-processing search on stored OOF files")
    p.add_argument("--folds", default=None, help="comma-separated folds (default: all stored)")
    search_options(p)
    p.add_argument("--data", default=None, help="dataset for the overlays (default: the OOF's)")
    p.set_defaults(func=cmd_search)

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
    p.add_argument("--oof", action="store_true", help="predict each fold's validation images "
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

    p = sub.add_parser("kernel", help="Kaggle bundle: weights and code datasets, offline "
                       "inference kernel (--push uploads them)")
    p.add_argument("--owner", required=True, help="your Kaggle user name (owns the datasets)")
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
    p.add_argument("--push", action="store_true",
                   help="upload with the kaggle CLI (datasets create/version, kernels push)")
    p.add_argument("--wait", type=float, default=1200,
                   help="--push: seconds to wait for Kaggle to process the datasets")
    p.set_defaults(func=cmd_kernel)

    p = sub.add_parser("bench", help="benchmarks, measured side by side in one run")
    p.add_argument("what", choices=["rle", "score", "train", "predict", "postprocess"])
    p.add_argument("--masks", type=int, default=200, help="rle: number of synthetic masks")
    p.add_argument("--real", default=None, metavar="CSV",
                   help="rle: also time the masks of this train.csv (either layout)")
    p.add_argument("--repeat", type=int, default=5, help="rle: timing rounds (best is kept)")
    p.add_argument("--images", type=int, default=None,
                   help="score: test images to score (5506); predict: images to predict "
                   "(5506 on CUDA, 8 on CPU); train: images of a timed loader epoch (256)")
    p.add_argument("--folds", type=int, default=5, help="predict: models in the ensemble")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="predict: loader processes decoding JPEGs")
    p.add_argument("--masks-pp", type=int, default=22024,
                   help="predict, postprocess: masks post-processed and encoded on one core")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default="deeplabv3_r34", help="train: preset to measure")
    p.add_argument("--batch-size", type=int, default=None,
                   help="train: per-step batch (default: the preset's on CUDA, 4 on CPU); "
                   "predict: images per batch (default 8)")
    p.add_argument("--steps", type=int, default=None,
                   help="train: timed optimizer updates (default 30 on CUDA, 2 on CPU)")
    p.add_argument("--warmup", type=int, default=None,
                   help="train: untimed updates first (default 5 on CUDA, 1 on CPU)")
    p.add_argument("--seeds", action="store_true",
                   help="train: add the seeds' model (torchvision DeepLabV3-R101, stride 8)")
    p.add_argument("--compile", action="store_true",
                   help="train, predict: add a row with the model torch.compile'd")
    p.add_argument("--loader", action="store_true",
                   help="train: time the loader alone, without and with an image cache")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except InputError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
