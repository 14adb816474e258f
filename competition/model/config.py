"""Training configuration: one frozen dataclass with every default visible, and named presets.

A preset is a small dict of overrides on top of the defaults; command-line options override
the preset. The resolved config is printed at the start of a run and saved as config.json
next to its checkpoints, which is how `--resume` recognises a run of another config.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from competition.errors import InputError


# Each field's comment is its `train --help` text (cli/config_help.py): the comment on its line
# and the comment lines right below it; a field with none there takes the comment block right
# above it. A blank line ends a field's comment, so section titles stand after one.
@dataclass(frozen=True)
class TrainConfig:
    name: str = "deeplabv3_r34"  # the preset this config started from
    task: str = "segment"  # segment: (N, 4, H, W) mask logits | classify: (N, 4) image-level
    # logits, "class present in the image" (a separate classifier, gating the masks)

    # model
    arch: str = "deeplabv3"  # the network: smp's DeepLabV3, DeepLabV3+, Unet or FPN, or
    # torchvision's DeepLabV3 (tv_deeplabv3: resnet50/101 encoders only)
    encoder: str = "resnet34"  # the backbone: an smp encoder name or tu-<timm model>;
    # resnet34 is fast and strong on Severstal, resnet101 the seeds' size
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
    atrous_rates_h: tuple[int, int, int] = (3, 6, 9)  # ASPP dilations along rows, in cells of
    # the stride-16 map: each under the crop's rows/16 (9 of a 256-row crop's 16)
    atrous_rates_w: tuple[int, int, int] = (6, 12, 18)  # ASPP dilations along columns: each
    # under the crop's columns/16 (18 of a 512-column crop's 32)
    allow_untrained_taps: bool = False  # True trains (with a warning) with taps that read
    # 256x1600 images but never a crop, so keep their random initial values
    cls_weight: float = 0.0  # segment: weight of the BCE of an auxiliary image-level head
    # (pooled deepest encoder features -> 4 logits) beside Dice+BCE; 0: no head. classify: unused

    # data
    crop_height: int = 256  # training crop rows; full height: defects run across the strip
    crop_width: int = 512  # training crop columns: 1600-wide images cropped for speed;
    # validation is full size
    defect_crop_p: float = 0.6  # share of crops centred on a defect pixel (when there is one)
    hflip_p: float = 0.5  # probability of a horizontal flip of a training crop
    vflip_p: float = 0.5  # probability of a vertical flip of a training crop
    brightness_contrast_p: float = 0.3  # probability of a random brightness/contrast change
    mask_dropout_p: float = 0.0  # "defect blackout": share of crops in which one defect region
    # (a connected component of the union of the 4 masks) is set to 0 in the image and in all
    # masks, so its class label can flip to 0 (classifiers: learn the defect, not the image)
    balance: bool = False  # sample defect and defect-free images equally often
    class_balance: bool = False  # sample by each image's rarest class: classes 1-4 and the
    # defect-free images each get a fifth of the draws (overrides balance)
    pseudo: str = ""  # a pseudo-labelled dataset (`python -m competition pseudo`) mixed into
    # every training batch, never validated on; "" for none
    pseudo_share: float = 0.0  # the share of each batch drawn from `pseudo`: round half up of
    # batch_size x share images (pseudo_per_batch); 0 with no pseudo; 1st place ~ 0.15
    num_workers: int = 8  # loader processes: JPEG decoding and augmentation

    # optimisation
    epochs: int = 30  # passes over the training images
    batch_size: int = 16  # training images per batch, per process (per GPU under torchrun)
    accumulate: int = 1  # micro-batches per optimizer update
    lr: float = 1e-3  # LR of the decoder and head (AdamW)
    encoder_lr: float = 2e-4  # LR of the pretrained encoder: lower
    weight_decay: float = 1e-4  # AdamW's decoupled weight decay
    schedule: str = "cosine"  # the LR decay after the linear warmup
    warmup_epochs: float = 1.0  # epochs of linear LR warmup from 0 (fractions allowed)
    min_lr_factor: float = 0.01  # the LR ends at lr * min_lr_factor
    clip_grad_norm: float = 1.0  # the gradient norm clipped to; 0 turns clipping off
    ema_decay: float = 0.0  # EMA of the weights (0.999 is typical); 0 turns it off

    # loss of the mask logits: a weighted sum of losses.LOSSES (bce, dice, batch_dice, focal,
    # lovasz), "NAME:WEIGHT,..." (parse_loss); the default is the soft Dice + BCE every run had before
    # the registry (a config saved with dice_weight and bce_weight loads as their sum)
    loss: str = "dice:1,bce:1"
    pos_weight: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)  # bce's weight of
    # defect pixels per class
    focal_gamma: float = 2.0  # focal's exponent (Lin et al.'s value); 0 makes focal plain BCE

    # start: a checkpoint (RUN/best.pt) whose weights, its EMA's where kept, a new run starts
    # from instead of encoder_weights (fine-tuning: new folder, loss, LR and schedule); ""
    # starts from encoder_weights. A resumed run continues from its last.pt, never re-inits.
    init_from: str = ""

    # speed
    amp: str = "auto"  # mixed precision; auto: bf16 where the GPU has it, else fp16;
    # always off on CPU
    channels_last: bool = True  # NHWC memory layout (faster convolutions on tensor cores)
    cache: str = "none"  # decoded images: none | ram (this run, /dev/shm) | disk (cache_dir,
    # reused across runs and folds); each image is decoded once instead of every epoch (cache.py)
    cache_dir: str = "cache"  # where --cache disk keeps its files (one folder per image folder)
    compile: bool = False  # torch.compile the model (training and validation); the first
    # update pays the compile time

    # validation: the competition metric under a default post-processing
    val_batch_size: int = 8  # full-size images per validation batch
    val_threshold: float = 0.5  # probability above which a pixel is a defect
    val_min_area: tuple[int, int, int, int] = (600, 600, 900, 2000)  # masks smaller are emptied
    # when validating (1st place's per-class minimum areas)
    seed: int = 0  # seeds weights, crops, augmentation and loader order

    # weight averaging (`python -m competition average`, keep.py): the evaluated weights (EMA
    # where kept) of these epochs go to kept/epochNNN.pt, about half a best.pt each (~100 MB
    # for DeepLabV3-R34), so off by default
    keep_top: int = 0  # the k epochs of best validation score (average --top k); 0: none
    keep_last: int = 0  # the k last epochs (average --last k); 0: none

    # what a run shows while it runs (tracking.py): TensorBoard event files in the run folder
    tensorboard: bool = True  # TensorBoard event files in the run folder; false: none
    # written (curves.png is drawn either way)


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
AMP_MODES = ("auto", "bf16", "fp16", "off")
# Names the registries hold, for --help without importing torch (tests/test_help.py checks
# each against its registry): model.networks.ARCHITECTURES, train.schedules.DECAYS,
# train.losses.LOSSES; and the encoders test_help builds under each architecture family
# (any smp encoder or tu-<timm model> may work; these are the ones tried)
ARCH_NAMES = ("deeplabv3", "deeplabv3plus", "unet", "fpn", "tv_deeplabv3")
SCHEDULE_NAMES = ("cosine", "poly", "flat_cosine")
LOSS_NAMES = ("bce", "dice", "batch_dice", "focal", "lovasz")
ENCODERS_TRIED = ("resnet18", "resnet34", "resnet50", "resnet101", "efficientnet-b3")
FULL_SIZE = (256, 1600)  # (rows, columns) of every image: validation, OOF and test run on it
# The architectures with an ASPP, whose image-pooling branch also normalises one pooled value
# per image (BatchNorm over (N, C, 1, 1)): they cannot train on a batch of one.
ASPP_ARCHS = ("deeplabv3", "deeplabv3plus", "tv_deeplabv3")
RATE_STRIDE = 16  # the atrous rates are in cells of this output stride (and DeepLab's default)
OLD_RATES = (12, 24, 36)  # the dilations every ASPP had before the rates were config fields

TUPLE_FIELDS = {f.name for f in dataclasses.fields(TrainConfig) if f.type.startswith("tuple")}


def field_kinds() -> dict[str, tuple[type, int]]:
    """field -> (the type of its value, or of each item of a tuple; the tuple's length, 0 for
    a single value), read from the defaults: what a command-line option parses and an
    experiment file must give."""
    kinds = {}
    for field in dataclasses.fields(TrainConfig):
        default = field.default
        kinds[field.name] = ((type(default[0]), len(default)) if isinstance(default, tuple)
                             else (type(default), 0))
    return kinds


# Fields that change speed or what is kept, not results: they may differ when a run is resumed.
# compile belongs here as val_batch_size does: fused kernels round in another order, so results
# differ in the last bits (tests/test_compile.py bounds it), as they do between batch sizes and
# CPUs; a resumed run may switch it, since checkpoints hold the plain module's weights.
RUNTIME_FIELDS = {"num_workers", "val_batch_size", "keep_top", "keep_last", "tensorboard",
                  "cache", "cache_dir", "compile"}
CACHES = ("none", "ram", "disk")  # "none" and data/cache.py's CACHES (tests/test_cache.py)


def build_config(name: str = "deeplabv3_r34", **overrides) -> TrainConfig:
    """Defaults <- preset `name` <- overrides (None values are ignored)."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    values = {**to_dict(TrainConfig()), **PRESETS[name], "name": name}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(values)


