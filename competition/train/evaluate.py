"""Validation after each epoch: full-size images through the model -> the competition's
Dice per class (segmenters: the pixels binarised at the validation threshold and minimum
areas) or the ROC AUC and best F1 of "class present" (classifiers and image-level heads),
gathered over the DDP ranks."""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from competition.data import datasets as data_lib
from competition.data.labels import CLASSES
from competition.data.metric import dice_from_counts
from competition.data.postprocess import binarize, pair_counts
from competition.model.forward import forward_checked
from competition.model.networks import split_output
from competition.progress import progress
from competition.train.losses import presence
from competition.train.runtime import gather_rows


def roc_auc(probs, labels) -> float | None:
    """ROC AUC of (n,) scores against (n,) {0, 1} labels: the chance that a positive scores
    above a negative (ties count half; sklearn's roc_auc_score), or None when the labels hold
    one value only (no pair to rank: undefined, and never NaN)."""
    labels = np.asarray(labels, bool)
    if labels.all() or not labels.any():
        return None
    from sklearn.metrics import roc_auc_score  # training only: inference never loads sklearn

    return float(roc_auc_score(labels, np.asarray(probs, np.float64)))


def best_f1(probs, labels) -> tuple[float | None, float | None]:
    """(n,) probabilities and (n,) {0, 1} labels -> (threshold, F1) of the prediction
    `probs > threshold` with the highest F1 = 2 TP / (2 TP + FP + FN) over every cut of the
    sorted probabilities; (None, None) when no label is 1 (F1 undefined).

    The threshold lies halfway between the lowest probability called positive and the next
    lower one, so `>` and `>=` agree on these data; when all are called positive, halfway
    between the lowest and 0 (-0.5 if the lowest is 0). Among cuts of equal F1 the highest
    threshold (fewest positives) wins."""
    p, y = np.asarray(probs, np.float64), np.asarray(labels, bool)
    if not y.any():
        return None, None
    order = np.argsort(-p, kind="stable")
    p, y = p[order], y[order]
    ends = np.flatnonzero(np.append(p[1:] != p[:-1], True))  # last of each run of equal values
    f1 = 2 * np.cumsum(y)[ends] / (ends + 1 + y.sum())  # predicted positives: ends + 1
    k = int(np.argmax(f1))  # the first maximum: the highest threshold
    lowest = p[ends[k]]
    below = p[ends[k] + 1] if ends[k] + 1 < len(p) else 0.0 if lowest > 0 else -1.0
    return float((lowest + below) / 2), float(f1[k])


def image_scores(probs: np.ndarray, labels: np.ndarray, f1: bool) -> dict:
    """(N, C) image-level probabilities and (N, C) {0, 1} presence labels -> per class the
    ROC AUC (None for a class whose labels are all 0 or all 1: skipped), mean_auc over the
    classes that have one (None when none has), and with `f1` the best_f1 threshold and F1
    per class (None for a class without positives)."""
    auc = {str(c): roc_auc(probs[:, i], labels[:, i]) for i, c in enumerate(CLASSES)}
    defined = [v for v in auc.values() if v is not None]
    result = {"auc": auc, "mean_auc": float(np.mean(defined)) if defined else None}
    if f1:
        best = {str(c): best_f1(probs[:, i], labels[:, i]) for i, c in enumerate(CLASSES)}
        result["f1"] = {c: f for c, (_, f) in best.items()}
        result["f1_threshold"] = {c: t for c, (t, _) in best.items()}
    return result


