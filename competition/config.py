"""Training configuration: one frozen dataclass with every default visible, and named presets.

A preset is a small dict of overrides on top of the defaults; command-line options override
the preset. The resolved config is printed at the start of a run and saved as config.json
next to its checkpoints, which is how `--resume` recognises a run of another config.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from competition.errors import InputError


@dataclass(frozen=True)
class TrainConfig:
    name: str = "deeplabv3_r34"  # the preset this config started from
    task: str = "segment"  # segment: (N, 4, H, W) mask logits | classify: (N, 4) image-level
    # logits, "class present in the image" (a separate classifier, gating the masks)
    # model
    arch: str = "deeplabv3"  # smp DeepLabV3; see model.ARCHITECTURES
    encoder: str = "resnet34"  # fast and strong on Severstal; resnet101 for the seeds' size
    encoder_weights: str = "imagenet"  # imagenet | none | PATH to a local encoder state dict
    output_stride: int = 0  # 0: the architecture's default, 16 for DeepLab (fits 256x1600 in
    # memory; 8 is sharper at ~3x the memory), fixed 32 for Unet and FPN
    # ASPP (the DeepLab architectures; Unet and FPN have none and ignore these): dilation of the
    # three 3x3 branches per axis, in cells of the stride-16 feature map (doubled at stride 8).
    # A 256x1600 image is 16x100 cells and a 256x512 crop 16x32; a tap d cells off centre reads
    # an axis of n cells only if |d| < n, so smp's and torchvision's square-image (12, 24, 36)
    # leave taps that read every full-size image but never a crop (see untrained_taps). Hence
    # rows < 16 and columns < 32, spread like the paper's (6, 12, 18) over its 33-cell crops
    # (the widest about 0.55 of the crop).
    atrous_rates_h: tuple[int, int, int] = (3, 6, 9)  # rows: 9 of the crop's 16
    atrous_rates_w: tuple[int, int, int] = (6, 12, 18)  # columns: 18 of the crop's 32
    allow_untrained_taps: bool = False  # True trains (with a warning) with taps that read
    # 256x1600 images but never a crop, so keep their random initial values
    cls_weight: float = 0.0  # segment: weight of the BCE of an auxiliary image-level head
    # (pooled deepest encoder features -> 4 logits) beside Dice+BCE; 0: no head. classify: unused
    # data
    crop_height: int = 256  # full height: defects run across the strip
    crop_width: int = 512  # 1600-wide images cropped for speed; validation is full size
    defect_crop_p: float = 0.6  # share of crops centred on a defect pixel (when there is one)
    hflip_p: float = 0.5
    vflip_p: float = 0.5
    brightness_contrast_p: float = 0.3
    mask_dropout_p: float = 0.0  # "defect blackout": share of crops in which one defect region
    # (a connected component of the union of the 4 masks) is set to 0 in the image and in all
    # masks, so its class label can flip to 0 (classifiers: learn the defect, not the image)
    balance: bool = False  # sample defect and defect-free images equally often
    num_workers: int = 8  # JPEG decoding and augmentation in worker processes
    # optimisation
    epochs: int = 30
    batch_size: int = 16  # per process (per GPU under torchrun)
    accumulate: int = 1  # micro-batches per optimizer update
    lr: float = 1e-3  # decoder and head (AdamW)
    encoder_lr: float = 2e-4  # pretrained encoder: lower
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # cosine | poly | flat_cosine, after linear warmup
    warmup_epochs: float = 1.0
    min_lr_factor: float = 0.01  # the LR ends at lr * min_lr_factor
    clip_grad_norm: float = 1.0  # 0 turns clipping off
    ema_decay: float = 0.0  # EMA of the weights (0.999 is typical); 0 turns it off
    # loss
    dice_weight: float = 1.0
    bce_weight: float = 1.0
    pos_weight: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)  # BCE weight of defect pixels per class
    # speed
    amp: str = "auto"  # auto (bf16 where supported, else fp16) | bf16 | fp16 | off; always off on CPU
    channels_last: bool = True
    # validation: the competition metric under a default post-processing
    val_batch_size: int = 8
    val_threshold: float = 0.5  # probability above which a pixel is a defect
    val_min_area: tuple[int, int, int, int] = (600, 600, 900, 2000)  # 1st place's per-class minimum mask area
    seed: int = 0
    # weight averaging (`python -m competition average`, keep.py): the evaluated weights (EMA
    # where kept) of these epochs go to kept/epochNNN.pt, about half a best.pt each (~100 MB
    # for DeepLabV3-R34), so off by default
    keep_top: int = 0  # the k epochs of best validation score (average --top k); 0: none
    keep_last: int = 0  # the k last epochs (average --last k); 0: none


PRESETS: dict[str, dict] = {
    "deeplabv3_r34": {},
    "deeplabv3_r101": dict(arch="tv_deeplabv3", encoder="resnet101", batch_size=8,
                           encoder_lr=1e-4),
    # 128x256 crops are 8x16 cells: rates under 8 rows and 16 columns; these also fit
    # 64x128 crops (4x8 cells) for quick runs
    "demo_cpu": dict(encoder="resnet18", encoder_weights="none", crop_height=128,
                     crop_width=256, atrous_rates_h=(1, 2, 3), atrous_rates_w=(2, 4, 6),
                     defect_crop_p=0.8, epochs=6, batch_size=8, lr=2e-3,
                     encoder_lr=2e-3, warmup_epochs=0.5, ema_decay=0.98, num_workers=2,
                     val_batch_size=4, val_min_area=(200, 200, 400, 800)),
    # image-level classifiers: near-full crops (1568 of 1600 columns: only a shift), no
    # defect-biased crop (the labels keep the data's class balance), defect blackout on half
    # the crops; a linear head on a pretrained encoder, so a low encoder LR
    "classifier_r34": dict(task="classify", encoder="resnet34", crop_height=256,
                           crop_width=1568, defect_crop_p=0.0, mask_dropout_p=0.5, epochs=20,
                           batch_size=16, lr=1e-3, encoder_lr=2e-4, val_batch_size=16),
    # about 2-3 minutes on 2 CPU cores for the demo's 320 training images (5 epochs of 40
    # updates): 128x512 crops, full-size validation
    "demo_cpu_cls": dict(task="classify", encoder="resnet18", encoder_weights="none",
                         crop_height=128, crop_width=512, defect_crop_p=0.0,
                         mask_dropout_p=0.5, epochs=5, batch_size=8, lr=2e-3,
                         encoder_lr=2e-3, warmup_epochs=0.5, num_workers=2, val_batch_size=8),
}
TASKS = ("segment", "classify")
FULL_SIZE = (256, 1600)  # (rows, columns) of every image: validation, OOF and test run on it
# The architectures with an ASPP, whose image-pooling branch also normalises one pooled value
# per image (BatchNorm over (N, C, 1, 1)): they cannot train on a batch of one.
ASPP_ARCHS = ("deeplabv3", "deeplabv3plus", "tv_deeplabv3")
RATE_STRIDE = 16  # the atrous rates are in cells of this output stride (and DeepLab's default)
OLD_RATES = (12, 24, 36)  # the dilations every ASPP had before the rates were config fields

TUPLE_FIELDS = {f.name for f in dataclasses.fields(TrainConfig) if f.type.startswith("tuple")}
# Fields that change speed or what is kept, not results: they may differ when a run is resumed.
RUNTIME_FIELDS = {"num_workers", "val_batch_size", "keep_top", "keep_last"}


def build_config(name: str = "deeplabv3_r34", **overrides) -> TrainConfig:
    """Defaults <- preset `name` <- overrides (None values are ignored)."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    values = {**to_dict(TrainConfig()), **PRESETS[name], "name": name}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(values)


