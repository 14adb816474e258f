"""`bench flops`: the floating-point operations per image of each model of a recipe, counted
by torch.utils.flop_counter on the CPU, and the time each step of the recipe would take on a
GPU that sustains an assumed throughput.

Why count instead of time: where no GPU is at hand the FLOPs are what can be measured, and a
GPU's time is close to FLOPs / sustained throughput for convolutional networks this size.
The throughput is an assumption (--tflops), printed beside every figure; `bench train` and
`bench predict` replace it with measured rates on the GPU itself.

What is counted (torch's counter: matrix multiplies and convolutions, 2 FLOPs per
multiply-add; normalisation, activations and the loss are left out, a few percent):
  train: one update on one training crop: forward and backward, from a batch of 2 / 2
         (DeepLab's image-pooling BatchNorm cannot train on a batch of one);
  infer: one forward of one full-size 256x1600 image, in eval mode.
A step's FLOPs (steps()):
  train    folds x epochs x (train images x train + validation images x infer)
  oof      each fold's validation images x TTA views x infer, per model
  predict  test images x the models' folds x views x infer (a kernel rehearsal: again)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from competition.model.config import FULL_SIZE
from competition.model.networks import from_config, split_output

TRAIN_IMAGES, TEST_IMAGES = 12568, 5506  # the competition's train.csv and test_images/


def count(run) -> int:
    """FLOPs of the matrix multiplies and convolutions `run()` performs."""
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def per_image(config) -> tuple[float, float]:
    """(train FLOPs per crop, inference FLOPs per full-size image) of config's model."""
    torch.manual_seed(0)
    model = from_config(config, encoder_weights="none")
    crops = torch.zeros(2, 3, config.crop_height, config.crop_width)

    def update():
        outputs = [o for o in split_output(model(crops)) if o is not None]
        sum(o.float().sum() for o in outputs).backward()

    model.train()
    train = count(update) / 2
    model.eval()
    with torch.no_grad():
        infer = count(lambda: model(torch.zeros(1, 3, *FULL_SIZE)))
    return train, float(infer)


@dataclass(frozen=True)
class Work:
    """One model of a recipe as the projection needs it."""
    name: str
    folds: int  # folds trained (and ensembled)
    epochs: int
    train: float  # FLOPs per training crop (per_image)
    infer: float  # FLOPs per full-size image


def steps(works: list[Work], n_folds: int, views: int, train_images: int = TRAIN_IMAGES,
          test_images: int = TEST_IMAGES, rehearse: bool = True) -> list[tuple[str, float]]:
    """(step, FLOPs) of a recipe: each model's training, then oof, predict and the kernel
    rehearsal (the module docstring has the formulas)."""
    val = train_images / n_folds
    rows = [(f"train {w.name}", w.folds * w.epochs * ((train_images - val) * w.train
                                                      + val * w.infer)) for w in works]
    rows.append(("oof", sum(w.folds * val * views * w.infer for w in works)))
    predict = sum(test_images * w.folds * views * w.infer for w in works)
    rows.append(("predict", predict))
    if rehearse:
        rows.append(("kernel rehearsal", predict))
    return rows


def minutes(flops: float, tflops: float) -> float:
    return flops / (tflops * 1e12) / 60


def report(works: list[Work], n_folds: int, views: int, tflops: float, train_images: int,
           test_images: int, rehearse: bool) -> list[tuple[str, float, float]]:
    """Print and return (step, PFLOPs, minutes at `tflops`) of each step and the total."""
    rows = steps(works, n_folds, views, train_images, test_images, rehearse)
    rows.append(("total", sum(f for _, f in rows)))
    table = [(step, f / 1e15, minutes(f, tflops)) for step, f in rows]
    width = max(len(step) for step, *_ in table)
    print(f"{'step':<{width}}  {'PFLOPs':>8}  {'minutes at ' + format(tflops, 'g') + ' TFLOPS':>20}")
    for step, pflops, mins in table:
        print(f"{step:<{width}}  {pflops:8.1f}  {mins:20.1f}")
    return table
