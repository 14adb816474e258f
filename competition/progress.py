"""Progress bars for long loops: tqdm, refreshed often on a terminal and every 30 s in a log
file (where each refresh would otherwise add a line)."""
from __future__ import annotations

import sys

from tqdm import tqdm


def progress(iterable=None, **kwargs) -> tqdm:
    tty = sys.stderr.isatty()
    kwargs.setdefault("mininterval", 0.1 if tty else 30.0)
    return tqdm(iterable, dynamic_ncols=tty, **kwargs)
