"""The segmenters' weights in an ensemble, chosen on the out-of-fold data.

Averaging a strong model with a weak one can score below the strong one alone (the demo's
Unet and DeepLabV3: 0.946 alone, 0.926 averaged), so the weights are a choice worth making on
OOF; but with a few hundred defect pairs, differences of a few thousandths between weightings
are noise, and a weighting fitted to them does not carry over. So the rule is the one
standard error rule over images: the simplest weighting whose OOF Dice is within one
standard error of the best one's.

- `candidates`: equal weights first (the simplest: nothing fitted), then, for 2 or 3 models,
  the simplex grid in steps of 0.25 (each model alone included), ordered by distance from
  equal, ties to the larger weight on the earlier model (the order of --runs); for more than
  3 models (a 0.25 grid would be large) each model alone, in that order. That order is the
  order of simplicity.
- `pair_dice_of`: the (N, 4) per-pair Dice of the settings a search chose (as
  search.held_out scores them), the data of the rule.
- `choose`: B = the best mean Dice; the first candidate c, in order, with
  mean(c) >= mean(B) - SE(B, c), SE = std over images of (Dice_B - Dice_c), each image's 4
  classes averaged, ddof 1, over sqrt(N): a paired standard error, since every candidate
  scores the same images.

Pure functions of numbers and plain dicts; `oof` computes each candidate's statistics from
one forward per model (ensemble.predict_weighted) and `oof.tune` searches each.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from competition.data.labels import CLASSES
from competition.infer.search import pair_choice, pair_dice, standard_error

STEP = 0.25  # the simplex grid's step for 2 or 3 models: 5 and 15 weightings
GRID_MODELS = 3  # above this, equal weights and each model alone


def shares(weights) -> list[float]:
    """Weights as shares of their sum: (1, 1) -> (0.5, 0.5)."""
    total = float(sum(weights))
    return [float(w) / total for w in weights]


def candidates(n_models: int) -> list[list[float]]:
    """The weight vectors searched for `n_models` segmenters (2 or more), simplest first.

    Equal weights are (1, ..., 1), the weights an ensemble given no --weights has, so that
    their statistics are exactly those of `oof` without the search. Grid points are shares
    (0.25, 0.75); a grid point equal to the equal shares is the equal candidate itself."""
    if n_models < 2:
        raise ValueError(f"{n_models} model(s): nothing to weigh")
    equal = [1.0] * n_models
    if n_models <= GRID_MODELS:
        steps = round(1 / STEP)
        grid = [[q * STEP for q in quarters]
                for quarters in itertools.product(range(steps, -1, -1), repeat=n_models)
                if sum(quarters) == steps]
    else:
        grid = [[float(i == m) for i in range(n_models)] for m in range(n_models)]
    centre = shares(equal)
    grid = [w for w in grid if not np.allclose(w, centre)]
    # a stable sort: ties keep the grid's order
    grid.sort(key=lambda w: round(math.dist(w, centre), 12))
    return [equal] + grid


def pair_dice_of(result: dict, stats, truth, signals: dict) -> np.ndarray:
    """(N, 4) Dice of each pair under the settings a search `result` chose per class
    (threshold, min component, min area, gate), from the statistics it searched: stats
    (N, 4, K, M, 2), truth (N, 4), signals {name: (N, 4)}. Its mean is the result's
    oof_mean_dice."""
    grid = result["grid"]
    out = np.zeros(np.shape(truth), np.float64)
    for c, class_id in enumerate(CLASSES):
        v = result["classes"][str(class_id)]
        choice = {"gate": v["gate"], "k": list(grid["threshold"]).index(v["threshold"]),
                  "m": list(grid["min_component"]).index(v["min_component"])}
        sig = {name: values[:, c] for name, values in signals.items()}
        s = pair_choice(stats[:, c], truth[:, c], sig, choice, grid)
        out[:, c] = pair_dice(s, truth[:, c], v["min_area"])
    return out


def choose(weightings: list, dice: list) -> dict:
    """weightings: the candidates in order of simplicity (`candidates`); dice: per candidate
    the (N, 4) per-pair Dice of its tuned post-processing (pair_dice_of) -> {"candidates":
    [{"weights", "shares", "oof_dice", "se"} each, se against the best], "best": index,
    "chosen": index, "se": the chosen one's, "rule": "best" | "one_se"}.

    The best is the first of the highest mean; the chosen, the first candidate within one
    paired standard error of it (the best itself at the latest)."""
    per_image = [np.asarray(d, np.float64).mean(axis=1) for d in dice]
    means = [float(p.mean()) for p in per_image]
    best = int(np.argmax(means))
    ses = [standard_error(per_image[best] - p) for p in per_image]  # paired, over images
    chosen = next(c for c in range(len(means)) if means[c] >= means[best] - ses[c])
    return {
        "candidates": [{"weights": [float(w) for w in weights], "shares": shares(weights),
                        "oof_dice": means[j], "se": ses[j]}
                       for j, weights in enumerate(weightings)],
        "best": best, "chosen": chosen, "se": ses[chosen],
        "rule": "best" if chosen == best else "one_se",
    }


def weighed_members(members: list[dict], weights) -> list[dict]:
    """A fold's recorded segmenters ({"checkpoint", "weight", "sha256"}, one per model in
    the candidates' order) with the chosen weights; a model of weight 0 is left out, so that
    predict, pseudo and the kernel neither load nor average it."""
    return [{**m, "weight": float(w)} for m, w in zip(members, weights) if w > 0]
