"""Run by tests/test_pipeline.py: `python -m competition pipeline RECIPE` that SIGKILLs
itself when training reaches a chosen epoch of a chosen task's run (the pipeline trains in
its own process without --gpus/--ddp, so the patched function is the one it calls).

KILL_TASK=segment|classify  KILL_EPOCH=E (0-based: the kill comes as epoch E starts, after
epoch E-1's last.pt is written).
"""
import os
import signal
import sys

from competition.cli import main
from competition.train import fit as fit_lib  # fit calls its module's train_one_epoch

TASK, EPOCH = os.environ["KILL_TASK"], int(os.environ["KILL_EPOCH"])
real = fit_lib.train_one_epoch


def train_one_epoch(*args, **kwargs):
    config, epoch = args[7], args[9]
    if config.task == TASK and epoch == EPOCH:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)


fit_lib.train_one_epoch = train_one_epoch
sys.exit(main(sys.argv[1:]))
