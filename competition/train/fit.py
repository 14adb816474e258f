"""Train one fold: `fit` reads and checks its inputs, builds the model, optimizer, loaders
and schedule (or restores them from last.pt), then runs epochs of `train_one_epoch`
(epoch.py) and `evaluate` (evaluate.py), saving after each.

One process, or one per GPU under `torchrun --nproc_per_node=N -m competition train ...`
(DDP; only rank 0 writes). Every epoch: train on the crops, validate on full-size images,
write best.pt when the validation score improved (the competition's Dice for a segmenter,
the mean ROC AUC of "class present" for a classifier), then last.pt and history.csv, each
atomically, in an order a crash cannot turn into a worse best.pt (saving.py); with
--keep-top/--keep-last, the epochs kept for weight averaging (keep.py); curves.png and
TensorBoard events (tracking.py).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from competition.data import cache as cache_lib
from competition.data import datasets as data_lib
from competition.data import provenance
from competition.data.folds import split
from competition.data.labels import by_image, load_train
from competition.errors import InputError
from competition.files import write_json
from competition.model import checkpoint
from competition.model import config as config_lib
from competition.model.forward import NonFiniteLogits
from competition.model.networks import check_compiler, compile_model, from_config, param_groups
from competition.model.precision import PRECISION, amp_dtype
from competition.train import augment, keep, sampling, saving, tracking
from competition.train import pseudo_mix as pseudo_lib
from competition.train.epoch import NonFiniteLoss, make_ema, train_one_epoch
from competition.train.evaluate import evaluate
from competition.train.history import describe, history_columns
from competition.train.losses import MaskLoss, PresenceLoss, SegmentLoss
from competition.train.runtime import (Runtime, configure_backends, gather_rng, restore_rng,
                                       resume_dtype, runtime, same_on_every_rank,
                                       saved_precision, unwrap)
from competition.train.schedules import build_scheduler, lr_factor


def make_model(config, device: torch.device, encoder_weights: str | None = None):
    """The config's model on `device`, channels_last when the config asks for it."""
    model = from_config(config, encoder_weights).to(device)
    return model.to(memory_format=torch.channels_last) if config.channels_last else model


def make_loss(config, device: torch.device) -> torch.nn.Module:
    """The task's loss on `device`, called as loss_fn(model output, (N, 4, H, W) masks) -> ()
    float32: a segmenter's config.loss, a weighted sum of losses.LOSSES (+ cls_weight x its
    head's BCE against class presence), a classifier's BCE against class presence
    (losses.presence). An unknown loss name is an InputError."""
    if config.task == "classify":
        return PresenceLoss().to(device)
    masks = MaskLoss(config_lib.parse_loss(config.loss), config.pos_weight, config.focal_gamma)
    return SegmentLoss(masks, config.cls_weight).to(device)


def full_size_loader(config, data: Path, ids, encoded, rt: Runtime, batch_size: int,
                     drop_last: bool = False, images=None):
    """This rank's share of `ids` as full-size 256x1600 images, unaugmented, in order:
    validation, and BatchNorm re-estimation (average.py, `drop_last`). `images`: the
    decoded-image cache of train_images (cache.ImageCache) or None."""
    dataset = data_lib.SteelDataset(data / "train_images", ids[rt.rank::rt.world], encoded,
                                    cache=images)
    return data_lib.loader(dataset, batch_size, config.num_workers, drop_last=drop_last,
                           pin_memory=rt.device.type == "cuda", persistent=True,
                           seed=config.seed)


