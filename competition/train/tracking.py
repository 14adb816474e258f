"""What a training run shows while it runs, written by rank 0 into its run folder:
TensorBoard event files (`tensorboard --logdir folds` shows every run) and curves.png.

train.py calls a few hooks: `start` once, `Tracker.interval` where train_one_epoch reads
the loss anyway (every CHECK_EVERY updates: no extra device sync), `Tracker.epoch` after
history.csv is written, and its epoch loop iterates `Tracker.epochs`, which closes the
writer when the loop ends or raises. The step of every event is the optimizer update count
(history.csv's `step`). Nothing is sent anywhere. matplotlib and tensorboard are imported
only when a run draws or logs: inference (predict, the Kaggle kernel) imports train.py and
must not load them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from competition.data.datasets import SteelDataset, normalize
from competition.model.forward import forward_checked
from competition.model.networks import split_output
from competition.data.postprocess import binarize

EXAMPLES = 4  # validation images with a defect drawn in val/overlays every epoch
OVERLAY_DPI = 50  # the overlay figure is 16 inches wide: 800 px, half the images' columns
LR_GROUPS = ("encoder", "head")  # fit's AdamW parameter groups, in their order
EVENTS = "events.out.tfevents.*"  # SummaryWriter's file names


def interval_scalars(h: dict, param_groups, images_per_s: float) -> dict[str, float]:
    """What train_one_epoch read at an interval (Health.read) -> tags: train/loss, the mean
    finite loss of the micro-batches since the last read (NaN when none was finite);
    train/skipped_updates, the updates of this epoch so far whose loss was not finite;
    lr/encoder and lr/head; train/images_per_s since the epoch began."""
    return {"train/loss": h["interval_loss"], "train/skipped_updates": h["skipped"],
            **{f"lr/{name}": group["lr"] for name, group in zip(LR_GROUPS, param_groups)},
            "train/images_per_s": images_per_s}


def epoch_scalars(row: dict, columns: dict) -> dict[str, float]:
    """An epoch's history row and its validation columns (train.history_columns) -> tags:
    each column as val/<name> less a val_ prefix (val/loss, val/dice, val/dice_1..4,
    val/all_empty; val/auc, val/auc_1..4; val/f1_1..4, val/f1_threshold_1..4) and
    train/epoch. An undefined value (None: an AUC or F1 of a class with one label value
    only) has no point; a NaN is logged as NaN."""
    tags = {"val/" + name.removeprefix("val_"): v for name, v in columns.items() if v is not None}
    return {**tags, "train/epoch": row["epoch"]}


def layout() -> dict:
    """TensorBoard's Custom Scalars page: the lines that belong on one chart (tags are
    regular expressions)."""
    def lines(*tags):
        return ["Multiline", list(tags)]
    return {"training": {"loss: train (per interval), validation (per epoch)":
                         lines("train/loss", "val/loss"),
                         "learning rate": lines("lr/encoder", "lr/head")},
            "validation": {"Dice, overall and per class, beside all-empty":
                           lines(r"val/dice(_\d)?$", "val/all_empty"),
                           "ROC AUC, mean and per class": lines(r"val/auc(_\d)?$")}}


def overlay_ids(val_ids: list[str], encoded: dict, n: int = EXAMPLES) -> list[str]:
    """The first `n` validation images (in folds.csv's order) with a defect: the same
    images every epoch and in every run of the fold, whatever the number of ranks."""
    return [i for i in val_ids if encoded.get(i)][:n]


@torch.no_grad()
def predicted_masks(model, images: torch.Tensor, config, device, dtype) -> np.ndarray:
    """(n, 3, H, W) uint8 images -> (n, 4, H, W) bool masks of `model` under validation's
    default post-processing (val_threshold, val_min_area), as `evaluate` scores them."""
    model.eval()
    out = forward_checked(model, normalize(images.to(device), config.channels_last), dtype)
    mask_logits, _ = split_output(out)
    probs = torch.sigmoid(mask_logits)
    return binarize(probs, config.val_threshold, config.val_min_area).cpu().numpy()


class Tracker:
    """Rank 0's outputs of one run: curves.png in `out`, its SummaryWriter (None with
    --no-tensorboard) and the overlay images. OFF (ranks > 0) writes nothing."""

    def __init__(self, out: Path | None = None, writer=None, overlays: dict | None = None):
        self.out, self.writer, self.overlays = out, writer, overlays

    def epochs(self, start: int, end: int):
        """range(start, end), closing the writer when the loop ends or an exception leaves
        it (the exception unwinds the loop, which drops and so closes this generator)."""
        try:
            yield from range(start, end)
        finally:
            self.close()

    def interval(self, step: int, h: dict, param_groups, images_per_s: float) -> None:
        if self.writer is not None:
            self._scalars(interval_scalars(h, param_groups, images_per_s), step)

    def epoch(self, history: list[dict], columns: dict, model, dtype) -> None:
        """After an epoch: redraw curves.png from the history rows; log the epoch's scalars
        and the overlays of `model` (the evaluated one) at the epoch's last step."""
        if self.out is None:
            return
        from competition.train import curves

        curves.write_curves(self.out / curves.CURVES, [(str(self.out), pd.DataFrame(history))])
        if self.writer is None:
            return
        row = history[-1]
        self._scalars(epoch_scalars(row, columns), row["step"])
        if self.overlays:
            self.writer.add_image("val/overlays", overlay_image(model, dtype, **self.overlays),
                                  row["step"], dataformats="HWC")
        self.writer.flush()  # an epoch's events reach a running TensorBoard now

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def _scalars(self, scalars: dict, step: int) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)


OFF = Tracker()


def start(out: Path, config, resumed_at: int | None, fold: int, folder: Path,
          val_ids: list[str], encoded: dict, device: torch.device) -> Tracker:
    """Rank 0's tracker of the run in `out`. A new run (`resumed_at` None) first deletes the
    event files of a run it overwrites; a run resumed from last.pt at optimizer step
    `resumed_at` appends a new event file whose purge_step hides what a crashed run logged
    after that step, so every step appears once. Overlays: segmenters only (a classifier
    predicts no masks), of overlay_ids's images read from `folder`."""
    if resumed_at is None:
        for stale in out.glob(EVENTS):
            stale.unlink()
    if not config.tensorboard:
        return Tracker(out)
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(out, purge_step=None if resumed_at is None else resumed_at + 1)
    if resumed_at is None:
        writer.add_custom_scalars(layout())
    ids = overlay_ids(val_ids, encoded) if config.task == "segment" else []
    items = [SteelDataset(folder, ids, encoded)[i] for i in range(len(ids))]
    overlays = (dict(ids=ids, images=torch.stack([image for image, _, _ in items]),
                     truth=torch.stack([mask for _, mask, _ in items]).numpy().astype(bool),
                     fold=fold, config=config, device=device) if items else None)
    return Tracker(out, writer, overlays)


def overlay_image(model, dtype, ids, images, truth, fold, config, device) -> np.ndarray:
    """The overlay images predicted by `model` -> figures.overlay_figure (truth outlined,
    prediction filled, Dice per class in the title) as (H, W, 3) uint8 at OVERLAY_DPI."""
    from competition.data.figures import figure_array, overlay_figure

    pred = predicted_masks(model, images, config, device, dtype)
    examples = [{"image_id": i, "fold": fold, "image": image.permute(1, 2, 0).numpy(),
                 "truth": t, "pred": p} for i, image, t, p in zip(ids, images, truth, pred)]
    return figure_array(overlay_figure(examples), OVERLAY_DPI)
