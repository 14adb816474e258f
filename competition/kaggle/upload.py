"""Uploading the bundle (bundle.py) with the kaggle CLI: exactly the folders a rehearsal ran.

`push` refuses a bundle that was not rehearsed or whose files changed since (rehearsed.json,
bundle.rehearse), then `datasets create` (a dataset's first upload) or `datasets version`
(later ones) with `-r zip`, and `kernels push` once both datasets are ready, with
`--accelerator` set to the kernel's machine_shape where the CLI has it (kaggle >= 1.8.4 reads
machine_shape from kernel-metadata.json, `--accelerator` overrides it; an older CLI ignores
it and Kaggle may give a P100). `by_hand` writes the same commands for a user to run.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from competition.errors import InputError
from competition.files import write_json
from competition.kaggle.bundle import PUSHED, REHEARSED, changes, dataset_ref

KINDS = ("weights", "code")  # the two datasets, uploaded before the kernel


def check_rehearsed(out: Path) -> dict:
    """The rehearsal record of the bundle in `out`; a folder with no bundle, a bundle never
    rehearsed, or one with a file changed, added or removed since -> one InputError line."""
    if not (out / "kernel" / "kernel-metadata.json").is_file():
        raise InputError(f"{out}: no bundle here (kernel/kernel-metadata.json); build and "
                         "rehearse it: python -m competition kernel --owner USER --check DATA")
    if not (out / REHEARSED).is_file():
        raise InputError(f"{out}: this bundle was not rehearsed, so it is not pushed: "
                         f"python -m competition kernel --out {out} --check DATA rehearses it "
                         "as it is, then --push uploads it")
    record = json.loads((out / REHEARSED).read_text())
    changed = changes(record["files"], out)
    if changed:
        raise InputError(f"{changed}: changed, added or removed since the bundle's rehearsal "
                         f"on {record['data']}: rehearse it again (kernel --out {out} --check "
                         "DATA) before --push")
    return record


def pushed(out: Path) -> set[str]:
    """The datasets (owner/slug) an upload from `out` created: they exist on Kaggle."""
    path = out / PUSHED
    return set(json.loads(path.read_text())["datasets"]) if path.is_file() else set()


def accelerator(out: Path) -> str:
    return json.loads((out / "kernel" / "kernel-metadata.json").read_text())["machine_shape"]


def by_hand(out: Path, message: str = "new version") -> str:
    """The kaggle CLI commands that upload the bundle in `out`: `datasets create` for a
    dataset no upload from `out` made (with how to tell whether it exists after all),
    `datasets version` for one it did, then `kernels push` asking for its accelerator."""
    known, steps, new = pushed(out), [], []
    for kind in KINDS:
        ref = dataset_ref(out / kind)
        if ref in known:
            steps.append(f"kaggle datasets version -p {out / kind} -m '{message}' -r zip")
        else:
            steps.append(f"kaggle datasets create -p {out / kind} -r zip")
            new.append(ref)
    steps.append(f"kaggle kernels push -p {out / 'kernel'} --accelerator {accelerator(out)}")
    note = (f" (create: a first upload; where `kaggle datasets status {new[0]}` finds the "
            f"dataset already, upload a new version instead: kaggle datasets version -p DIR "
            f"-m MESSAGE -r zip)" if new else "")
    return "; ".join(steps) + note


def credentials() -> str | None:
    """Where the kaggle CLI (2.x) would find credentials, or None: an API token, a legacy
    key (environment or kaggle.json), or `kaggle auth login`'s cached OAuth credentials."""
    for names in (("KAGGLE_API_TOKEN",), ("KAGGLE_USERNAME", "KAGGLE_KEY")):
        if all(os.environ.get(n) for n in names):
            return "/".join(names)
    home = Path.home() / ".kaggle"
    config = Path(os.environ.get("KAGGLE_CONFIG_DIR") or home)
    for file in (config / "kaggle.json", Path.home() / ".config" / "kaggle" / "kaggle.json",
                 home / "access_token", home / "access_token.txt", home / "credentials.json"):
        if file.is_file():
            return str(file)
    return None


def kaggle_cli() -> str | None:
    return shutil.which("kaggle") or shutil.which("kaggle", path=str(Path(sys.executable).parent))


def push(out: Path, wait_s: float = 1200, poll_s: float = 15, run=subprocess.run) -> None:
    """Push the bundle in `out` as it was rehearsed (check_rehearsed): create (or version)
    both datasets, wait until Kaggle has processed them, then push the kernel (which Kaggle
    runs at once). Anything missing is one clear InputError."""
    check_rehearsed(out)
    cli = kaggle_cli()
    if cli is None:
        raise InputError(f"--push: the kaggle CLI is not installed (pip install kaggle); the "
                         f"bundle in {out} is complete, upload it by hand: {by_hand(out)}")
    if credentials() is None:
        raise InputError("--push: no Kaggle credentials: run `kaggle auth login`, or generate "
                         "an API token (kaggle.com/settings/api) and export KAGGLE_API_TOKEN or "
                         "save it to ~/.kaggle/access_token (a legacy kaggle.json in ~/.kaggle "
                         f"also works); the bundle in {out} is complete")

    def kaggle(*args: str) -> str:
        done = run([cli, *args], capture_output=True, text=True)
        text = (done.stdout + done.stderr).strip()
        if done.returncode != 0 or re.search(r"\berror\b", text, re.I):
            last = text.splitlines()[-1] if text else f"exit status {done.returncode}"
            raise InputError(f"kaggle {' '.join(args)}: {last}")
        print(text)
        return text

    refs = []
    for kind in KINDS:
        folder = out / kind
        ref = dataset_ref(folder)
        exists = run([cli, "datasets", "status", ref], capture_output=True,
                     text=True).returncode == 0
        if exists:
            kaggle("datasets", "version", "-p", str(folder), "-m",
                   f"competition kernel {time.strftime('%Y-%m-%d %H:%M')}", "-r", "zip")
        else:
            kaggle("datasets", "create", "-p", str(folder), "-r", "zip")
        refs.append(ref)
        write_json(out / PUSHED, {"datasets": sorted(pushed(out) | {ref})})
    shape = accelerator(out)
    deadline = time.monotonic() + wait_s
    for ref in refs:
        while (status := kaggle("datasets", "status", ref).splitlines()[-1].strip()) != "ready":
            if time.monotonic() > deadline:
                raise InputError(f"{ref}: still {status!r} after {wait_s:.0f} s; push the "
                                 f"kernel when it is ready: kaggle kernels push -p "
                                 f"{out / 'kernel'} --accelerator {shape}")
            time.sleep(poll_s)
    helped = run([cli, "kernels", "push", "--help"], capture_output=True, text=True).stdout
    flag = ["--accelerator", shape] if "--accelerator" in helped else []  # kaggle>=1.8.4
    if not flag:
        print(f"note: this kaggle CLI has no `kernels push --accelerator` and may ignore "
              f"machine_shape {shape!r}: if the kernel stops for want of a T4, choose GPU T4 x2 "
              "in its Settings > Accelerator on kaggle.com and run it again (or pip install -U "
              "kaggle and push again)")
    kaggle("kernels", "push", "-p", str(out / "kernel"), *flag)