def build_loaders(config, data: Path, train_ids, val_ids, encoded, rt: Runtime, pseudo=None,
                  images=None):
    """Training crops from a per-epoch sampler sharded by rank (and drop_last: DeepLabV3's
    image pooling cannot train on a batch of one), full-size validation split by rank.
    `pseudo` (a pseudo.PseudoSet): mixed into every training batch (pseudo.mix), never
    into validation. `images`: the decoded-image cache of train_images, read by both
    (the pseudo-labelled images are decoded)."""
    folder = data / "train_images"
    transform = augment.train_transform(config)
    train_set = data_lib.SteelDataset(folder, train_ids, encoded, transform, config.seed, images)
    weights = (sampling.class_balance_weights(sampling.rarest_class(train_ids, encoded))
               if config.class_balance else
               sampling.balance_weights(sampling.has_defect(train_ids, encoded))
               if config.balance else None)
    sampler = sampling.train_sampler(train_set, config.seed, rt.rank, rt.world, weights)
    if pseudo is not None:
        train_set, sampler = pseudo_lib.mix(train_set, sampler.sampler, pseudo, transform,
                                            config, rt.rank, rt.world)
    pin = rt.device.type == "cuda"
    train_loader = data_lib.loader(train_set, config.batch_size, config.num_workers,
                                   sampler=sampler, drop_last=True, pin_memory=pin,
                                   persistent=True, seed=config.seed)
    val_loader = full_size_loader(config, data, val_ids, encoded, rt, config.val_batch_size,
                                  images=images)
    if len(train_loader) < config.accumulate:
        raise InputError(f"{len(train_ids)} training images give {len(train_loader)} batches "
                         f"of {config.batch_size} per process: fewer than one optimizer update "
                         f"(--accumulate {config.accumulate}); lower --batch-size")
    return train_loader, val_loader


def resolve_config(config, out: Path, resume: bool, overwrite: bool, explicit: dict):
    """The config to run with, the state to resume from and its saved config (both None for
    a new run).

    A new run refuses an output folder that holds a run unless `overwrite`; a resumed run
    takes its config from last.pt, and any option given that differs is an error, except a
    larger --epochs (extending a run whose curve still rises: the schedule is re-planned)."""
    last = out / "last.pt"
    if not resume:
        if last.exists() and not overwrite:
            raise InputError(f"{out} already holds a run ({last}): pass --resume to continue "
                             "it, --overwrite to start again, or --out for another folder")
        if config.init_from and Path(config.init_from).resolve().parent == out.resolve():
            raise InputError(f"--init-from {config.init_from} lies in --out {out}, which the "
                             "new run writes over: give the new run another --out")
        return config, None, None
    state = checkpoint.load(last)
    saved = checkpoint.config_of(state, last)
    wanted = config_lib.from_dict({**config_lib.to_dict(saved), **explicit})
    if wanted.epochs < saved.epochs:
        raise InputError(f"{last}: cannot resume with --epochs {wanted.epochs}, fewer than the "
                         f"run's {saved.epochs} (a run can be extended, not shortened)")
    diffs = config_lib.differences(saved, dataclasses.replace(wanted, epochs=saved.epochs))
    if diffs:
        raise InputError(f"{last}: cannot resume with another config ({diffs[0]}"
                         + (f", and {len(diffs) - 1} more" if len(diffs) > 1 else "") + ")")
    return wanted, state, saved


def schedule_args(config, updates: int) -> dict:
    """build_scheduler's arguments for `config` with `updates` optimizer updates per epoch."""
    total = config.epochs * updates
    return dict(schedule=config.schedule, total_steps=total, min_factor=config.min_lr_factor,
                warmup_steps=min(round(config.warmup_epochs * updates), total))


def announce_extension(saved, config, state: dict, updates: int) -> None:
    """A run resumed with more epochs than it was planned for is re-planned for the new end
    (as timm and torchvision's references do): from the current step on, the LR follows the
    schedule of the longer run, so a cosine that had reached its floor rises to where the
    longer cosine is at this step and decays to the new end. Said once."""
    if config.epochs == saved.epochs:
        return
    step = state["step"]
    old = lr_factor(step, **schedule_args(saved, updates))
    new = lr_factor(step, **schedule_args(config, updates))
    print(f"resume: extending the run from {saved.epochs} to {config.epochs} epochs: the "
          f"{config.schedule} schedule is re-planned to end at step {config.epochs * updates}; "
          f"at step {step} the LR factor goes from {old:.4g} to {new:.4g}", flush=True)


