"""`bench`: timings measured side by side in one run."""
from __future__ import annotations

from competition.cli.options import Switch, alias, default_workers


def cmd_bench(args) -> None:
    from competition.bench import benches as bench

    bench.BENCHES[args.what](args)


def add(sub) -> None:
    """The parsers of bench."""
    p = sub.add_parser("bench", help="benchmarks, measured side by side in one run")
    p.add_argument("what", choices=["rle", "score", "train", "predict", "postprocess"])
    p.add_argument("--masks", type=int, default=200, help="rle: number of synthetic masks")
    p.add_argument("--real", default=None, metavar="CSV",
                   help="rle: also time the masks of this train.csv (either layout)")
    p.add_argument("--repeat", type=int, default=5, help="rle: timing rounds (best is kept)")
    p.add_argument("--images", type=int, default=None,
                   help="score: test images to score (5506); predict: images to predict "
                   "(5506 on CUDA, 8 on CPU); train: images of a timed loader epoch (256)")
    p.add_argument("--models", dest="folds", type=int, default=5,
                   help="predict: models in the ensemble")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="predict: loader processes decoding JPEGs")
    p.add_argument("--masks-pp", type=int, default=22024,
                   help="predict, postprocess: masks post-processed and encoded on one core")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", dest="config", default="deeplabv3_r34",
                   help="train, predict: preset to measure")
    p.add_argument("--batch-size", type=int, default=None,
                   help="train: per-step batch (default: the preset's on CUDA, 4 on CPU); "
                   "predict: images per batch (default 8)")
    p.add_argument("--steps", type=int, default=None,
                   help="train: timed optimizer updates (default 30 on CUDA, 2 on CPU)")
    p.add_argument("--warmup", type=int, default=None,
                   help="train: untimed updates first (default 5 on CUDA, 1 on CPU)")
    p.add_argument("--seeds", action=Switch,
                   help="train: add the seeds' model (torchvision DeepLabV3-R101, stride 8)")
    p.add_argument("--compile", action=Switch,
                   help="train, predict: add a row with the model torch.compile'd")
    p.add_argument("--loader", action=Switch,
                   help="train: time the loader alone, without and with an image cache")
    alias(p, "--config", "--preset")
    alias(p, "--folds", "--models")
    p.set_defaults(func=cmd_bench)