def from_dict(values: dict) -> TrainConfig:
    """A config from a (JSON) dict: lists become tuples; unknown keys are an error; the loss
    spec is rewritten in its canonical form (format_loss). A dict without atrous rates was
    saved before they were fields: its model had OLD_RATES. One with dice_weight and
    bce_weight instead of loss was saved before the loss registry (old_loss)."""
    values = upgrade_loss(values)
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
    if "loss" in values:
        values["loss"] = format_loss(parse_loss(values["loss"]))
    config = TrainConfig(**values)
    check(config)
    return config


def from_saved(values, path) -> TrainConfig:
    """A saved config (config.json, a checkpoint's) -> a TrainConfig; one this version cannot
    read (a field it does not know, a value of the wrong type) -> an InputError naming `path`."""
    try:
        if not isinstance(values, dict):
            raise InputError(f"expected a mapping of config fields, got {type(values).__name__}")
        return from_dict(values)
    except (InputError, TypeError) as e:
        raise InputError(f"{path}: its config does not fit this version: {e}") from None


OLD_LOSS_FIELDS = ("dice_weight", "bce_weight")  # the loss's fields before the registry


def upgrade_loss(values: dict) -> dict:
    """A config dict with dice_weight and bce_weight and no loss (saved before the loss
    registry) -> the same dict with its loss spec instead (old_loss); any other unchanged."""
    if "loss" in values or not set(OLD_LOSS_FIELDS) & set(values):
        return values
    return {**{k: v for k, v in values.items() if k not in OLD_LOSS_FIELDS},
            "loss": old_loss(values)}