def compile_line(trained: dict, config, rt) -> str:
    """The compile time of a run's first epoch apart from its steady speed: the first
    update's seconds (compiling the training step, and the loaders' start-up) against the
    images per second of the others."""
    first, per_update = trained["first_s"], config.batch_size * config.accumulate * rt.world
    rest, seconds = trained["images"] - per_update, trained["seconds"] - first
    speed = f"{rest / seconds:.1f} img/s" if rest > 0 and seconds > 0 else "-"
    return (f"compile: the first update took {first:.1f} s (compiling the training step; the "
            f"loaders' start-up too), the other updates of the epoch ran at {speed}; the first "
            "validation compiles the full-size forward")


@dataclasses.dataclass
class Inputs:
    """What a run reads before it builds anything, each checked: the loss (an unknown name),
    the autocast dtype (a resumed run keeps its precision), the fold's images and masks, the
    pseudo-labelled set and the decoded-image cache (too big: refused)."""
    loss_fn: torch.nn.Module
    dtype: torch.dtype | None
    image_ids: list
    train_ids: list
    val_ids: list
    encoded: dict
    pseudo: object  # pseudo_mix.PseudoSet or None
    images: object  # cache.ImageCache or None
    split: dict  # the fold's record (provenance.py), saved in config.json and checkpoints


def read_inputs(config, data: Path, fold: int, folds_csv, out: Path, state, saved,
                rt: Runtime) -> Inputs:
    """Everything of a run that can fail on bad input, checked before the first write."""
    loss_fn = make_loss(config, rt.device)  # an unknown loss name stops here, before any work
    if config.compile:
        check_compiler(rt.device)
    dtype = (amp_dtype(config.amp, rt.device) if state is None else
             resume_dtype(saved_precision(state, saved, rt.device), rt.device, out / "last.pt"))
    image_ids, labels = load_train(data)
    train_ids, val_ids = split(folds_csv, fold, image_ids)
    record = provenance.split_record(data, folds_csv, fold, image_ids, val_ids)
    if state is not None:  # a folds.csv regenerated, or another one, since the run began
        said = provenance.check(out / "last.pt", state.get(provenance.KEY), record)
        if said and rt.main:
            print(said, flush=True)
    encoded = by_image(labels)
    pseudo = pseudo_lib.load(config.pseudo, image_ids, data) if config.pseudo else None
    images = cache_lib.open_cache(config.cache, data / "train_images", config.cache_dir,
                                  config.num_workers)  # too big: refused before any decoding
    return Inputs(loss_fn, dtype, image_ids, train_ids, val_ids, encoded, pseudo, images,
                  record)


