"""`pipeline --gpus` and `--ddp`: training folds in subprocesses, one per GPU group.

--gpus 0,1,2,3 runs up to four folds at once, each `python -m competition train ...` with
CUDA_VISIBLE_DEVICES set to its GPU; --ddp N trains each fold with torchrun on N GPUs (as
`NPROC=N bash run.sh fold<K>`), so --gpus 0,1,2,3 --ddp 2 runs two folds at once on two GPUs
each, and --ddp N alone one fold at a time on GPUs 0..N-1. The folds wait in recipe order
(model by model, fold by fold) and each takes the first group that is free (`assign`, a pure
function). Each run writes RUN/fold<k>/train.log (stdout and stderr); one progress line per
running fold is printed when its last `epoch` line changes.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from competition.errors import InputError

LOG = "train.log"


@dataclass(frozen=True)
class Job:
    """One (model, fold) to train: `out` its run folder, `config_file` the model's resolved
    config (a config.json-style experiment file), `resume` whether last.pt is continued."""
    name: str
    fold: int
    out: Path
    config_file: Path
    resume: bool


def parse_gpus(text: str | None) -> tuple[int, ...] | None:
    """'0,1,3' -> (0, 1, 3); None -> None. Not numbers, or one repeated -> InputError."""
    if text is None:
        return None
    try:
        gpus = tuple(int(g) for g in text.split(","))
    except ValueError:
        raise InputError(f"--gpus {text}: expected comma-separated GPU numbers, e.g. 0,1") from None
    if not gpus or len(set(gpus)) != len(gpus) or min(gpus) < 0:
        raise InputError(f"--gpus {text}: expected distinct GPU numbers, e.g. 0,1")
    return gpus


def gpu_groups(gpus: tuple[int, ...] | None, ddp: int | None) -> list[tuple[int, ...]]:
    """The GPU groups folds run on: --ddp N GPUs each (1 without --ddp), taken in the order
    given; --ddp without --gpus: GPUs 0..N-1. GPUs that do not fill a group -> InputError."""
    per = ddp or 1
    if per < 1:
        raise InputError(f"--ddp {ddp}: expected at least 1 GPU per fold")
    gpus = gpus if gpus is not None else tuple(range(per))
    if len(gpus) % per:
        raise InputError(f"--gpus {','.join(map(str, gpus))} --ddp {per}: {len(gpus)} GPUs do "
                         f"not make groups of {per}")
    return [tuple(gpus[i:i + per]) for i in range(0, len(gpus), per)]


def assign(pending: list, free: list) -> list[tuple]:
    """The launches to make now: the first pending jobs paired, in order, with the free
    groups in order -> [(job, group)]."""
    return list(zip(pending, free))


def command(job: Job, data: Path, folds_csv: Path, group: tuple[int, ...],
            python: str = sys.executable) -> tuple[list[str], dict]:
    """(argv, environment additions) training `job` on GPU `group`: torchrun over the group
    when it holds several GPUs, else one process."""
    train = ["-m", "competition", "train", "--data", str(data), "--fold", str(job.fold),
             "--folds-csv", str(folds_csv), "--out", str(job.out),
             "--config-file", str(job.config_file), "--resume" if job.resume else "--overwrite"]
    head = ([python, "-m", "torch.distributed.run", "--standalone",
             f"--nproc_per_node={len(group)}"] if len(group) > 1 else [python])
    return head + train, {"CUDA_VISIBLE_DEVICES": ",".join(map(str, group))}


def last_epoch_line(log: Path) -> str:
    """The last line of a run's log that starts with 'epoch ', or ''."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 8192))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    return next((line for line in reversed(lines) if line.startswith("epoch ")), "")


def run_jobs(jobs: list[Job], groups: list[tuple[int, ...]], data: Path, folds_csv: Path,
             poll_s: float = 10.0, popen=subprocess.Popen) -> None:
    """Train `jobs` on `groups`, each job on the first free group. A job that fails stops
    new launches; the running ones finish, then InputError names the first failure and its
    log."""
    pending, free, running, failed = list(jobs), list(groups), {}, []
    started = time.perf_counter()
    shown: dict = {}
    while pending or running:
        if not failed:
            for job, group in assign(pending, free):
                argv, env = command(job, data, folds_csv, group)
                job.out.mkdir(parents=True, exist_ok=True)
                log = open(job.out / LOG, "a" if job.resume else "w")
                log.write(f"$ CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']} "
                          f"{' '.join(argv)}\n")
                log.flush()
                running[job] = (popen(argv, env={**os.environ, **env}, stdout=log,
                                      stderr=subprocess.STDOUT), group, log, time.perf_counter())
                pending.remove(job)
                free.remove(group)
                print(f"train: {job.name} fold {job.fold} on GPU {','.join(map(str, group))}"
                      f" ({'resumed' if job.resume else 'new'}); log {job.out / LOG}", flush=True)
        for job, (proc, group, log, since) in list(running.items()):
            line = last_epoch_line(job.out / LOG)
            if line and shown.get(job) != line:
                shown[job] = line
                print(f"  [GPU {','.join(map(str, group))}] {job.name} fold {job.fold}: "
                      f"{line} ({(time.perf_counter() - since) / 60:.1f} min)", flush=True)
            code = proc.poll()
            if code is None:
                continue
            log.close()
            del running[job]
            free.append(group)
            free.sort(key=groups.index)
            print(f"train: {job.name} fold {job.fold} " + ("done" if code == 0 else
                  f"FAILED (exit status {code})") + f" after {(time.perf_counter() - since) / 60:.1f} min",
                  flush=True)
            if code != 0:
                failed.append((job, code))
        if failed and not running:
            break
        if running:
            time.sleep(poll_s)
    if failed:
        job, code = failed[0]
        raise InputError(f"training {job.name} fold {job.fold} failed (exit status {code}); "
                         f"its log: {job.out / LOG}" + (f"; {len(pending)} fold(s) not started"
                                                        if pending else ""))
    print(f"train: {len(jobs)} fold(s) in {(time.perf_counter() - started) / 60:.1f} min")
