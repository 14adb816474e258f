"""`python -m competition <stage>`: one subcommand per stage; each reads and writes files.

The front door only collects the stages: each module of STAGES adds its parsers (`add`), and
the handler it sets runs the stage. Stage modules import the package's heavy parts inside
their handlers, so that `--help` and light stages start quickly. An InputError reaches the
terminal as one line and exit status 2.
"""
from __future__ import annotations

import argparse
import sys

import competition.cli.ablation as ablation
import competition.cli.bench as bench
import competition.cli.dataset as dataset
import competition.cli.doctor as doctor
import competition.cli.kernel as kernel
import competition.cli.oof as oof
import competition.cli.pipeline as pipeline
import competition.cli.predict as predict
import competition.cli.runs as runs
import competition.cli.submission as submission
import competition.cli.train as train
from competition.errors import InputError, one_line

# in the order of the data flow, as `--help` lists them (doctor first: checks the machine)
STAGES = (doctor, dataset, submission, train, runs, oof, predict, kernel, pipeline, ablation,
          bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m competition",
        description="Severstal steel-defect pipeline: each stage reads files and writes files.")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="<stage>")
    for stage in STAGES:
        stage.add(sub)
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