@dataclasses.dataclass
class Parts:
    """What a run trains with: the model (plain module), its optimizer, schedule, loss scale
    and EMA, the loaders, the optimizer updates per epoch, and the --init-from line (or None)."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    ema: torch.nn.Module | None
    train_loader: object
    val_loader: object
    updates: int
    started: str | None


def build_parts(config, data: Path, inputs: Inputs, rt: Runtime, state, saved) -> Parts:
    """The model (seeded from config.seed; --init-from's weights for a new run), AdamW over
    the encoder's and the head's parameter groups, the loaders, the LR schedule (re-planned
    for an extended run), the fp16 loss scale and the EMA."""
    configure_backends(rt.device)
    torch.manual_seed(config.seed)
    model = make_model(config, rt.device, "none" if config.init_from else None)
    started = (checkpoint.init_weights(model, config.init_from, config, inputs.split)
               if config.init_from and state is None else None)  # resumed: from last.pt
    encoder_params, head_params = param_groups(model)
    optimizer = torch.optim.AdamW([{"params": encoder_params, "lr": config.encoder_lr},
                                   {"params": head_params, "lr": config.lr}],
                                  weight_decay=config.weight_decay)
    train_loader, val_loader = build_loaders(config, data, inputs.train_ids, inputs.val_ids,
                                             inputs.encoded, rt, inputs.pseudo, inputs.images)
    updates = len(train_loader) // config.accumulate
    if state is not None:
        announce_extension(saved, config, state, updates)
    scheduler = build_scheduler(optimizer, **schedule_args(config, updates))
    scaler = torch.amp.GradScaler(rt.device.type, enabled=inputs.dtype == torch.float16)
    ema = make_ema(model) if config.ema_decay > 0 else None
    return Parts(model, optimizer, scheduler, scaler, ema, train_loader, val_loader, updates,
                 started)


def restore(parts: Parts, state: dict, rt: Runtime) -> tuple[int, float, list, int]:
    """Load last.pt's state into the parts -> (epochs done, best score, history rows, EMA
    updates); the optimizer's LRs are the (maybe re-planned) schedule's at the saved step."""
    scheduler = parts.scheduler
    parts.model.load_state_dict(state["model"])
    parts.optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    for group, base, factor in zip(parts.optimizer.param_groups, scheduler.base_lrs,
                                   scheduler.lr_lambdas):  # the plan's LR (re-planned?)
        group["lr"] = base * factor(scheduler.last_epoch)
    if state["scaler"]:
        parts.scaler.load_state_dict(state["scaler"])
    ema_updates = 0
    if parts.ema is not None:
        parts.ema.load_state_dict(state["ema"])
        ema_updates = state["ema_updates"]
    restore_rng(state["rng"], rt)
    return state["epoch"], state["best"], state["history"], ema_updates


def wrap(parts: Parts, config, rt: Runtime) -> tuple:
    """(the module stepped: DDP-wrapped over several processes, compiled with --compile; the
    plain module validated and kept: the EMA where there is one; that module as validated,
    compiled with --compile). Checkpoints are saved from the plain modules (unwrap)."""
    model = parts.model
    if rt.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    evaluated = parts.ema if parts.ema is not None else unwrap(model)
    validated = evaluated
    if config.compile:
        model, validated = compile_model(model, rt.device), compile_model(evaluated, rt.device)
    return model, evaluated, validated


def announce(config, fold: int, inputs: Inputs, parts: Parts, rt: Runtime, out: Path,
             resumed: bool, start_epoch: int) -> None:
    """Rank 0: print the resolved config and what the run is about to do; write config.json."""
    print("config:\n" + "\n".join(f"  {k:<22} {v}" for k, v in
                                    config_lib.to_dict(config).items()))
    print(f"fold {fold}: {len(inputs.train_ids)} train / {len(inputs.val_ids)} validation "
          f"images; {rt.world} process(es) on {rt.device}, amp {PRECISION[inputs.dtype]}; "
          f"{parts.updates} updates per epoch, epochs {start_epoch + 1}..{config.epochs}"
          + (f" (resumed from {out / 'last.pt'})" if resumed else ""))
    if parts.started:
        print(parts.started)
    if inputs.images is not None:
        print(inputs.images.describe())
    if inputs.pseudo is not None:
        pseudo = inputs.pseudo
        k = config_lib.pseudo_per_batch(config.batch_size, config.pseudo_share)
        print(f"pseudo-labels: {len(pseudo.image_ids)} images of {pseudo.folder}, {k} in "
              f"every batch of {config.batch_size} (share {k / config.batch_size:.3f} for "
              f"pseudo_share {config.pseudo_share}); never validated on")
    write_json(out / "config.json", {**config_lib.to_dict(config),
                                     provenance.KEY: inputs.split})


def epoch_row(epoch: int, config, parts: Parts, trained: dict, result: dict, best: float) -> dict:
    """history.csv's row of an epoch."""
    return {"epoch": epoch + 1, "step": parts.scheduler.last_epoch,
            "lr": parts.optimizer.param_groups[-1]["lr"], "train_loss": trained["loss"],
            **history_columns(result), "best": best,
            "images_per_s": trained["images"] / trained["seconds"],
            "epoch_s": trained["seconds"], "skipped_steps": trained["skipped"],
            "planned_epochs": config.epochs}


