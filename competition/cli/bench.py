"""`bench`: timings measured side by side in one run."""
from __future__ import annotations

from competition.cli.options import Switch, alias, default_workers


def cmd_bench(args) -> None:
    if args.what == "flops":
        return cmd_flops(args)
    from competition.bench import benches as bench

    bench.BENCHES[args.what](args)


def cmd_flops(args) -> None:
    """FLOPs per image of each model of --recipe, and each step's time at --tflops."""
    from competition.bench import flops
    from competition.cli.recipe import load
    from competition.errors import InputError

    if args.recipe is None:
        raise InputError("bench flops: --recipe FILE is needed (e.g. recipes/deeplabv3_r34.yaml)")
    recipe = load(args.recipe, need_data=False)
    print(f"bench flops: {args.recipe}: {args.train_images} train images in "
          f"{recipe.split.n_folds} folds, {args.test_images} test images, TTA "
          f"{','.join(recipe.oof.tta)}; counted by torch.utils.flop_counter on the CPU; times "
          f"assume a GPU sustaining {args.tflops:g} TFLOPS (an assumption, not a measurement)")
    counted, works = {}, []
    for m in recipe.models:
        if m.config not in counted:
            counted[m.config] = flops.per_image(m.config)
        train, infer = counted[m.config]
        print(f"{m.name}: {m.config.arch if m.config.task == 'segment' else 'classifier'} "
              f"{m.config.encoder}: {train / 1e9:.1f} GFLOPs per {m.config.crop_height}x"
              f"{m.config.crop_width} training crop (forward and backward), "
              f"{infer / 1e9:.1f} per 256x1600 forward; {len(m.folds)} fold(s) x "
              f"{m.config.epochs} epochs")
        works.append(flops.Work(m.name, len(m.folds), m.config.epochs, train, infer))
    flops.report(works, recipe.split.n_folds, len(recipe.oof.tta), args.tflops,
                 args.train_images, args.test_images,
                 recipe.kernel is not None and recipe.kernel.check)


def add(sub) -> None:
    """The parsers of bench."""
    p = sub.add_parser("bench", help="benchmarks, measured side by side in one run")
    p.add_argument("what", choices=["rle", "score", "train", "predict", "postprocess", "flops"])
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
    p.add_argument("--recipe", default=None, metavar="FILE",
                   help="flops: the recipe whose models and steps are counted")
    p.add_argument("--tflops", type=float, default=50.0,
                   help="flops: the sustained throughput the times assume (default 50: an "
                   "A100 under bf16 autocast at 16%% of its 312 TFLOPS peak)")
    p.add_argument("--train-images", type=int, default=12568,
                   help="flops: images in train.csv (default: the competition's)")
    p.add_argument("--test-images", type=int, default=5506,
                   help="flops: test images (default: the competition's)")
    alias(p, "--config", "--preset")
    alias(p, "--folds", "--models")
    p.set_defaults(func=cmd_bench)
