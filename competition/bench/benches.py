"""`python -m competition bench <what>`: timings measured side by side in one run.

rle:   our numba encode/decode against the numpy kernels found in most Kaggle notebooks,
       on the synthetic generator's masks, best of several interleaved rounds; --real
       adds the same table for the masks of a real train.csv.
score: offline scoring of a full-size test set (5,506 images x 4 classes) from CSV files.
train: training images per second of a preset, steady state, on the same in-memory batches:
       the pipeline's step (AMP, channels_last, no per-step host sync; --compile: compiled
       too) against a plain fp32 loop of the same model (--seeds adds the seeds' torchvision
       DeepLabV3-ResNet101 OS8, then the base of the ratios); and the loader's own
       steady-state rate without and with a warm image cache (--loader: that alone).
predict: inference images per second (one model, from a warm cache, compiled; the fold
       ensemble with flip TTA) and the time projected for the 5,506 test images.
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from competition.data import rle
from competition.bench.notebook import numpy_decode, numpy_encode
from competition.errors import InputError
from competition.data.labels import CLASSES
from competition.data.synth import DRAW, allocate, image_id


REAL_MASKS = (562, 154, 3173, 490)  # masks per class among the 4,379 real ones


def realistic_masks(n: int, seed: int) -> list[np.ndarray]:
    """n masks of the synthetic generator's annotations (smooth outlines around regions,
    sized like the real ones), one class each, classes in the real masks' proportions."""
    rng = np.random.default_rng(seed)
    out = []
    for c in rng.choice(CLASSES, size=n, p=np.array(REAL_MASKS) / sum(REAL_MASKS)):
        mask = np.zeros(rle.SHAPE, np.uint8)
        DRAW[int(c)](mask, rng)
        out.append(mask)
    return out


def _time(fn, items) -> float:
    """Seconds per item of one pass over items."""
    start = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - start) / len(items)


def bench_rle(args) -> None:
    """The kernels on synthetic masks, then (--real CSV) on the masks of a real train.csv."""
    start = time.perf_counter()
    rle.decode(rle.encode(np.eye(256, 1600, dtype=np.uint8)))
    first = time.perf_counter() - start
    real = []
    if args.real:  # read first: a bad file stops the bench before anything is timed
        from competition.data.labels import read_train

        real = [rle.decode(s) for s in read_train(args.real).EncodedPixels]
        if not real:
            raise InputError(f"--real {args.real}: no masks to time")
    print(f"first numba call in this process (compile, or load from cache): {first:.2f} s")
    rle_table("synthetic masks", realistic_masks(args.masks, args.seed), args.repeat)
    if real:
        rle_table(f"real masks of {args.real}", real, args.repeat)