@torch.no_grad()
def evaluate(model, loader, loss_fn, config, rt, dtype) -> dict:
    """Full-size validation of any model (model.split_output) -> a dict with the mean loss,
    `images` and `score`, the number best.pt is kept for:

    - segmenters: the competition's mean Dice over (image, class) pairs under the default
      post-processing (config.val_threshold and val_min_area), per-class Dice and the
      all-empty baseline on the same pairs; score = mean_dice. With an image-level head
      (cls_weight > 0) also image_scores: per-class ROC AUC of the head and mean_auc.
    - classifiers (task classify): image_scores with the best-F1 threshold and F1 per class;
      score = mean_auc, or 0.0 when no class has both labels in the validation images.

    A forward whose logits overflow under fp16 is recomputed in fp32 (forward_checked),
    never scored as NaN. Each rank scores its own images; the sums are reduced and the
    image-level probabilities gathered, so the result does not depend on the number of ranks.
    """
    counts, probs, labels, loss_sum, seen = collect(model, loader, loss_fn, config, rt, dtype)
    sums = reduce_sums(counts, loss_sum, seen, rt)
    return score(sums, probs, labels, config, rt)


def collect(model, loader, loss_fn, config, rt, dtype) -> tuple:
    """This rank's validation batches through the model -> (pair counts (N, C, 3) per batch:
    binarize + pair_counts; image-level probabilities (N, C) per batch; class presence (N, C)
    per batch; the loss summed over images; the number of images)."""
    model.eval()
    counts, probs, labels, loss_sum, seen = [], [], [], 0.0, 0
    for images, masks, _ in progress(loader, desc="validate", unit="batch", disable=not rt.main,
                                     leave=False):
        images = data_lib.normalize(images.to(rt.device), config.channels_last)
        masks = masks.to(rt.device)
        out = forward_checked(model, images, dtype)  # an fp16 overflow is redone in fp32
        loss_sum += loss_fn(out, masks).item() * len(images)
        seen += len(images)
        mask_logits, image_logits = split_output(out)
        if mask_logits is not None:
            pred = binarize(torch.sigmoid(mask_logits), config.val_threshold, config.val_min_area)
            counts.append(pair_counts(pred, masks).cpu().numpy())  # (N, C, 3)
        if image_logits is not None:
            probs.append(torch.sigmoid(image_logits).cpu().numpy())  # (N, C)
            labels.append(presence(masks).cpu().numpy())
    return counts, probs, labels, loss_sum, seen


def reduce_sums(counts: list, loss_sum: float, seen: int, rt) -> np.ndarray:
    """The sums every rank adds up, float64 (3C + 2): per class the Dice sum, the empty-truth
    pairs and the pairs; then the loss sum and the image count. Summed over the ranks."""
    k = len(CLASSES)
    counts = np.concatenate(counts) if counts else np.zeros((0, k, 3), np.int64)
    dice = dice_from_counts(counts[..., 0], counts[..., 1], counts[..., 2])  # (N, C)
    sums = np.concatenate([dice.sum(0), (counts[..., 2] == 0).sum(0), np.full(k, len(counts)),
                           [loss_sum, seen]]).astype(np.float64)
    if rt.world > 1:
        reduced = torch.from_numpy(sums).to(rt.device)
        dist.all_reduce(reduced)
        sums = reduced.cpu().numpy()
    return sums


def score(sums: np.ndarray, probs: list, labels: list, config, rt) -> dict:
    """evaluate's result from the reduced sums and the image-level probabilities (gathered
    from every rank here)."""
    k = len(CLASSES)
    result = {"loss": float(sums[-2] / max(sums[-1], 1)), "images": int(sums[-1])}
    if config.task == "segment":
        dice_sum, empty, pairs = sums[:k], sums[k:2 * k], sums[2 * k:3 * k]
        result.update({
            "mean_dice": float(dice_sum.sum() / pairs.sum()),
            "per_class": {str(c): float(dice_sum[i] / pairs[i]) for i, c in enumerate(CLASSES)},
            "all_empty_baseline": float(empty.sum() / pairs.sum())})
    if config.task == "classify" or config.cls_weight > 0:
        result.update(image_scores(gather_rows(probs, k, rt), gather_rows(labels, k, rt),
                                   f1=config.task == "classify"))
    result["score"] = (result["mean_dice"] if config.task == "segment" else
                       result["mean_auc"] if result["mean_auc"] is not None else 0.0)
    return result
