"""The ensemble a postprocess.json was tuned on, and the check that `predict`, `kernel` and
`pseudo` apply its thresholds and gates to that ensemble alone.

`oof` records, per fold, the checkpoints it averaged with their weights and content digests,
and the TTA views (postprocess.json):

    "tta": ["none", "hflip"],
    "ensemble": {"fold0": {"segmenters": [{"checkpoint": "folds/a/fold0/best.pt",
                                           "weight": 1.0, "sha256": "3f2a..."}, ...],
                           "classifiers": [...]}, ...}

Thresholds and gates tuned on one ensemble do not carry over to another: averaging more
models lowers the largest probability the max-probability gates read, another weight shifts
every probability, another TTA too. So, with no --checkpoints and no --classifiers, the
stages take the recorded ensemble (`recorded`); given explicitly, the files are compared by
content (a copied or renamed file is the same model, a retrained one is not), the weights
within each fold, and the views (`difference`); a difference is refused in one line unless
--allow-other-models, which turns it into one warning line (`check`).
"""
from __future__ import annotations

import math
from pathlib import Path

from competition.data.provenance import file_digest
from competition.errors import InputError

ROLES = {"segmenters": "--checkpoints", "classifiers": "--classifiers"}


def members(result: dict, role: str) -> list[list[dict]]:
    """Each fold's recorded members of `role` (segmenters or classifiers), in fold order."""
    return [list(fold.get(role) or []) for fold in (result.get("ensemble") or {}).values()]


def recorded(result: dict, role: str) -> tuple[list[Path], list[float]]:
    """The files and weights of `role` over every fold, as predict takes them: each file
    with the weight it had in its fold's average."""
    every = [m for fold in members(result, role) for m in fold]
    return [Path(m["checkpoint"]) for m in every], [float(m["weight"]) for m in every]


def role_difference(folds: list[list[dict]], paths: list[Path], weights: list[float],
                    option: str) -> str | None:
    """The first way the files and weights given for one role differ from the recorded
    folds, in words, or None. Files are compared by content, weights as shares of their
    fold's total (a scale common to every file changes no average)."""
    given: dict[str, tuple[Path, float]] = {}
    for path, weight in zip(paths, weights):
        given.setdefault(file_digest(path), (path, weight))
    tuned = {m["sha256"] for fold in folds for m in fold}
    extra = [path for digest, (path, _) in given.items() if digest not in tuned]
    if extra:
        return f"{option}: {extra[0]} is not among the models it was tuned on"
    for fold in folds:
        missing = [m["checkpoint"] for m in fold if m["sha256"] not in given]
        if missing:
            return (f"{option}: {missing[0]}, a model it was tuned on (or a file with its "
                    "content), is not given")
        want = [float(m["weight"]) for m in fold]
        got = [given[m["sha256"]][1] for m in fold]
        for m, w, g in zip(fold, want, got):
            if not math.isclose(w / sum(want), g / sum(got), rel_tol=1e-9):
                return (f"{option}: {given[m['sha256']][0]} weighs {g / sum(got):.4g} of its "
                        f"fold's average here, {w / sum(want):.4g} in the tuned ensemble "
                        "(--weights?)")
    return None


def difference(result: dict, views, seg: list[Path], seg_weights: list[float] | None,
               cls: list[Path], cls_weights: list[float] | None,
               needs_cls: bool) -> str | None:
    """The first way the ensemble and views given differ from those `result` (a
    postprocess.json) was tuned on, or None. Classifiers are compared where a gate reads
    them (needs_cls) and otherwise change no mask."""
    tta = result.get("tta")
    if tta is not None and list(views) != list(tta):
        return f"--tta {','.join(views)}: it was tuned with {','.join(tta)}"
    roles = [("segmenters", seg, seg_weights)] + ([("classifiers", cls, cls_weights)]
                                                  if needs_cls else [])
    for role, paths, weights in roles:
        said = role_difference(members(result, role), paths,
                               list(weights) if weights else [1.0] * len(paths), ROLES[role])
        if said:
            return said
    return None


def digests_recorded(result: dict) -> bool:
    """Whether `result` records its models' content (postprocess.json of this version)."""
    every = [m for role in ROLES for fold in members(result, role) for m in fold]
    return bool(every) and all("sha256" in m for m in every)


def check(result: dict, where, views, seg, seg_weights, cls, cls_weights, needs_cls: bool,
          allow: bool) -> str | None:
    """Refuse (InputError, one line naming `where` and the difference) an ensemble other
    than the one `result` was tuned on; with `allow`, or for a postprocess.json that
    records no digests, the warning line to print instead; None where it is the same."""
    if not digests_recorded(result):
        return (f"warning: {where} does not record its models' content (made before this "
                "version): the models given are not checked against those it was tuned on")
    said = difference(result, views, seg, seg_weights, cls, cls_weights, needs_cls)
    if said is None:
        return None
    if allow:
        return f"warning: --allow-other-models: {where} was tuned on another ensemble: {said}"
    raise InputError(f"{where} was tuned on another ensemble: {said}; pass the models it was "
                     "tuned on (leave out --checkpoints and --classifiers to take them), re-run "
                     "`oof` for these, or --allow-other-models")
