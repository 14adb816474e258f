"""Atomic outputs: every stage writes to a temporary name and renames it into place, so a
stage that fails leaves what was there before, never a half-written file."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; on success rename it to `path`, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_csv(path: str | Path, frame) -> None:
    """A pandas DataFrame to CSV without its index."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


@contextlib.contextmanager
def atomic_dir(path: str | Path):
    """Yield an empty temporary folder beside `path`; on success it replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give what mkdir would
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


GROUP = ".group"  # FOLDER/.group.<random>.tmp: being written; FOLDER/.group.commit: committed


@contextlib.contextmanager
def atomic_group(folder: str | Path):
    """Yield an empty staging folder inside `folder`; what is written into it (files and
    folders) replaces the entries of the same names in `folder` together: a kill leaves all
    of them old or, once `finish_group` has run, all new (oof.tune's postprocess.json and
    cv_report/, which must describe the same search).

    The commit point is one rename, of the complete staging folder to FOLDER/.group.commit;
    `finish_group` then moves its entries into place, and finishes that after a kill: every
    stage that reads them calls it first. A kill before the commit leaves a staging folder,
    removed by the next group written here."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    finish_group(folder)
    for stale in folder.glob(f"{GROUP}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{GROUP}.", suffix=".tmp", dir=folder))
    os.chmod(staging, 0o777 & ~_umask())
    try:
        yield staging
        os.rename(staging, folder / f"{GROUP}.commit")  # the commit point
        finish_group(folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def finish_group(folder: str | Path) -> None:
    """Move a committed group's entries (atomic_group) into place, where a kill left them in
    FOLDER/.group.commit; nothing to do otherwise. Each step can be repeated after a kill: an
    entry leaves the commit folder only by its own rename into place."""
    commit = Path(folder) / f"{GROUP}.commit"
    if not commit.is_dir():
        return
    for entry in sorted(commit.iterdir()):
        target = Path(folder) / entry.name
        if entry.is_dir() and target.is_dir():
            shutil.rmtree(target)  # a kill here: the new one is still in the commit folder
        os.replace(entry, target)
    commit.rmdir()