def rle_table(what: str, masks: list[np.ndarray], repeat: int) -> None:
    """Best of `repeat` interleaved rounds of each kernel on `masks`, outputs checked equal
    first; prints the masks' runs and pixels and a table of us per mask and the ratios."""
    strings = [numpy_encode(m) for m in masks]
    assert [rle.encode(m) for m in masks] == strings, "encoders disagree"
    assert all((rle.decode(s) == m).all() for s, m in zip(strings, masks)), "decoders disagree"
    runs = np.array([len(s.split()) // 2 for s in strings])
    pixels = np.array([int(m.sum()) for m in masks])
    print(f"{what}: {len(masks)} masks of 256x1600: {runs.mean():.0f} runs (min {runs.min()}, "
          f"max {runs.max()}), {pixels.mean():.0f} pixels on average")
    kernels = {
        "encode": (numpy_encode, rle.encode, masks),
        "decode": (numpy_decode, rle.decode, strings),
    }
    best = {}
    for _ in range(repeat):  # interleaved rounds, best kept: the same load for both
        for name, (theirs, ours, items) in kernels.items():
            for who, fn in (("numpy", theirs), ("numba", ours)):
                best[name, who] = min(best.get((name, who), np.inf), _time(fn, items))
    print(f"{'kernel':8} {'numpy (us)':>11} {'numba (us)':>11} {'ratio':>7}")
    for name in kernels:
        a, b = best[name, "numpy"] * 1e6, best[name, "numba"] * 1e6
        print(f"{name:8} {a:11.1f} {b:11.1f} {a / b:6.1f}x")


def noisy_prediction(truth: np.ndarray | None, class_id: int, rng) -> np.ndarray:
    """A plausible prediction: a defect found with its edge moved a few pixels (80%) or
    missed; on an empty pair, a false positive 5% of the time."""
    mask = np.zeros(rle.SHAPE, np.uint8)
    if truth is not None:
        if rng.random() < 0.8:
            mask = np.roll(truth, int(rng.integers(-4, 5)), axis=1)
    elif rng.random() < 0.05:
        DRAW[class_id](mask, rng)
    return mask


def synthetic_tables(n_images: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A truth and a noisy prediction of n_images x 4 pairs, ~14% of truth pairs non-empty."""
    rng = np.random.default_rng(seed)
    truth, pred = [], []
    for i, classes in enumerate(allocate(n_images, rng)):
        name = image_id(seed, "bench", i)
        for c in (1, 2, 3, 4):
            mask = None
            if c in classes:
                mask = np.zeros(rle.SHAPE, np.uint8)
                DRAW[c](mask, rng)
                truth.append((name, c, rle.encode(mask)))
            pred.append((name, c, rle.encode(noisy_prediction(mask, c, rng))))
    columns = ["ImageId", "ClassId", "EncodedPixels"]
    return pd.DataFrame(truth, columns=columns), pd.DataFrame(pred, columns=columns)


def bench_score(args) -> None:
    from competition.data.labels import read_table
    from competition.data.metric import dice, score_tables

    images = args.images or 5506
    truth, pred = synthetic_tables(images, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        truth_csv, pred_csv = Path(tmp) / "truth.csv", Path(tmp) / "sub.csv"
        truth.to_csv(truth_csv, index=False)
        pred.to_csv(pred_csv, index=False)
        score_tables(pred.head(8), truth.head(8))  # warm the numba cache
        start = time.perf_counter()
        result = score_tables(read_table(pred_csv)[0], read_table(truth_csv)[0])
        seconds = time.perf_counter() - start
    # the same score from decoded masks, for a check and a reference time
    start = time.perf_counter()
    t = truth.set_index(["ImageId", "ClassId"]).EncodedPixels
    dices = [dice(rle.decode(p), rle.decode(t.get((i, c), "")))
             for i, c, p in pred.itertuples(index=False)]
    decoded_seconds = time.perf_counter() - start
    assert abs(float(np.mean(dices)) - result["mean_dice"]) < 1e-12, "run and mask Dice differ"
    print(f"{result['pairs']} pairs ({images} images x 4 classes), "
          f"{(truth.EncodedPixels != '').sum()} truth masks, {(pred.EncodedPixels != '').sum()} "
          f"predicted: mean Dice {result['mean_dice']:.5f}")
    print(f"score from CSV files (read, check every RLE, Dice on runs): {seconds:.2f} s")
    print(f"same Dice from decoded masks (no CSV reading):                {decoded_seconds:.2f} s")


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


def bench_predict(args) -> None:
    """Inference images per second through the real predict path (JPEG decoding in workers,
    device thresholds, CPU post-processing and RLE): one model and one view, the same from a
    warm ram cache and (--compile) compiled, and the ensemble of `--folds` models x the three
    flip views, with the time it projects for the 5,506 test images; then the CPU cost of
    post-processing and RLE encoding of a test set's masks on one core."""
    import torch

    from competition.data.cache import open_cache
    from competition.model.config import build_config
    from competition.infer.ensemble import Ensemble
    from competition.model.forward import device
    from competition.model.networks import compile_model
    from competition.infer.search import Params
    from competition.data.synth import make_split
    from competition.train.fit import make_model

    dev = device()
    cuda = dev.type == "cuda"
    n = args.images or (5506 if cuda else 8)
    batch = args.batch_size or 8
    config = build_config(args.config, encoder_weights="none")
    params = Params((0.5,) * 4, (150,) * 4, (600, 600, 900, 2000))
    name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"bench predict: preset {args.config} ({config.arch} {config.encoder}), {n} images "
          f"of 256x1600, batch {batch}, {args.workers} workers, on {name}")
    flips = ("none", "hflip", "vflip")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "test_images"
        make_split(Path(tmp), "test", min(n, 256), args.seed, workers=max(args.workers, 1))
        distinct = sorted(p.name for p in folder.iterdir())
        ids = [distinct[i % len(distinct)] for i in range(n)]  # cycled: files in page cache
        models = [make_model(config, dev, encoder_weights="none").eval() for _ in range(args.folds)]
        one = Ensemble(models[:1], [config])
        rows = [("one model, one view", one, ("none",), None)]
        start = time.perf_counter()
        try:  # a machine with a small /dev/shm (Docker's 64 MiB) has no ram cache row
            images = open_cache("ram", folder, workers=args.workers)
            rows.append(("one model, one view, ram cache (warm)", one, ("none",), images))
            print(f"ram cache of {len(images)} images filled in "
                  f"{time.perf_counter() - start:.1f} s")
        except InputError as e:
            images = None
            print(f"no ram cache row: {e}")
        if args.compile:
            rows.append(("one model, one view, compiled",
                         Ensemble([compile_model(models[0], dev)], [config]), ("none",), None))
        rows.append((f"{args.folds} folds x 3 views (none,hflip,vflip)",
                     Ensemble(models, [config] * args.folds), flips, None))
        warm, base = ids[:batch * (2 if cuda else 1)], None
        print(f"{'ensemble':<40} {'images/s':>9} {'forward/s':>10} {'x first':>8} "
              f"{'warm-up s':>10} {'s per 5,506':>12}")
        for label, ensemble, views, cache in rows:
            warm_s = predict_seconds(ensemble, folder, warm, params, views, dev, batch, args,
                                     cache, "warm-up")
            seconds = predict_seconds(ensemble, folder, ids, params, views, dev, batch, args,
                                      cache, label)
            base = base or seconds  # the first row's
            forwards = n * len(ensemble.models) * len(views)
            print(f"{label:<40} {n / seconds:9.1f} {forwards / seconds:10.1f} "
                  f"{base / seconds:8.2f} {warm_s:10.1f} {5506 * seconds / n:12.1f}")
        del images
    total = 5506 * seconds / n  # the last row's: the ensemble
    print(f"projected: 5,506 test images x {args.folds} folds x 3 views in {total:.0f} s "
          f"({total / 60:.1f} min); the target for DeepLabV3-ResNet34 on one H100 is 120 s")
    bench_postprocess(args)


def predict_seconds(ensemble, folder: Path, ids: list, params, views, dev, batch: int, args,
                    images, desc: str) -> float:
    """Seconds of predict.encode over `ids` (the device synchronised at both ends)."""
    import torch

    from competition.infer.predict import encode

    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    encode(ensemble, folder, ids, params, views, dev, batch, args.workers, desc, {},
           images=images)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_postprocess(args) -> None:
    from competition.bench.postprocess import bench_postprocess as run

    run(masks=args.masks_pp, seed=args.seed)


BENCHES = {"rle": bench_rle, "score": bench_score, "train": bench_train,
           "predict": bench_predict, "postprocess": bench_postprocess}
