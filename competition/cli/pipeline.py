"""`pipeline RECIPE`: a whole submission from a recipe file (recipe.py), step by step.

    folds    the split file, made when missing
    train    every (model, fold) of the recipe: a finished run skipped, an interrupted one
             resumed, a missing one started (in this process; --gpus/--ddp: launch.py)
    oof      the OOF statistics of the recipe's ensemble (OUT/oof/fold<k>/)
    search   postprocess.json and cv_report/ (and OUT/oof.csv, scored)
    predict  the tuned ensemble on the test images -> the submission (then validated, and
             scored where a truth file exists: these two always run)
    kernel   the Kaggle bundle and its offline rehearsal (never pushed)

then one summary: the runs table, the OOF CV per class with the gates chosen, the test
score, each step's time.

Re-running a recipe continues where it stopped. A run is finished when its last.pt is at the
config's final epoch and best.pt exists; a last.pt of another config is refused (one line).
The other steps record what they were made from in OUT/pipeline.json: the recipe options
they use and the size and modification time of every input file. A step is skipped when
those are unchanged and all its outputs exist; anything else re-runs it (a retrained model,
another TTA, a deleted output). The stages write their outputs atomically, so a step killed
midway leaves the old outputs or none. A step that fails names itself and the command that
continues.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from competition.cli.recipe import Recipe, load, with_owner
from competition.errors import InputError, one_line

STATE = "pipeline.json"  # in the recipe's OUT: what each step was made from


def fingerprint(paths) -> dict:
    """{path: [bytes, mtime_ns]} of each path (a folder: its own entry; missing: None)."""
    out = {}
    for p in paths:
        try:
            st = Path(p).stat()
            out[str(p)] = [st.st_size, st.st_mtime_ns]
        except FileNotFoundError:
            out[str(p)] = None
    return out


class Ledger:
    """OUT/pipeline.json: per step, the options and input fingerprints of its last success."""

    def __init__(self, folder: Path):
        self.path = folder / STATE
        try:
            self.steps = json.loads(self.path.read_text())["steps"]
        except (OSError, ValueError, KeyError, TypeError):
            self.steps = {}

    @staticmethod
    def key(options: dict, inputs) -> dict:
        return json.loads(json.dumps({"options": options, "inputs": fingerprint(inputs)},
                                     default=str))

    def fresh(self, step: str, options: dict, inputs, outputs) -> bool:
        return (self.steps.get(step) == self.key(options, inputs)
                and all(Path(o).exists() for o in outputs))

    def record(self, step: str, options: dict, inputs) -> None:
        from competition.files import write_json

        self.steps[step] = self.key(options, inputs)
        write_json(self.path, {"steps": self.steps})


def checkpoints(recipe: Recipe, role: str) -> list[Path]:
    return [m.fold_dir(k) / "best.pt" for m in recipe.of_role(role) for k in recipe.folds]


def all_checkpoints(recipe: Recipe) -> list[Path]:
    return checkpoints(recipe, "segmenter") + checkpoints(recipe, "classifier")


def step_folds(recipe: Recipe, ctx) -> str:
    import pandas as pd

    split, made = recipe.split, False
    if not split.file.is_file():
        from competition.data.folds import make_folds
        from competition.data.labels import load_train
        from competition.files import write_csv

        image_ids, labels = load_train(recipe.data)
        write_csv(split.file, make_folds(image_ids, labels, split.n_folds, split.seed))
        made = True
    have = set(pd.read_csv(split.file).fold.astype(int))
    missing = [k for k in recipe.folds if k not in have]
    if missing:
        raise InputError(f"{split.file}: no fold {missing[0]} (it holds {sorted(have)}); the "
                         f"recipe's models ask folds {list(recipe.folds)}")
    return f"made {split.file}" if made else f"{split.file} exists"


def run_state(model, k: int) -> str:
    """'done' (last.pt at the config's final epoch, best.pt there), 'resume' (a last.pt of
    this config before its end; or a run to extend to more epochs) or 'new' (no last.pt).
    A last.pt of another config, or of more epochs, -> InputError."""
    from competition.model import checkpoint
    from competition.model.config import differences

    last = model.fold_dir(k) / "last.pt"
    if not last.is_file():
        return "new"
    state = checkpoint.load(last)
    saved = checkpoint.config_of(state, last)
    diffs = differences(saved, dataclasses.replace(model.config, epochs=saved.epochs))
    if diffs or model.config.epochs < saved.epochs:
        said = diffs[0] if diffs else f"epochs: {saved.epochs} != {model.config.epochs}"
        raise InputError(f"{last}: a run of another config than model {model.name}'s "
                         f"({said}): move the folder away or give the model another `run`")
    done = int(state["epoch"]) >= model.config.epochs
    return "done" if done and (model.fold_dir(k) / "best.pt").is_file() else "resume"


def step_train(recipe: Recipe, ctx) -> str:
    import competition.cli.launch as launch
    from competition.files import write_json
    from competition.model.config import to_dict

    todo, counts = [], {"done": 0, "resume": 0, "new": 0}
    for model in recipe.models:
        for k in model.folds:
            state = run_state(model, k)
            counts[state] += 1
            print(f"train: {model.name} fold {k}: " + {
                "done": "finished, skipped", "resume": "interrupted, resumed",
                "new": "started"}[state], flush=True)
            if state != "done":
                todo.append((model, k, state == "resume"))
    if ctx["groups"] is None:
        from competition.train.fit import fit

        for model, k, resume in todo:
            fit(model.config, recipe.data, k, model.fold_dir(k), recipe.split.file,
                resume=resume, overwrite=not resume, explicit=to_dict(model.config))
    else:
        jobs = []
        for model, k, resume in todo:
            config_file = model.run / "pipeline-config.json"
            write_json(config_file, to_dict(model.config))
            jobs.append(launch.Job(model.name, k, model.fold_dir(k), config_file, resume))
        launch.run_jobs(jobs, ctx["groups"], recipe.data, recipe.split.file)
    return (f"{counts['done']} finished (skipped), {counts['resume']} resumed, "
            f"{counts['new']} new")


def runs_of(recipe: Recipe):
    from competition.infer.oof import Runs

    seg, cls = recipe.of_role("segmenter"), recipe.of_role("classifier")
    return Runs(tuple(m.run for m in seg), tuple(m.weight for m in seg),
                tuple(m.run for m in cls), tuple(m.weight for m in cls),
                search_weights=recipe.oof.weights == "search")


def workers(recipe: Recipe) -> int:
    from competition.cli.options import default_workers

    w = recipe.inference.workers
    return default_workers() if w is None else w


def step_oof(recipe: Recipe, ctx) -> str:
    from competition.infer import oof

    oof.run(recipe.data, runs_of(recipe), recipe.split.file, list(recipe.folds),
            recipe.oof.tta, recipe.inference.batch_size, workers(recipe), recipe.out / "oof")
    return f"{len(recipe.folds)} fold(s) -> {recipe.out / 'oof'}"


def step_search(recipe: Recipe, ctx) -> str:
    from competition.cli.oof import print_search, write_oof_csv
    from competition.infer import tuning

    o = recipe.oof
    result = tuning.tune(recipe.out / "oof", list(recipe.folds), recipe.out, o.min_areas,
                         recipe.data, None if o.gates is None else list(o.gates),
                         None if o.gate_sources is None else list(o.gate_sources))
    print_search(result, recipe.out)
    if o.oof_csv:
        write_oof_csv(recipe.data, runs_of(recipe), recipe.split.file, list(recipe.folds),
                      o.tta, recipe.out, recipe.inference.batch_size, workers(recipe), result)
    return f"OOF CV {result['oof_mean_dice']:.5f}"


def tuned_ensemble(postprocess: Path) -> tuple:
    """(params, segmenters, weights, classifiers, weights) postprocess.json was tuned on,
    checked as predict checks them (infer/tuned.py)."""
    from competition.infer import tuned
    from competition.infer.search import read_params

    params = read_params(postprocess)
    result = json.loads(postprocess.read_text())
    (seg, w), (cls, cw) = (tuned.recorded(result, role) for role in tuned.ROLES)
    said = tuned.check(result, postprocess, params.tta, seg, w, cls, cw,
                       "cls" in params.needs(), False)
    if said:
        print(said, file=sys.stderr)
    return params, seg, w, cls, cw


def step_predict(recipe: Recipe, ctx) -> str:
    from competition.infer.predict import predict_test

    params, seg, w, cls, cw = tuned_ensemble(recipe.out / "postprocess.json")
    predict_test(recipe.data, seg, params, params.tta, recipe.submission,
                 recipe.inference.batch_size, workers(recipe), None, None, w, cls, cw,
                 str(recipe.out / "postprocess.json"))
    return f"wrote {recipe.submission}"


def check_submission(recipe: Recipe, ctx) -> str:
    """Validate the submission against the sample; score it where a truth file exists."""
    from competition.cli.submission import check_truth
    from competition.data.labels import read_table
    from competition.data.metric import score_tables
    from competition.data.submission import validate

    table = validate(recipe.submission, recipe.data / "sample_submission.csv")
    said = f"valid ({len(table)} rows)"
    if recipe.truth is not None:
        submission, truth = read_table(recipe.submission)[0], read_table(recipe.truth)[0]
        check_truth(submission, truth, recipe.submission, recipe.truth)
        ctx["score"] = score_tables(submission, truth)
        said += f"; test Dice {ctx['score']['mean_dice']:.5f} against {recipe.truth}"
    return said


def step_kernel(recipe: Recipe, ctx) -> str:
    from competition.kaggle import bundle

    k = recipe.kernel
    params, seg, w, cls, cw = tuned_ensemble(recipe.out / "postprocess.json")
    bundle.build(k.owner, seg, recipe.out / "postprocess.json", k.out, k.name, list(k.wheels),
                 k.wheelhouse, k.accelerator, k.time_limit, w, cls, cw)
    if not k.check:
        return f"wrote {k.out} (not rehearsed; not pushed)"
    result = bundle.rehearse(k.out, recipe.data, k.out / "rehearsal", k.layout)
    same = result.read_bytes() == recipe.submission.read_bytes()
    ctx["rehearsal"] = (f"the offline kernel's submission.csv is "
                        f"{'identical to' if same else 'NOT identical to'} {recipe.submission}")
    return f"wrote {k.out}, rehearsed offline: {ctx['rehearsal']} (not pushed)"


def steps(recipe: Recipe) -> list[tuple]:
    """(name, function, options, inputs, outputs) of each step; inputs None: not recorded
    in the ledger (folds and train have their own rules, the checks always run)."""
    out, o, pp = recipe.out, recipe.oof, recipe.out / "postprocess.json"
    ckpts = all_checkpoints(recipe)
    models = [[m.name, m.role, str(m.run), m.weight] for m in recipe.models]
    stats = [out / "oof" / f"fold{k}" / n for k in recipe.folds
             for n in ("meta.json", "stats.npy")]
    listed = [
        ("folds", step_folds, None, None, None),
        ("train", step_train, None, None, None),
        ("oof", step_oof, {"models": models, "folds": recipe.folds, "tta": o.tta,
                           **({"weights": o.weights} if o.weights != "given" else {})},
         [*ckpts, recipe.split.file, recipe.data / "train.csv"],
         [out / "oof" / f"fold{k}" / "meta.json" for k in recipe.folds]),
        ("search", step_search, {"gates": o.gates, "gate_sources": o.gate_sources,
                                 "min_areas": o.min_areas, "oof_csv": o.oof_csv},
         stats + (ckpts if o.oof_csv else []),
         [pp, out / "cv_report" / "cv_report.md"] + ([out / "oof.csv"] if o.oof_csv else [])),
        ("predict", step_predict, {"submission": recipe.submission},
         [pp, *ckpts, recipe.data / "sample_submission.csv", recipe.data / "test_images"],
         [recipe.submission]),
        ("validate/score", check_submission, None, None, None),
    ]
    if recipe.kernel is not None:
        k = recipe.kernel
        listed.append(("kernel", step_kernel, dataclasses.asdict(k),
                       [pp, *ckpts, recipe.submission],
                       [k.out / "kernel" / "kernel-metadata.json"]
                       + ([k.out / "rehearsal" / "working" / "submission.csv"] if k.check else [])))
    return listed


def continue_command(args) -> str:
    extra = (f" --gpus {args.gpus}" if args.gpus else "") + (f" --ddp {args.ddp}" if args.ddp else "")
    return f"python -m competition pipeline {args.recipe}{extra}"


def run_steps(recipe: Recipe, args, ctx) -> list[tuple[str, str, float]]:
    """Each step in order, skipped where the ledger says its outputs are current ->
    [(step, what it did, seconds)]. A failing step names itself and the command to continue."""
    ledger, times = Ledger(recipe.out), []
    for name, function, options, inputs, outputs in steps(recipe):
        start = time.perf_counter()
        if inputs is not None and ledger.fresh(name, options, inputs, outputs):
            times.append((name, "skipped (outputs current)", time.perf_counter() - start))
            print(f"pipeline: {name}: skipped, its outputs are current", flush=True)
            continue
        print(f"pipeline: {name} ...", flush=True)
        try:
            said = function(recipe, ctx)
        except InputError as e:
            raise InputError(f"pipeline step {name} failed: {one_line(e)}; fix it and continue "
                             f"with: {continue_command(args)}") from None
        except BaseException:
            print(f"pipeline step {name} failed (see below); continue with: "
                  f"{continue_command(args)}", file=sys.stderr, flush=True)
            raise
        if inputs is not None:
            ledger.record(name, options, inputs)
        times.append((name, said, time.perf_counter() - start))
        print(f"pipeline: {name}: {said} ({time.perf_counter() - start:.1f} s)", flush=True)
    return times


def summary(recipe: Recipe, ctx, times) -> str:
    from competition.infer.gates import NONE, describe
    from competition.infer.search import predicts_empty
    from competition.train import runs

    rows = [{**row, "run": f"{m.run}/{row['run']}"}  # the table names runs below a folder
            for m in recipe.models for row in runs.table([m.run], [recipe.out])]
    lines = [f"pipeline {recipe.path}: summary", "", "runs:", runs.as_text(rows), ""]
    result = json.loads((recipe.out / "postprocess.json").read_text())
    lines.append(f"OOF CV over {result['images']} images ({recipe.out / 'postprocess.json'}):")
    lines.append(f"{'class':>5} {'threshold':>9} {'min comp':>8} {'min area':>8} "
                 f"{'gate':>16} {'OOF dice':>9}")
    for c, v in result["classes"].items():
        area = "empty" if predicts_empty(v) else v["min_area"]
        lines.append(f"{c:>5} {v['threshold']:9.2f} {v['min_component']:8d} "
                     f"{area:>8} {describe(v.get('gate') or NONE):>16} "
                     f"{v['oof_dice']:9.4f}")
    lines.append(f"{'mean':>5} {'':>9} {'':>8} {'':>8} {'':>16} {result['oof_mean_dice']:9.5f}"
                 f"   (all-empty {result['all_empty_baseline']:.5f})")
    if result.get("held_out"):
        from competition.cli.oof import held_out_line

        lines.append(held_out_line(result))
    score = ctx.get("score")
    lines.append("" if score is None else
                 f"\ntest: {recipe.submission} against {recipe.truth}: mean Dice "
                 f"{score['mean_dice']:.5f} (" + ", ".join(
                     f"class {c} {v:.5f}" for c, v in score["per_class"].items())
                 + f"; all-empty {score['all_empty_baseline']:.5f})")
    if score is None:
        lines[-1] = f"test: {recipe.submission} (no truth file: not scored)"
    if "rehearsal" in ctx:
        lines.append(f"kernel: {ctx['rehearsal']}")
    lines += ["", "steps:"] + [f"  {name:<15} {seconds:8.1f} s  {said}"
                               for name, said, seconds in times]
    lines.append(f"  {'total':<15} {sum(t[2] for t in times):8.1f} s")
    return "\n".join(lines)


def cmd_pipeline(args) -> None:
    import competition.cli.launch as launch

    recipe = with_owner(load(args.recipe), args.owner)
    groups = (launch.gpu_groups(launch.parse_gpus(args.gpus), args.ddp)
              if args.gpus is not None or args.ddp is not None else None)
    ctx = {"groups": groups}
    times = run_steps(recipe, args, ctx)
    print(summary(recipe, ctx, times))


def add(sub) -> None:
    """The parser of pipeline."""
    p = sub.add_parser("pipeline", help="a whole submission from a recipe file: folds, every "
                       "model's folds (skipped/resumed), oof + search, predict, score, the "
                       "kernel rehearsed (docs/pipeline.md)")
    p.add_argument("recipe", metavar="RECIPE", help="recipe file (YAML), e.g. recipes/demo.yaml")
    p.add_argument("--gpus", default=None, metavar="0,1,...",
                   help="train folds in parallel, one subprocess per GPU (CUDA_VISIBLE_DEVICES)"
                   "; logs in each run folder's train.log")
    p.add_argument("--ddp", type=int, default=None, metavar="N",
                   help="train each fold with torchrun on N GPUs (with --gpus: groups of N)")
    p.add_argument("--owner", default=None, metavar="NAME",
                   help="your Kaggle user name: replaces the recipe's kernel.owner (the shipped "
                   "recipes say YOUR-KAGGLE-NAME, which is refused)")
    p.set_defaults(func=cmd_pipeline)