def epoch_line(epoch: int, config, trained: dict, result: dict, row: dict,
               improved: bool) -> str:
    """The line printed after an epoch."""
    skipped = (f" ({trained['skipped']} updates skipped: non-finite loss)"
               if trained["skipped"] else "")
    return (f"epoch {epoch + 1}/{config.epochs} loss {trained['loss']:.4f} "
            f"{describe(result)} lr {row['lr']:.2e} {row['images_per_s']:.1f} img/s"
            + skipped + (" *best" if improved else ""))


def fit(config, data: str | Path, fold: int, out: str | Path, folds_csv: str | Path,
        resume: bool = False, overwrite: bool = False, explicit: dict | None = None,
        device: str = "auto") -> dict:
    """Train `fold` of `folds_csv` on dataset `data` into `out`, on `device` (auto | cuda |
    cpu: runtime.runtime); returns the last epoch's history row. Everything that can fail on
    bad input is checked before the first write."""
    rt = runtime(device)
    data, out = Path(data), Path(out)
    config, state, saved = resolve_config(config, out, resume, overwrite, explicit or {})
    inputs = read_inputs(config, data, fold, folds_csv, out, state, saved, rt)
    parts = build_parts(config, data, inputs, rt, state, saved)
    start_epoch, best, history, ema_updates = (restore(parts, state, rt) if state is not None
                                               else (0, -1.0, [], 0))
    if state is not None and rt.main:
        said = saving.reconcile_best(out, state)
        if said:
            print(said, flush=True)
    kept = (keep.resumed(out, start_epoch, fold, data, folds_csv, config.keep_top,
                         config.keep_last) if state is not None else
            keep.empty(fold, data, folds_csv, config.keep_top, config.keep_last))
    model, evaluated, validated = wrap(parts, config, rt)
    if overwrite and state is None and rt.main:  # all built from good inputs: the old run goes
        removed = saving.clear_run(out)
        if removed:
            print(f"--overwrite: removed {', '.join(removed)} from {out}")
    if rt.main:
        announce(config, fold, inputs, parts, rt, out, state is not None, start_epoch)

    tracker = (tracking.start(out, config, state["step"] if state is not None else None, fold,
                              data / "train_images", inputs.val_ids, inputs.encoded, rt.device)
               if rt.main else tracking.OFF)
    row = history[-1] if history else {}
    for epoch in tracker.epochs(start_epoch, config.epochs):  # closes its writer at the end
        sampling.set_epoch(parts.train_loader, epoch)
        try:
            trained = train_one_epoch(model, inputs.loss_fn, parts.optimizer, parts.scheduler,
                                      parts.scaler, parts.ema, parts.train_loader, config, rt,
                                      epoch, inputs.dtype, ema_updates, tracker)
        except NonFiniteLoss as e:
            done = (f"the last good checkpoint {out / 'last.pt'} (epoch {epoch}) is kept"
                    if epoch > start_epoch or state is not None else "no checkpoint was written")
            raise InputError(f"{out}: {e}: stopped; {done}. Try a lower --lr or --amp off") from None
        ema_updates = trained["ema_updates"]
        if config.compile and epoch == start_epoch and rt.main:
            print(compile_line(trained, config, rt), flush=True)
        same_on_every_rank(evaluated, rt)
        try:
            result = evaluate(validated, parts.val_loader, inputs.loss_fn, config, rt,
                              inputs.dtype)
        except NonFiniteLogits as e:
            raise InputError(f"{out}: validation after epoch {epoch + 1}: {e}; stopped, the "
                             f"last checkpoint written is kept. Try a lower --lr") from None
        improved = result["score"] > best
        best = max(best, result["score"])
        row = epoch_row(epoch, config, parts, trained, result, best)
        history.append(row)
        rngs = gather_rng(rt)
        if rt.main:
            kept = saving.save_epoch(out, config, parts, model, evaluated, kept, epoch,
                                     result, improved, best, history, ema_updates,
                                     inputs.dtype, rngs, inputs.split)
            print(epoch_line(epoch, config, trained, result, row, improved), flush=True)
            tracker.epoch(history, history_columns(result), evaluated, inputs.dtype)
    data_lib.release(parts.train_loader, parts.val_loader)
    return row