def old_loss(values: dict) -> str:
    """The loss spec of a config dict saved with dice_weight and bce_weight (both 1 by
    default): "dice:W,bce:W" in the order the loss summed them, a term of weight 0 left out
    (0 x a finite Dice adds exactly 0). A classifier's were unused: the default spec."""
    if values.get("task", "segment") == "classify":
        return TrainConfig.loss
    terms = [(name, values.get(f"{name}_weight", 1.0)) for name in ("dice", "bce")]
    kept = [(name, weight) for name, weight in terms if weight != 0]
    if not kept:
        raise InputError("dice_weight 0 and bce_weight 0: a config without a mask loss")
    return format_loss(kept)


def parse_loss(text: str) -> tuple[tuple[str, float], ...]:
    """'bce:0.75,lovasz:0.25' -> (('bce', 0.75), ('lovasz', 0.25)), in the given order (the
    order of the sum). Comma-separated NAME:WEIGHT, a bare NAME meaning NAME:1, spaces
    ignored; every weight a positive finite number, every name once. Malformed -> an
    InputError naming --loss and the text. The names are checked by losses.LOSSES."""
    def bad(why: str) -> InputError:
        return InputError(f"--loss {text!r}: {why}; expected NAME:WEIGHT pairs separated by "
                          "commas, e.g. bce:0.75,lovasz:0.25")
    if not isinstance(text, str) or not text.strip():
        raise bad("no loss given")
    terms: list[tuple[str, float]] = []
    for part in text.split(","):
        name, colon, weight = (x.strip() for x in part.partition(":"))
        if not name:
            raise bad(f"{part.strip()!r} has no loss name" if part.strip() else "an empty part")
        try:
            value = float(weight) if colon else 1.0
        except ValueError:
            raise bad(f"the weight {weight!r} of {name!r} is not a number") from None
        if not (math.isfinite(value) and value > 0):
            raise bad(f"the weight {weight!r} of {name!r} must be a positive number")
        if name in dict(terms):
            raise bad(f"{name!r} is given twice")
        terms.append((name, value))
    return tuple(terms)


