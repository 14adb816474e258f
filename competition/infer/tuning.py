"""The OOF search's end: the post-processing (and, after `oof --weights search`, the
ensemble's weights) chosen on the OOF statistics that oof.py streamed, written as
postprocess.json and cv_report/ in one atomic group, with the report's example overlays."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from competition.data.images import read_image
from competition.data.labels import CLASSES, by_image, load_train, masks
from competition.data.postprocess import clean
from competition.files import atomic_group, write_json
from competition.infer import ensemble_weights
from competition.infer.gates import NONE, decide
from competition.infer.oof import SIGNALS, candidate_folder, load_stats
from competition.infer.search import MIN_AREAS, RULES, Params, held_out, search


def overlays(stats_dir: Path, folds: list[int], data: Path, result: dict,
             limit: int = 5, candidate: int = 0) -> list[dict]:
    """Report examples: the stored levels of a few OOF images turned into masks with the
    chosen post-processing and gates, beside the image and its truth. One per class, then
    one defect-free, taken from the folds in order. `candidate`: the weighting whose levels
    are shown (load_stats)."""
    encoded = by_image(load_train(data, check_images=False)[1])
    params = params_of(result)
    candidates = []
    for k in folds:
        stored = np.load(candidate_folder(stats_dir / f"fold{k}", candidate) / "examples.npz")
        names = [n for n in SIGNALS if n in stored.files]
        candidates += [(k, str(i), lv, {n: stored[n][j:j + 1] for n in names})
                       for j, (i, lv) in enumerate(zip(stored["image_ids"], stored["levels"]))]
    wanted, out = [*CLASSES, 0], []  # 0: defect-free
    for k, image_id, levels, signals in candidates:
        present = set(encoded.get(image_id, {})) or {0}
        hit = next((w for w in wanted if w in present), None)
        if hit is None or len(out) >= limit:
            continue
        wanted.remove(hit)
        thr, kept = decide(params.gate, params.threshold, params.thresholds, signals)
        index = np.array([params.thresholds.index(t) for t in thr[0]])
        pred = ((levels > index[:, None, None]) & kept[0][:, None, None]).astype(np.uint8)[None]
        clean(pred, params.min_component, params.min_area)
        out.append({"image_id": image_id, "fold": k,
                    "image": read_image(data / "train_images" / image_id),
                    "truth": masks(encoded.get(image_id, {})).astype(bool),
                    "pred": pred[0].astype(bool)})
    return out


def params_of(result: dict) -> Params:
    """The post-processing a search result chose, as predict reads it from postprocess.json."""
    chosen = [result["classes"][str(c)] for c in CLASSES]
    return Params(tuple(v["threshold"] for v in chosen), tuple(v["min_component"] for v in chosen),
                  tuple(v["min_area"] for v in chosen), tuple(result.get("tta") or ()) or None,
                  tuple(v.get("gate", NONE) for v in chosen),
                  tuple(result["grid"]["threshold"]))


def tune(stats_dir: Path, folds: list[int], out: Path, min_areas=None,
         data: Path | None = None, kinds=None, sources=None, rule: str = RULES[0]) -> dict:
    """Search the OOF statistics of `folds` (STATS/fold<k>/); write out/postprocess.json and
    out/cv_report/. kinds: the gate kinds searched beside none (None: all); sources: the
    image-level sources they may read, of aux and cls (None: all recorded); rule: how each
    class's setting is chosen, by the search and its held-out estimate (search.RULES)."""
    from competition.infer.report import write_report

    st = load_stats(stats_dir, folds)
    meta = st["metas"][folds[0]]
    grid = {"threshold": meta["thresholds"], "min_component": meta["min_components"],
            "min_area": sorted(set(int(a) for a in min_areas or MIN_AREAS))}
    weighing = weigh(stats_dir, folds, grid, kinds, sources, rule) if meta.get(
        "weight_search") else None
    if weighing:  # tuned as ever, on the chosen weights' statistics
        st = load_stats(stats_dir, folds, weighing["chosen"])
    signals = searched_signals(st["signals"], sources)
    result, tables = search(st["stats"], st["truth"], st["fold"], grid, signals, kinds, rule)
    honest = held_out(st["stats"], st["truth"], st["fold"], grid, signals, kinds, rule)
    data = Path(data or meta["data"])
    result = {"version": 2, "connectivity": 8, **result, "held_out": honest, "tta": meta["tta"],
              "ensemble": {f"fold{k}": {"segmenters": segmenters(st["metas"][k], weighing),
                                        "classifiers": st["metas"][k].get("classifiers")}
                           for k in folds},
              "data": str(data), **({"weights": weighing} if weighing else {})}
    examples = overlays(stats_dir, folds, data, result,
                        candidate=weighing["chosen"] if weighing else 0)
    with atomic_group(out) as tmp:  # both old or both new, whenever a kill comes
        (tmp / "cv_report").mkdir()
        write_report(tmp / "cv_report", result, tables, examples)
        write_json(tmp / "postprocess.json", result)
    return result


def searched_signals(signals: dict, sources=None) -> dict:
    """The signals the gates may read: maxprob, and of aux and cls those in `sources`
    (None: all recorded)."""
    return {k: v for k, v in signals.items() if sources is None or k == "maxprob" or k in sources}


def weigh(stats_dir: Path, folds: list[int], grid: dict, kinds=None, sources=None,
          rule: str = RULES[0]) -> dict:
    """The segmenters' weights chosen on the OOF data of an `oof --weights search`: each
    candidate's statistics searched as `tune` searches them (search.search, per class, with
    the same choice rule), its
    per-pair Dice under the settings chosen, and the one standard error rule over them
    (ensemble_weights.choose) -> choose's dict, with "models": the run folder of each
    weight."""
    meta = json.loads((stats_dir / f"fold{folds[0]}" / "meta.json").read_text())
    weightings = meta["weight_search"]["candidates"]
    dice = []
    for j in range(len(weightings)):
        st = load_stats(stats_dir, folds, j)
        signals = searched_signals(st["signals"], sources)
        result, _ = search(st["stats"], st["truth"], st["fold"], grid, signals, kinds, rule)
        dice.append(ensemble_weights.pair_dice_of(result, st["stats"], st["truth"], signals))
    return {"models": [str(Path(m["checkpoint"]).parent.parent) for m in meta["segmenters"]],
            **ensemble_weights.choose(weightings, dice)}


def segmenters(meta: dict, weighing: dict | None) -> list[dict] | None:
    """A fold's segmenters as postprocess.json records them: with the weights chosen on the
    OOF data where they were (a model of weight 0 left out), else as the OOF averaged them."""
    members = meta.get("segmenters")
    if not weighing:
        return members
    return ensemble_weights.weighed_members(
        members, weighing["candidates"][weighing["chosen"]]["weights"])
