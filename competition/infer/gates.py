"""Image-level gates: how an image-level signal empties or tightens a class's mask.

About 86% of Severstal's (image, class) pairs are empty, and one false-positive pixel on one
of them scores 0 for it, so every top team used an image-level signal against false
positives, each its own way. The search (search.py) lets the out-of-fold data choose, per
class, among these kinds (GATES, the grid of each), always beside "none":

  gate     the mask is emptied when p_cls < g, p_cls the image-level probability of the
           class (1st, 9th, 12th, 13th place: a classifier ensemble)
  scale    the pixel threshold becomes t = t0*c - t0*(c - 1)*p_cls: khornlund's 0.91023
           with c = 5. Above 1 no probability reaches it and the mask is empty (so a low
           p_cls empties the mask, as his did); up to 1 it snaps to the nearest threshold
           of the grid (clipped to its ends: between the grid's top and 1, the top)
  maxprob  the mask is emptied when the largest pixel probability of the class is below g
           (3rd place's label test; no image-level model needed)

p_cls comes from a SOURCE: the segmenters' auxiliary heads ("aux"), the separate
classifiers ("cls"). Every kind is computed exactly from the OOF statistics: a gate empties
whole pairs, and a scaled threshold is one of the grid's, whose counts the statistics hold
for every image. Soft gating (pixel probability x p_cls, 4th place) is not offered: it is the
threshold t / p_cls, which is not on the grid, so the statistics cannot score it exactly.

The comparisons are the same in the search and in `predict`: signal and gate value both as
float32 (`compared`; the search's bins by `passes`, predict's decisions by `keep`), and the
scaled threshold chosen by `scaled_index` from the same float32 p_cls.
"""
from __future__ import annotations

import numpy as np

from competition.errors import InputError

GATES = {  # kind -> the values searched (g for gate and maxprob, c for scale)
    "gate": (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    "scale": (1.5, 2.0, 3.0, 5.0, 10.0, 20.0),
    "maxprob": (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95),
}
SOURCES = {"aux": "the segmenters' auxiliary heads", "cls": "the separate classifiers"}
NEEDS_SOURCE = {"gate": True, "scale": True, "maxprob": False}
NONE = {"kind": "none", "source": None, "value": None}


def label(gate: dict) -> str:
    """{'kind': 'gate', 'source': 'cls', 'value': 0.5} -> 'gate cls'; 'none'; 'maxprob'."""
    return " ".join(x for x in (gate["kind"], gate.get("source")) if x)


def describe(gate: dict) -> str:
    """'gate cls 0.2', 'scale aux 5', 'maxprob 0.7'; 'none'."""
    return label(gate) if gate["kind"] == "none" else f"{label(gate)} {gate['value']:g}"


def signal(gate: dict, signals: dict) -> np.ndarray | None:
    """The (N, 4) float32 values a gate compares: signals["maxprob"] for maxprob, the
    source's probabilities for gate and scale, None for none."""
    kind = gate["kind"]
    if kind == "none":
        return None
    key = "maxprob" if kind == "maxprob" else gate["source"]
    if key not in signals:
        raise InputError(f"the {label(gate)} gate needs image-level probabilities from "
                         f"{SOURCES.get(key, key)}, and none were given")
    return signals[key]


def scaled_threshold(t0: float, c: float, p: np.ndarray) -> np.ndarray:
    """t = t0*c - t0*(c - 1)*p per value of p (float32 probabilities), in float64: t0 at
    p = 1, c*t0 at p = 0."""
    return t0 * c - t0 * (c - 1.0) * np.asarray(p, np.float64)


def scaled_index(thresholds, t0: float, c: float, p: np.ndarray) -> np.ndarray:
    """Per value of p (any shape): the index in the increasing `thresholds` of the scaled
    threshold, the nearest (the lower on a tie), so clipped to the grid's ends; where it is
    above 1 the mask is empty instead (scaled_empty)."""
    grid = np.asarray(thresholds, np.float64)
    return np.abs(scaled_threshold(t0, c, p)[..., None] - grid).argmin(axis=-1)


def scaled_empty(t0: float, c: float, p: np.ndarray) -> np.ndarray:
    """Where the scaled threshold is above 1: no probability (at most 1) reaches it, and
    the mask is empty."""
    return scaled_threshold(t0, c, p) > 1.0


def compared(values) -> np.ndarray:
    """Signals and gate values as every gate comparison sees them: float32, the precision of
    the models' probabilities. In float64 the gate value 0.7 is above float32(0.7), so a
    signal of exactly float32(0.7) would be emptied by a float64 comparison and kept by a
    float32 one: the search and `predict` must not differ on it."""
    return np.asarray(values, np.float32)


def keep(gate: dict, values: np.ndarray | None) -> np.ndarray | bool:
    """Which pairs a gate of kind gate or maxprob lets through: values >= g, in `compared`'s
    precision (True for the others, which empty nothing)."""
    if gate["kind"] in ("gate", "maxprob"):
        return compared(values) >= compared(gate["value"])
    return True


def passes(values, cuts) -> np.ndarray:
    """Per value, how many of the increasing gate values `cuts` it passes (value >= cut),
    compared as `keep` compares: the search's count of each gate agrees with `predict`."""
    return np.searchsorted(compared(cuts), compared(values), side="right")


def check_signals(signals: dict, n: int, where: str) -> None:
    """Every signal is (n, 4) and finite: a NaN would pass no comparison and silently
    empty (or keep) masks."""
    for key, values in signals.items():
        if values.shape != (n, 4):
            raise InputError(f"{where}: {key} has shape {values.shape}, expected ({n}, 4)")
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise InputError(f"{where}: {key} of row {row} is {values[bad][0]} (not finite); "
                             "recompute the OOF statistics")


def decide(gates: list[dict], t0: list[float], thresholds, signals: dict
           ) -> tuple[np.ndarray, np.ndarray]:
    """For `predict`: per image and class, the pixel threshold and whether the mask is kept.

    gates: one dict per class ({"kind", "source", "value"}); t0: the classes' thresholds;
    thresholds: the grid they were tuned on; signals: {"maxprob": (N, 4), "aux": (N, 4),
    "cls": (N, 4)} float32 (those available). Returns (N, 4) float64 thresholds (each one
    of the grid's values, or t0) and (N, 4) bool."""
    n = len(signals["maxprob"])
    thr = np.tile(np.asarray(t0, np.float64), (n, 1))
    kept = np.ones((n, len(gates)), bool)
    for c, gate in enumerate(gates):
        values = signal(gate, signals)
        if values is None:
            continue
        values = values[:, c]
        if gate["kind"] == "scale":
            thr[:, c] = np.asarray(thresholds, np.float64)[
                scaled_index(thresholds, t0[c], gate["value"], values)]
            kept[:, c] = ~scaled_empty(t0[c], gate["value"], values)
        else:
            kept[:, c] = keep(gate, values)
    return thr, kept