def format_loss(terms) -> str:
    """((name, weight), ...) -> 'name:weight,...', the shortest text that reads back to the
    same floats ('dice:1,bce:1', 'bce:0.75,lovasz:0.25')."""
    def number(w: float) -> str:
        text = repr(float(w))
        return text[:-2] if text.endswith(".0") else text
    return ",".join(f"{name}:{number(weight)}" for name, weight in terms)


def check(c: TrainConfig) -> None:
    """Values a run cannot start with -> InputError (names are checked by their registries)."""
    if c.task not in TASKS:
        raise InputError(f"task {c.task!r}: valid values are {', '.join(TASKS)}")
    if c.cls_weight < 0:
        raise InputError(f"cls_weight {c.cls_weight}: must be 0 (no head) or more")
    if c.task == "classify" and c.cls_weight > 0:
        raise InputError(f"cls_weight {c.cls_weight}: weighs a segmenter's auxiliary head; a "
                         "classifier (task classify) trains on its image-level BCE alone")
    if c.task == "classify" and c.loss != TrainConfig.loss:
        raise InputError(f"loss {c.loss!r}: weighs a segmenter's mask losses; a classifier "
                         "(task classify) trains on its image-level BCE alone")
    if not (math.isfinite(c.focal_gamma) and c.focal_gamma >= 0):
        raise InputError(f"focal_gamma {c.focal_gamma}: must be 0 or more (0: focal is BCE)")
    if c.cache not in CACHES:  # data/cache.py's kinds
        raise InputError(f"cache {c.cache!r}: valid values are {', '.join(CACHES)}")
    if c.amp not in AMP_MODES:
        raise InputError(f"amp {c.amp!r}: valid values are {', '.join(AMP_MODES)}")
    for field in ("epochs", "batch_size", "accumulate", "val_batch_size", "crop_height",
                  "crop_width"):
        if getattr(c, field) < 1:
            raise InputError(f"{field} {getattr(c, field)}: must be at least 1")
    if c.crop_height % 32 or c.crop_width % 32:
        raise InputError(f"crop_height x crop_width {c.crop_height}x{c.crop_width}: both "
                         "sides must be multiples of 32 (the encoder's total stride)")
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
    check_pseudo(c)


def pseudo_per_batch(batch_size: int, share: float) -> int:
    """Pseudo-labelled images in every batch of `batch_size`: batch_size x share rounded half
    up (8 x 0.15 = 1.2 -> 1; 16 x 0.15 = 2.4 -> 2; 4 x 0.125 = 0.5 -> 1)."""
    return math.floor(batch_size * share + 0.5)


def check_pseudo(c: TrainConfig) -> None:
    """pseudo and pseudo_share come together, and the share gives at least one pseudo-labelled
    and one labelled image per batch."""
    if not 0.0 <= c.pseudo_share < 1.0:  # a NaN fails too
        raise InputError(f"pseudo_share {c.pseudo_share}: the share of pseudo-labelled images "
                         "in a batch, must be in [0, 1)")
    if c.pseudo_share > 0 and not c.pseudo:
        raise InputError(f"pseudo_share {c.pseudo_share} without pseudo: give the "
                         "pseudo-labelled dataset too (--pseudo DIR)")
    if not c.pseudo:
        return
    if c.pseudo_share == 0:
        raise InputError(f"pseudo {c.pseudo} with pseudo_share 0 mixes nothing in: give "
                         "--pseudo-share in (0, 1), e.g. 0.15")
    k = pseudo_per_batch(c.batch_size, c.pseudo_share)
    if not 1 <= k < c.batch_size:
        raise InputError(f"pseudo_share {c.pseudo_share} of batch_size {c.batch_size} gives {k} "
                         "pseudo-labelled images per batch (rounded half up): it must leave at "
                         "least one of each kind; change --pseudo-share or --batch-size")


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


def differing(a: TrainConfig, b: TrainConfig) -> list[str]:
    """The fields outside RUNTIME_FIELDS whose values differ, in field order."""
    da, db = to_dict(a), to_dict(b)
    return [k for k in da if k not in RUNTIME_FIELDS and da[k] != db[k]]


def differences(a: TrainConfig, b: TrainConfig) -> list[str]:
    """Fields (outside RUNTIME_FIELDS) whose values differ, as 'field: a != b'."""
    da, db = to_dict(a), to_dict(b)
    return [f"{k}: {da[k]!r} != {db[k]!r}" for k in differing(a, b)]
