"""`python -m competition ablation FILE`: one setting changed at a time on a recipe's model,
each row trained with several seeds, every row scored against the same all-empty values.

An ablation file names a base recipe, the model of it that varies, and the rows:

    base: recipes/demo.yaml          # data, split, the model's preset and overrides
    model: deeplabv3                 # the recipe's model that each row changes
    runs: folds/demo-ablation        # RUNS/<row>-s<seed>/fold<k>/
    out: submissions/demo-ablation   # table.md, table.csv; OUT/<row>-s<seed>/ of full rows
    seeds: [0, 1, 2]                 # the seeds of the rows marked full
    rows:
      - {name: default, full: true}                   # the base model as it is
      - {name: unet, overrides: {arch: unet}}          # screened: one seed, training only
      - {name: longer, overrides: {epochs: 12}, seeds: [0]}

A screened row trains with the first seed and reports its validation Dice per class at the
best epoch. A full row (full: true) trains with every seed and then runs the recipe's
pipeline on that model alone (OOF + search, predict, score against the dataset's test truth;
no kernel), so its OOF CV, held-out estimate and test Dice have a mean and a spread. Every
run is skipped when finished and resumed when interrupted (the pipeline's rules), so a
second call redoes only what is missing and rewrites the table.

Why not a grid-search library: the rows are few and chosen by hand; what matters is that
each runs through the very code a user's run does, and that each reads against the
all-empty value of each class on the same validation images.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, replace
from pathlib import Path

from competition.cli.recipe import (NAME, boolean, fields, ints, load, mapping, path,
                                    read_yaml, text)
from competition.data.labels import CLASSES
from competition.errors import InputError


@dataclass(frozen=True)
class Row:
    name: str
    overrides: dict
    full: bool
    seeds: tuple[int, ...]
    note: str


@dataclass(frozen=True)
class Ablation:
    path: Path
    base: Path
    model: str
    runs: Path
    out: Path
    rows: tuple[Row, ...]  # each with its seeds resolved from the file's


def read(file: str | Path) -> Ablation:
    """An ablation file -> Ablation, every key checked (one InputError line naming it)."""
    file = Path(file)
    raw = read_yaml(file)
    top = f"{file}: "
    values = fields(raw, {"base": (path, ...), "model": (text, ...), "runs": (path, ...),
                          "out": (path, ...), "seeds": (ints(), (0, 1, 2)),
                          "rows": (lambda v, _: v, ...)}, top)
    if not isinstance(values["rows"], list) or not values["rows"]:
        raise InputError(f"{top}rows: expected a list of rows (- name: ... lines), found "
                         f"{values['rows']!r}")
    rows = []
    for i, entry in enumerate(values["rows"]):
        label = f"{top}rows[{i}]."
        row = fields(mapping(entry, label[:-1]), {
            "name": (text, ...), "overrides": (mapping, {}), "full": (boolean, False),
            "seeds": (ints(), None), "note": (text, "")}, label)
        if not NAME.match(row["name"]) or row["name"] in [r.name for r in rows]:
            raise InputError(f"{label}name {row['name']!r}: expected a new name of letters, "
                             "digits, _ . -")
        seeds = row["seeds"] or (values["seeds"] if row["full"] else values["seeds"][:1])
        rows.append(Row(row["name"], row["overrides"], row["full"], tuple(seeds), row["note"]))
    return Ablation(file, values["base"], values["model"], values["runs"], values["out"],
                    tuple(rows))


def row_recipe(ablation: Ablation, base, row: Row, seed: int):
    """The base recipe reduced to the varied model with the row's overrides and `seed`, in
    its own run and output folders, without a kernel or oof.csv."""
    from competition.model.config import from_dict, to_dict
    from competition.model.experiments import KINDS, typed

    found = [m for m in base.models if m.name == ablation.model]
    if not found or found[0].role != "segmenter":
        raise InputError(f"{ablation.path}: model {ablation.model!r}: not a segmenter of "
                         f"{base.path} (its models: {', '.join(m.name for m in base.models)})")
    model = found[0]
    label = f"{ablation.path}: rows[{row.name}].overrides"
    for key in row.overrides:
        if key not in KINDS or key in ("name", "seed"):
            raise InputError(f"{label}: unknown config field {key!r} (value "
                             f"{row.overrides[key]!r}; the seed comes from seeds)")
    changed = {k: typed(label, k, v) for k, v in row.overrides.items()}
    config = from_dict({**to_dict(model.config), **changed, "seed": seed})
    key = f"{row.name}-s{seed}"
    model = replace(model, config=config, run=ablation.runs / key,
                    source=f"{model.source} {row.name} seed {seed}")
    # no oof.csv: predicting the OOF images again only re-checks what the search scored
    return replace(base, models=(model,), out=ablation.out / key,
                   submission=ablation.out / key / "submission.csv", kernel=None,
                   oof=replace(base.oof, oof_csv=False))


def all_empty_by_class(folds_csv: Path, fold: int) -> list[float]:
    """Per class, the share of the fold's images without that class: the Dice of predicting
    nothing (folds.csv's class1..class4 columns say which classes each image has)."""
    import pandas as pd

    table = pd.read_csv(folds_csv)
    held = table[table["fold"] == fold]
    return [float(1.0 - held[f"class{c}"].mean()) for c in CLASSES]


def best_epoch(history: Path) -> dict:
    """history.csv -> {"row": the best epoch's row (the first of the highest val_dice, as fit
    keeps best.pt), "rows": every epoch's row}, the values as floats (NaN where empty)."""
    with history.open() as f:
        rows = [{k: float(v) if v not in ("", None) else math.nan for k, v in r.items()}
                for r in csv.DictReader(f)]
    if not rows:
        raise InputError(f"{history}: no epoch recorded")
    best = max(rows, key=lambda r: (r["val_dice"], -r["epoch"]))
    return {"row": best, "rows": rows}


def first_above(rows: list[dict], c: int, empty: float) -> int | None:
    """The optimizer step of the first epoch whose class-c Dice is above `empty`, or None."""
    for r in rows:
        if r[f"dice_{c}"] > empty + 1e-9:
            return int(r["step"])
    return None


def spread(values) -> str:
    """'mean' for one value, 'mean ± sd' for several (sample standard deviation); '-' for
    none (None and NaN are left out)."""
    import numpy as np

    v = [x for x in values if x is not None and not math.isnan(x)]
    if not v:
        return "-"
    if len(v) == 1:
        return f"{v[0]:.4f}"
    return f"{np.mean(v):.4f} ± {np.std(v, ddof=1):.4f}"


def row_result(ablation: Ablation, row: Row, seed: int, empty: list[float], fold: int) -> dict:
    """One trained (row, seed): the best epoch's validation Dice per class, the steps each
    class needed to leave all-empty; with the pipeline's outputs, OOF CV, held out, test."""
    import json

    run = ablation.runs / f"{row.name}-s{seed}" / f"fold{fold}"
    found = best_epoch(run / "history.csv")
    best = found["row"]
    out = {"row": row.name, "seed": seed, "epoch": int(best["epoch"]), "val": best["val_dice"],
           **{f"dice_{c}": best[f"dice_{c}"] for c in CLASSES},
           **{f"above_{c}": best[f"dice_{c}"] > e + 1e-9 for c, e in zip(CLASSES, empty)},
           **{f"leaves_{c}": first_above(found["rows"], c, e) for c, e in zip(CLASSES, empty)}}
    pp = ablation.out / f"{row.name}-s{seed}" / "postprocess.json"
    if row.full and pp.is_file():
        result = json.loads(pp.read_text())
        out["oof"] = result["oof_mean_dice"]
        out["held_out"] = (result.get("held_out") or {}).get("mean_dice")
    return out


def table(results: list[dict], rows: tuple[Row, ...], empty: list[float],
          test_empty: float | None) -> str:
    """The markdown table: a line per row, mean ± sd over its seeds."""
    import numpy as np

    head = ("| row | seeds | val Dice | " + " | ".join(f"class {c}" for c in CLASSES)
            + " | classes above all-empty | OOF CV | held out | test Dice | note |")
    lines = [head, "|" + "---|" * (head.count("|") - 1),
             f"| all-empty | | {np.mean(empty):.4f} | "
             + " | ".join(f"{e:.4f}" for e in empty) + " | | | | "
             + ("-" if test_empty is None else f"{test_empty:.4f}") + " | |"]
    for row in rows:
        mine = [r for r in results if r["row"] == row.name]
        if not mine:
            continue
        above = " ".join(f"{c}:{sum(r[f'above_{c}'] for r in mine)}/{len(mine)}"
                         for c in CLASSES)
        lines.append(
            f"| {row.name} | {','.join(str(r['seed']) for r in mine)} | "
            f"{spread([r['val'] for r in mine])} | "
            + " | ".join(spread([r[f'dice_{c}'] for r in mine]) for c in CLASSES)
            + f" | {above} | {spread([r.get('oof') for r in mine])} | "
            f"{spread([r.get('held_out') for r in mine])} | "
            f"{spread([r.get('test') for r in mine])} | {row.note} |")
    return "\n".join(lines) + "\n"


def cmd_ablation(args) -> None:
    import competition.cli.pipeline as pipeline
    from competition.files import atomic_path

    ablation = read(args.file)
    base = load(ablation.base)
    wanted = set(args.rows.split(",")) if args.rows else None
    if wanted and wanted - {r.name for r in ablation.rows}:
        raise InputError(f"--rows {args.rows}: unknown row(s) "
                         f"{', '.join(sorted(wanted - {r.name for r in ablation.rows}))}")
    rows = tuple(r for r in ablation.rows if wanted is None or r.name in wanted)
    if args.row_seeds:
        seeds = tuple(int(s) for s in args.row_seeds.split(","))
        rows = tuple(replace(r, seeds=seeds) for r in rows)
    fold = base.models[0].folds[0]
    pipeline.step_folds(base, {"groups": None})  # made once, when missing, for every row
    empty = all_empty_by_class(base.split.file, fold)
    results, test_empty = [], None
    for row in rows:
        for seed in row.seeds:
            recipe = row_recipe(ablation, base, row, seed)
            print(f"ablation: {row.name} seed {seed} ...", flush=True)
            ctx = {"groups": None}
            if row.full:
                pipeline.run_steps(recipe, args, ctx)
            else:
                pipeline.step_train(recipe, ctx)
            result = row_result(ablation, row, seed, empty, fold)
            if ctx.get("score"):
                result["test"] = ctx["score"]["mean_dice"]
                test_empty = ctx["score"]["all_empty_baseline"]
            results.append(result)
    text = table(results, rows, empty, test_empty)
    ablation.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(ablation.out / "table.md") as tmp:
        Path(tmp).write_text(text)
    with atomic_path(ablation.out / "table.csv") as tmp, open(tmp, "w", newline="") as f:
        keys = sorted({k for r in results for k in r}, key=lambda k: (k not in ("row", "seed"), k))
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        writer.writerows(results)
    print(text + f"ablation: wrote {ablation.out / 'table.md'} and table.csv", flush=True)


def add(sub) -> None:
    """The parser of ablation."""
    p = sub.add_parser("ablation", help="one setting changed at a time on a recipe's model, "
                       "with seeds: a table of validation Dice per class against all-empty, "
                       "OOF CV and test Dice (docs/accuracy.md)")
    p.add_argument("file", metavar="FILE", help="ablation file (YAML), e.g. "
                   "recipes/ablation/demo.yaml")
    p.add_argument("--rows", default=None, metavar="A,B",
                   help="only these rows (default: all); the table then has only them")
    p.add_argument("--row-seeds", default=None, metavar="0,1",
                   help="these seeds for every row run (default: each row's own)")
    p.set_defaults(func=cmd_ablation, gpus=None, ddp=None, recipe=None)
