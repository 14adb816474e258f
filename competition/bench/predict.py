"""bench predict: inference images per second (one model, from a warm cache, compiled; the
fold ensemble with flip TTA) and the time projected for the 5,506 test images."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from competition.bench import postprocess
from competition.errors import InputError


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
    postprocess.run(args)


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
