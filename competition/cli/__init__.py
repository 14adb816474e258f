"""The front door: `python -m competition <stage>` (front.py collects the stages, one module
per group of stages beside it). `competition.cli.main(argv)` runs one stage as the command
line would and returns its exit status."""
from competition.cli.front import build_parser, main

__all__ = ["build_parser", "main"]