def from_dict(values: dict) -> TrainConfig:
    """A config from a (JSON) dict: lists become tuples; unknown keys are an error. A dict
    without atrous rates was saved before they were fields: its model had OLD_RATES."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"unknown config field {unknown[0]!r}; valid: {', '.join(sorted(known))}")
    if "atrous_rates_h" not in values and "atrous_rates_w" not in values:
        stride = values.get("output_stride") or RATE_STRIDE
        old = tuple(d * stride // RATE_STRIDE for d in OLD_RATES)  # 6, 12, 18 at stride 8
        values = {**values, "atrous_rates_h": old, "atrous_rates_w": old,
                  "allow_untrained_taps": True}
    values = {k: tuple(v) if k in TUPLE_FIELDS else v for k, v in values.items()}
    config = TrainConfig(**values)
    check(config)
    return config


def check(c: TrainConfig) -> None:
    """Values a run cannot start with -> InputError (names are checked by their registries)."""
    if c.task not in TASKS:
        raise InputError(f"task {c.task!r}: valid values are {', '.join(TASKS)}")
    if c.cls_weight < 0:
        raise InputError(f"cls_weight {c.cls_weight}: must be 0 (no head) or more")
    if c.task == "classify" and c.cls_weight > 0:
        raise InputError(f"cls_weight {c.cls_weight}: weighs a segmenter's auxiliary head; a "
                         "classifier (task classify) trains on its image-level BCE alone")
    if c.amp not in ("auto", "bf16", "fp16", "off"):
        raise InputError(f"amp {c.amp!r}: valid values are auto, bf16, fp16, off")
    for field in ("epochs", "batch_size", "accumulate", "val_batch_size", "crop_height",
                  "crop_width"):
        if getattr(c, field) < 1:
            raise InputError(f"{field} {getattr(c, field)}: must be at least 1")
    if c.crop_height % 32 or c.crop_width % 32:
        raise InputError(f"crop {c.crop_height}x{c.crop_width}: both sides must be multiples "
                         "of 32 (the encoder's total stride)")
    for field in ("pos_weight", "val_min_area"):
        if len(getattr(c, field)) != 4:
            raise InputError(f"{field} {getattr(c, field)}: needs one value per class (4)")
    for field in ("defect_crop_p", "hflip_p", "vflip_p", "brightness_contrast_p",
                  "mask_dropout_p"):
        if not 0.0 <= getattr(c, field) <= 1.0:
            raise InputError(f"{field} {getattr(c, field)}: a probability, must be in [0, 1]")
    for field in ("keep_top", "keep_last"):
        if getattr(c, field) < 0:
            raise InputError(f"{field} {getattr(c, field)}: must be 0 (keep none) or more")
    if not 0.0 <= c.ema_decay < 1.0:
        raise InputError(f"ema_decay {c.ema_decay}: must be in [0, 1)")
    if c.batch_size < 2 and c.task == "segment" and c.arch in ASPP_ARCHS:
        raise InputError(f"batch_size {c.batch_size}: {c.arch}'s image-pooling branch normalises "
                         "one pooled value per image (BatchNorm), which cannot train on a batch "
                         "of one; use --batch-size 2 or more (--accumulate N keeps the update "
                         "size)")
    if not 0.0 < c.val_threshold < 1.0:
        raise InputError(f"val_threshold {c.val_threshold}: must be in (0, 1)")
    for field in ("atrous_rates_h", "atrous_rates_w"):
        rates = getattr(c, field)
        if len(rates) != 3 or min(rates) < 1:
            raise InputError(f"{field} {rates}: needs three rates of at least 1 (one per "
                             "ASPP branch)")
    untrained = untrained_line(c)
    if untrained and not c.allow_untrained_taps:
        raise InputError(f"{untrained}; allow_untrained_taps true trains them anyway")


def cells(pixels: int, stride: int) -> int:
    """Feature-map cells along an axis of `pixels` pixels at output `stride` (every stride-2
    stage rounds up, as a 3x3 convolution with padding 1 does)."""
    return -(-pixels // stride)


def live(offset: int, n: int) -> bool:
    """Whether a convolution tap `offset` cells off centre (zero padding) reads an axis of `n`
    cells at some output cell, and so can get a gradient: iff |offset| < n."""
    return abs(offset) < n


def dilations(rates: tuple[int, ...], stride: int) -> tuple[int, ...]:
    """Atrous rates in stride-16 cells -> the dilations at output `stride` (8 doubles them)."""
    return tuple(r * RATE_STRIDE // stride for r in rates)


def untrained_taps(c: TrainConfig) -> list[str]:
    """One line per ASPP branch and axis whose off-centre taps read 256x1600 images but never
    a crop_height x crop_width crop: they get no gradient in training and switch on, with
    their initial values, at full size. Empty for Unet and FPN (no ASPP)."""
    stride = c.output_stride or RATE_STRIDE
    if c.task == "classify" or c.arch not in ASPP_ARCHS or stride not in (8, 16):  # build_model refuses other strides
        return []
    problems = []
    for field, axis, crop, full, rates in (
            ("atrous_rates_h", "rows", "crop_height", FULL_SIZE[0], c.atrous_rates_h),
            ("atrous_rates_w", "columns", "crop_width", FULL_SIZE[1], c.atrous_rates_w)):
        n_crop, n_full = cells(getattr(c, crop), stride), cells(full, stride)
        for branch, (rate, d) in enumerate(zip(rates, dilations(rates, stride)), 1):
            if live(d, n_full) and not live(d, n_crop):
                fits = (n_crop - 1) * stride // RATE_STRIDE
                needed = (d * stride // 32 + 1) * 32  # the first multiple of 32 with > d cells
                problems.append(
                    f"{field} {rate} (ASPP branch {branch}): at output stride {stride} its "
                    f"taps {d} {axis} off centre read {FULL_SIZE[0]}x{FULL_SIZE[1]} images "
                    f"({n_full} {axis}) but never a {c.crop_height}x{c.crop_width} crop "
                    f"({n_crop} {axis}), so they would not train: the largest rate that fits "
                    f"is {fits}, or {crop} {needed} fits this one")
    return problems


def untrained_line(c: TrainConfig) -> str:
    """untrained_taps(c) as one line: the first and how many more ("" when none)."""
    problems = untrained_taps(c)
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return problems[0] + more if problems else ""


def to_dict(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)


def differences(a: TrainConfig, b: TrainConfig) -> list[str]:
    """Fields (outside RUNTIME_FIELDS) whose values differ, as 'field: a != b'."""
    da, db = to_dict(a), to_dict(b)
    return [f"{k}: {da[k]!r} != {db[k]!r}" for k in da
            if k not in RUNTIME_FIELDS and da[k] != db[k]]
