"""bench train: training images per second of a preset, steady state, on the same in-memory
batches: the pipeline's step (AMP, channels_last, no per-step host sync; --compile: compiled
too) against a plain fp32 loop of the same model (--seeds adds the seeds' torchvision
DeepLabV3-ResNet101 OS8, then the base of the ratios); and the loader's own steady-state
rate without and with a warm image cache (--loader: that alone)."""
from __future__ import annotations

import dataclasses
import tempfile
import time
from functools import partial
from pathlib import Path


def train_loader(config, data: Path, encoded: dict, n: int, rt, images=None):
    """A training loader of `config` (crops, flips, brightness: the real transform, with
    persistent workers) over n images cycled from data's 64, reading `images` (a
    cache.ImageCache) or decoding."""
    from competition.data import datasets as data_lib
    from competition.train import augment, sampling

    names = sorted(p.name for p in (data / "train_images").iterdir())
    ids = [names[i % len(names)] for i in range(n)]
    dataset = data_lib.SteelDataset(data / "train_images", ids, encoded,
                                    augment.train_transform(config), config.seed, images)
    return data_lib.loader(dataset, config.batch_size, config.num_workers, drop_last=True,
                           sampler=sampling.train_sampler(dataset, config.seed),
                           pin_memory=rt.device.type == "cuda", persistent=True)


def loader_rate(loader, rounds: int = 3) -> float | None:
    """Images/s of the best of `rounds` passes (epochs 1, 2, ...) of a loader whose epoch 0
    was run: workers started, page cache and image cache warm; each pass's first batch (the
    pipeline filling) not counted. The best: on a shared machine the others are slowed by
    its other work. None for a pass of one batch (nothing to time)."""
    from competition.train import sampling

    rates = []
    for epoch in range(1, rounds + 1):
        sampling.set_epoch(loader, epoch)
        it = iter(loader)
        next(it)
        start = time.perf_counter()
        count = sum(len(images) for images, _, _ in it)
        rates.append(count / (time.perf_counter() - start))
    return max(rates) if count else None


def loader_rows(config, data: Path, encoded: dict, n: int, rt, cache_dir: Path):
    """Per cache kind (none, ram, disk): (label, images/s of the loader alone in steady state,
    seconds to fill the cache), and epoch 0's batches of the uncached loader, in memory."""
    from competition.data.cache import open_cache

    rows, batches = [], None
    for kind, label in (("none", "no cache: every JPEG decoded every epoch"),
                        ("ram", "ram cache (/dev/shm), warm"),
                        ("disk", "disk cache (--cache-dir), warm")):
        start = time.perf_counter()
        images = open_cache(kind, data / "train_images", cache_dir, config.num_workers)
        fill = time.perf_counter() - start if images is not None else None
        loader = train_loader(config, data, encoded, n, rt, images)
        epoch0 = list(loader)  # starts the workers, fills the page cache
        batches = epoch0 if batches is None else batches
        rows.append((label, loader_rate(loader), fill))
        del loader, images, epoch0
    return rows, batches


def step_rate(run, batches: list, warmup: int, rt) -> dict:
    """Time `run(batches)` (a training loop over in-memory batches): first `run` on the
    `warmup` first batches, untimed but for its first update (a compiled model compiles
    there), then images/s over the rest, and the peak GPU memory."""
    import torch

    start = time.perf_counter()
    first = run(batches[:1])
    first = time.perf_counter() - start if first is None else first
    if warmup > 1:
        run(batches[1:warmup])
    cuda = rt.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    run(batches[max(warmup, 1):])
    if cuda:
        torch.cuda.synchronize()
    seen = sum(len(images) for images, _, _ in batches[max(warmup, 1):])
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return {"rate": seen / (time.perf_counter() - start), "first_s": first, "peak_gib": peak}


def pipeline_loop(config, rt, compile: bool = False):
    """The pipeline's training step as a loop over batches (train.train_one_epoch: AMP,
    channels_last, device-side loss checks, the EMA when the config has one), optionally
    torch.compile'd; returns the first update's seconds."""
    import torch

    from competition.model.networks import compile_model
    from competition.model.precision import amp_dtype
    from competition.train import epoch as epoch_lib, fit as train_lib
    from competition.train.runtime import configure_backends

    model = train_lib.make_model(config, rt.device, encoder_weights="none")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    dtype = amp_dtype(config.amp, rt.device)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=dtype == torch.float16)
    loss_fn = train_lib.make_loss(config, rt.device)
    ema = epoch_lib.make_ema(model) if config.ema_decay > 0 else None
    configure_backends(rt.device)
    stepped = compile_model(model, rt.device) if compile else model
    updates = [0]

    def run(batches) -> float:
        result = epoch_lib.train_one_epoch(stepped, loss_fn, optimizer, scheduler, scaler, ema,
                                           batches, config, rt, 0, dtype, updates[0])
        updates[0] = result["ema_updates"]
        return result["first_s"]
    return run


