"""`oof` and `search`: out-of-fold statistics and the post-processing search on them."""
from __future__ import annotations

from pathlib import Path

from competition.cli.options import (Switch, TTA_HELP, fold_args, fold_options,
                                     inference_options, open_images, search_options,
                                     speed_options)
from competition.errors import InputError


def cmd_oof(args) -> None:
    from competition.infer import oof, tuning
    from competition.infer.ensemble import parse_tta

    runs, folds_csv, folds = fold_args(args, search_weights=True)
    views, data, out = parse_tta(args.tta), Path(args.data), Path(args.out)
    stats_dir = Path(args.oof_dir or out / "oof")
    images = open_images(args, data / "train_images")  # one cache for both passes
    oof.run(data, runs, folds_csv, folds, views, args.batch_size, args.workers, stats_dir,
            images, args.compile, args.device)
    result = tuning.tune(stats_dir, folds, out, args.min_areas, data, *gate_args(args),
                         rule=args.choose)
    print_search(result, out)
    if not args.skip_oof_csv:
        write_oof_csv(data, runs, folds_csv, folds, views, out, args.batch_size, args.workers,
                      result, images, args.compile, args.device)


def write_oof_csv(data: Path, runs, folds_csv: Path, folds: list[int], views, out: Path,
                  batch_size: int, workers: int, result: dict, images=None,
                  compile: bool = False, device: str = "auto") -> float:
    """OUT/oof.csv: the OOF submission with the chosen post-processing (OUT/postprocess.json)
    and the chosen weights where the OOF data chose them, scored from its CSV like any
    other -> its mean Dice."""
    from competition.data.labels import read_table
    from competition.data.metric import score_tables
    from competition.infer.oof import weighed_runs
    from competition.infer.predict import predict_oof
    from competition.infer.search import read_params

    oof_csv = out / "oof.csv"
    predict_oof(data, weighed_runs(runs, result), folds_csv, folds,
                read_params(out / "postprocess.json"), views,
                oof_csv, batch_size, workers, str(out / "postprocess.json"), images, compile,
                device)
    scored = score_tables(read_table(oof_csv)[0], read_table(data / "train.csv")[0])
    print(f"wrote {oof_csv}; scored from the CSV against {data / 'train.csv'}: mean Dice "
          f"{scored['mean_dice']:.5f} (the search: {result['oof_mean_dice']:.5f})")
    return scored["mean_dice"]


def cmd_search(args) -> None:
    from competition.infer import oof, tuning

    out = Path(args.out)
    stats_dir = Path(args.oof_dir or out / "oof")
    folds = oof.parse_folds(args.folds, None) if args.folds else stored_folds(stats_dir)
    data = Path(args.data) if args.data else None
    print_search(tuning.tune(stats_dir, folds, out, args.min_areas, data, *gate_args(args),
                             rule=args.choose), out)


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


def held_out_line(result: dict) -> str:
    """The search's honest estimate beside its tuned figure (search.held_out)."""
    h = result["held_out"]
    where = (f"tuned on the other {h['n_groups'] - 1} fold(s), scored on each"
             if h["groups"] == "folds" else "tuned on one half of the images, scored on the other")
    return (f"held out: mean Dice {h['mean_dice']:.5f} ({where}); the tuned figure "
            f"{result['oof_mean_dice'] - h['mean_dice']:+.5f} against it")


def weights_line(w: dict) -> str:
    """The segmenters' weights the OOF data chose (postprocess.json's "weights")."""
    def shown(j):
        return ",".join(f"{x:.4g}" for x in w["candidates"][j]["shares"])
    chosen, best = w["candidates"][w["chosen"]], w["candidates"][w["best"]]
    why = ("the best" if w["rule"] == "best" else
           f"within one SE ({w['se']:.5f}) of the best, {shown(w['best'])} at "
           f"{best['oof_dice']:.5f}")
    return (f"weights: {shown(w['chosen'])} of {', '.join(w['models'])} (OOF Dice "
            f"{chosen['oof_dice']:.5f}, {why}; {len(w['candidates'])} weightings searched)")


def print_search(result: dict, out: Path) -> None:
    from competition.infer.gates import NONE, describe
    from competition.infer.report import rule_line
    from competition.infer.search import predicts_empty

    print(f"{'class':>5} {'threshold':>9} {'min comp':>8} {'min area':>8} {'gate':>16} "
          f"{'OOF dice':>9} {'no gate':>8} {'raw 0.5':>8} {'empty':>7}")
    for c, v in result["classes"].items():
        raw = "-" if v["raw_dice"] is None else f"{v['raw_dice']:.4f}"
        shown = describe(v.get("gate") or NONE)
        none = v.get("gates", {}).get("none", {}).get("dice", v["oof_dice"])
        area = "empty" if predicts_empty(v) else v["min_area"]
        print(f"{c:>5} {v['threshold']:9.2f} {v['min_component']:8d} {area:>8} "
              f"{shown:>16} {v['oof_dice']:9.4f} {none:8.4f} {raw:>8} {v['all_empty']:7.4f}")
    for c, v in result["classes"].items():
        print(rule_line(c, v, result.get("rule")))
    raw = "-" if result["raw_mean_dice"] is None else f"{result['raw_mean_dice']:.4f}"
    print(f"OOF CV over {result['images']} images: mean Dice {result['oof_mean_dice']:.5f} "
          f"(raw threshold 0.5: {raw}; all-empty baseline {result['all_empty_baseline']:.5f})")
    if result.get("held_out"):
        print(held_out_line(result))
    if result.get("weights"):
        print(weights_line(result["weights"]))
    print(f"wrote {out / 'postprocess.json'} and {out / 'cv_report'}/cv_report.md with plots")


def add(sub) -> None:
    """The parsers of oof, search."""
    p = sub.add_parser("oof", help="out-of-fold statistics of each fold's best.pt, then the "
                       "post-processing search (postprocess.json, CV report)")
    inference_options(p)
    fold_options(p)
    p.add_argument("--tta", default="none,hflip,vflip",
                   help=f"views averaged, comma-separated: {TTA_HELP}")
    search_options(p)
    p.add_argument("--skip-oof-csv", action=Switch,
                   help="do not write OUT/oof.csv (the OOF submission, predicted again)")
    speed_options(p)
    p.set_defaults(func=cmd_oof)

    p = sub.add_parser("search", help="re-run the post-processing search on stored OOF files")
    p.add_argument("--folds", default=None, help="comma-separated folds (default: all stored)")
    search_options(p)
    p.add_argument("--data", default=None, help="dataset for the overlays (default: the OOF's)")
    p.set_defaults(func=cmd_search)
