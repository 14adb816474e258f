"""An epoch's validation result as history.csv's columns and as the one line printed."""
from __future__ import annotations

from competition.data.labels import CLASSES


def per_class(values: dict) -> str:
    """{"1": 0.91, "2": None, ...} -> '1:0.910 2:- ...' (None: undefined for that class)."""
    return " ".join(f"{c}:{'-' if v is None else f'{v:.3f}'}" for c, v in values.items())


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def describe(result: dict) -> str:
    """evaluate's result as the middle of an epoch's line."""
    if "mean_dice" not in result:  # a classifier
        return (f"val auc {fmt(result['mean_auc'])} [{per_class(result['auc'])}] "
                f"f1 [{per_class(result['f1'])}] at [{per_class(result['f1_threshold'])}]")
    line = (f"val dice {result['mean_dice']:.4f} [{per_class(result['per_class'])}] "
            f"(all-empty {result['all_empty_baseline']:.4f})")
    if "auc" in result:
        line += f" head auc {fmt(result['mean_auc'])} [{per_class(result['auc'])}]"
    return line


def history_columns(result: dict) -> dict:
    """evaluate's result -> its history.csv columns: val_loss; val_dice, dice_1..4, all_empty
    (segmenters); val_auc (the mean), auc_1..4 (a head or a classifier); f1_1..4 and
    f1_threshold_1..4 (classifiers). An undefined value (one label only) is None."""
    row = {"val_loss": result["loss"]}
    if "mean_dice" in result:
        row.update({"val_dice": result["mean_dice"],
                    **{f"dice_{c}": v for c, v in result["per_class"].items()},
                    "all_empty": result["all_empty_baseline"]})
    if "auc" in result:
        row.update({"val_auc": result["mean_auc"],
                    **{f"auc_{c}": v for c, v in result["auc"].items()}})
    if "f1" in result:
        row.update({**{f"f1_{c}": v for c, v in result["f1"].items()},
                    **{f"f1_threshold_{c}": v for c, v in result["f1_threshold"].items()}})
    return row


def summary(row: dict) -> str:
    """The last history row of a run -> its best score in words: Dice against the all-empty
    baseline (segmenters; with a head, the last epoch's AUC too), mean ROC AUC and the last
    epoch's best F1 per class (classifiers)."""
    if "val_dice" not in row:
        f1 = per_class({str(c): row[f"f1_{c}"] for c in CLASSES})
        return (f"best val AUC {row['best']:.4f} (mean over the classes with both labels); "
                f"epoch {row['epoch']}: best F1 per class {f1}")
    head = f"; epoch {row['epoch']}: head AUC {fmt(row['val_auc'])}" if "val_auc" in row else ""
    return (f"best val dice {row['best']:.4f} against the all-empty baseline "
            f"{row['all_empty']:.4f} ({row['best'] - row['all_empty']:+.4f})" + head)