def plain_loop(config, rt):
    """A plain fp32 training loop, as in most notebooks and the seed kernels: NCHW, no
    autocast, normalisation constants built per batch, the loss read with .item() every
    step, no EMA."""
    import torch

    from competition.data import datasets as data_lib
    from competition.train import fit as train_lib

    model = train_lib.make_model(dataclasses.replace(config, channels_last=False), rt.device,
                                 encoder_weights="none")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = train_lib.make_loss(config, rt.device)

    def run(batches) -> None:
        for images, masks, _ in batches:
            x = images.to(rt.device).float()
            mean = torch.tensor(data_lib.MEAN, device=rt.device).view(1, 3, 1, 1) * 255
            std = torch.tensor(data_lib.STD, device=rt.device).view(1, 3, 1, 1) * 255
            loss = loss_fn(model((x - mean) / std), masks.to(rt.device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()
    return run


def seeds_config(config):
    """The seed kernels' model on the preset's crops: torchvision DeepLabV3-ResNet101 at
    output stride 8, whose ASPP dilations (12, 24, 36) are (6, 12, 18) stride-16 cells."""
    return dataclasses.replace(config, arch="tv_deeplabv3", encoder="resnet101", output_stride=8,
                               atrous_rates_h=(6, 12, 18), atrous_rates_w=(6, 12, 18),
                               allow_untrained_taps=True)


def bench_train(args) -> None:
    """Training images/s on the same in-memory batches (the seeds' plain fp32 loop with
    --seeds, the preset's model in a plain loop, the pipeline's step, with --compile compiled)
    and the loader's own images/s without and with a warm image cache."""
    import torch

    from competition.model.config import build_config
    from competition.data.labels import by_image, load_train
    from competition.data.synth import make_dataset
    from competition.train.runtime import Runtime

    cuda = torch.cuda.is_available()
    rt = Runtime(device=torch.device("cuda" if cuda else "cpu"))
    steps = args.steps or (30 if cuda else 2)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    sizes = {} if args.batch_size is None else {"batch_size": args.batch_size}
    if not cuda and args.batch_size is None:
        sizes["batch_size"] = 4
    config = build_config(args.config, encoder_weights="none", **sizes)
    if not cuda:
        config = dataclasses.replace(config, num_workers=min(config.num_workers, 2))
    n = max(args.images or 256, (max(warmup, 1) + steps) * config.batch_size)  # 64, cycled
    name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"bench train: preset {args.config} ({config.arch} {config.encoder}, output stride "
          f"{config.output_stride or 'default'}), crops {config.crop_height}x{config.crop_width}, "
          f"batch {config.batch_size}, {steps} timed updates after {warmup}, on {name}, "
          f"torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        make_dataset(data, n_train=64, n_test=1, seed=args.seed)  # cycled through
        encoded = by_image(load_train(data)[1])
        loaders, batches = loader_rows(config, data, encoded, n, rt, Path(tmp) / "cache")
    if not args.loader:
        step_table(config, batches[:max(warmup, 1) + steps], warmup, rt, args)
    base = loaders[0][1]
    print(f"{f'loader alone, best of 3 {n}-image epochs, {config.num_workers} workers':<56}"
          f" {'img/s':>8} {'x none':>7} {'fill s':>7}")
    for label, rate, fill in loaders:
        ratio = "-" if rate is None or base is None else f"{rate / base:.2f}"
        shown = "not timed (one batch)" if rate is None else f"{rate:.1f}"
        print(f"{label:<56} {shown:>8} {ratio:>7} {'-' if fill is None else f'{fill:.1f}':>7}")
    print("fill s: decoding every image once into the cache (what epoch 0 costs instead)")


def step_table(config, batches: list, warmup: int, rt, args) -> None:
    """The training-step rows, ratios to the first (the seeds' plain loop with --seeds)."""
    cuda = rt.device.type == "cuda"
    rows = [("plain fp32 loop, preset's model (NCHW)", partial(plain_loop, config, rt)),
            ("pipeline step (" + (f"AMP {train_amp(config, rt)}, " if cuda else "fp32, ")
             + "channels_last" + (", EMA" if config.ema_decay > 0 else "") + ")",
             partial(pipeline_loop, config, rt))]
    if args.seeds:
        rows.insert(0, ("plain fp32 loop, seeds' tv DeepLabV3-R101 OS8",
                        partial(plain_loop, seeds_config(config), rt)))
    if args.compile:
        rows.append(("pipeline step + compile", partial(pipeline_loop, config, rt, True)))
    # one model at a time: the peak memory is each loop's own
    timed = [(label, step_rate(make(), batches, warmup, rt)) for label, make in rows]
    base = timed[0][1]["rate"]
    print(f"{'training step, same in-memory batches':<48} {'img/s':>8} {'x plain':>8} "
          f"{'1st upd s':>10} {'peak GiB':>9}")
    for label, r in timed:
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        print(f"{label:<48} {r['rate']:8.1f} {r['rate'] / base:8.2f} {r['first_s']:10.2f} "
              f"{peak:>9}")
    print("1st upd s: the first update's seconds (a compiled step compiles there)")


def train_amp(config, rt) -> str:
    from competition.model.precision import PRECISION, amp_dtype

    return PRECISION[amp_dtype(config.amp, rt.device)]
