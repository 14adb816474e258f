"""`synth`, `folds` and `check`: make or read a dataset in the Kaggle layout."""
from __future__ import annotations

from pathlib import Path

from competition.errors import InputError


def cmd_synth(args) -> None:
    from competition.data.synth import make_dataset

    if args.compare or args.compare_images:
        return compare_synth(args)
    if args.train < 1 or args.test < 1:
        raise InputError(f"--train {args.train} --test {args.test}: need at least one of each")
    info = make_dataset(args.out, args.train, args.test, args.seed, args.layout, args.workers)
    counts = ", ".join(f"class {c}: {n}" for c, n in info["train_images_per_class"].items())
    print(f"wrote {args.out}: {args.train} train images ({counts}; "
          f"defect-free: {info['train_defect_free']}), {args.test} test images")


def compare_synth(args) -> None:
    """--compare: mask shapes against a real train.csv's; --compare-images: image statistics
    against the real images of a folder (either or both)."""
    if args.compare:
        compare_masks(args)
    if args.compare_images:
        compare_images(args)


def compare_masks(args) -> None:
    from competition.data import fidelity
    from competition.data.labels import read_train
    from competition.data.synth import train_masks

    real = fidelity.summary(fidelity.table_stats(read_train(args.compare)))
    synthetic = fidelity.summary(fidelity.table_stats(train_masks(args.train, args.seed)))
    print(f"real: {args.compare}; synthetic: the masks of `synth --train {args.train} "
          f"--seed {args.seed}` (no image drawn)")
    print(fidelity.report(real, synthetic))
    misses = fidelity.misses(real, synthetic)
    print("\n".join(misses) if misses else
          f"every median within {fidelity.MEDIAN_FACTOR}x of the real one, every p90 area "
          f"within {fidelity.P90_AREA_FACTOR}x")


def compare_images(args) -> None:
    import cv2
    import pandas as pd

    from competition.data import fidelity
    from competition.data.images import list_images, read_image
    from competition.data.synth import GENERATOR, train_images
    from competition.progress import progress

    folder = Path(args.compare_images)
    names = list_images(folder)
    if not names:
        raise InputError(f"{folder}: no .jpg/.jpeg/.png image in it")
    rows = []
    for name in progress(names, desc="real images", unit="img"):
        image = read_image(folder / name)
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        rows.append(fidelity.image_stats(grey, fidelity.outlines(image)))
    real = fidelity.image_summary(pd.DataFrame(rows))
    rows = [fidelity.image_stats(grey, labelled) for grey, labelled in
            progress(train_images(args.train, args.seed), total=args.train,
                     desc="synthetic images", unit="img")]
    synthetic = fidelity.image_summary(pd.DataFrame(rows))
    print(f"real: the images of {folder} (pixels drawn in colour taken as labelled outlines); "
          f"synthetic: the {args.train} train images of `synth --train {args.train} --seed "
          f"{args.seed}` as their JPEGs decode (generator {GENERATOR}, labelled: the masks)")
    print(fidelity.image_report(real, synthetic))


def cmd_folds(args) -> None:
    from competition.files import write_csv
    from competition.data.folds import fold_counts, make_folds
    from competition.data.labels import load_train, read_image_labels

    if args.labels:
        image_ids, labels = read_image_labels(args.labels)
    else:
        image_ids, labels = load_train(args.data)
    folds = make_folds(image_ids, labels, args.n_folds, args.seed)
    write_csv(args.out, folds)
    print(fold_counts(folds).to_string())
    print(f"wrote {args.out}: {len(folds)} images in {args.n_folds} folds (seed {args.seed})")


def cmd_check(args) -> None:
    from competition.data.images import list_images, read_image
    from competition.data.labels import load_train, read_sample
    from competition.progress import progress

    data = Path(args.data)
    image_ids, labels = load_train(data, check_images=False)
    paths = [data / "train_images" / i for i in image_ids]
    if (data / "sample_submission.csv").exists():
        sample = read_sample(data / "sample_submission.csv")
        test_ids = list_images(data / "test_images")
        missing = sorted(set(sample.pairs.ImageId) - set(test_ids))
        if missing:
            raise InputError(f"{data / 'sample_submission.csv'}: no image file "
                             f"{data / 'test_images' / missing[0]} ({len(missing)} missing)")
        paths += [data / "test_images" / i for i in test_ids]
    for path in progress(paths, desc="decode images", unit="img"):
        read_image(path)
    print(f"{data}: ok: {len(image_ids)} train images, {len(labels)} defect masks, "
          f"{len(paths) - len(image_ids)} test images, all readable and 1600x256")


def add(sub) -> None:
    """The parsers of synth, folds, check."""
    p = sub.add_parser("synth", help="write a synthetic dataset in the Kaggle layout")
    p.add_argument("--out", default="input/synthetic", help="dataset folder to (re)write")
    p.add_argument("--train", type=int, default=400, help="number of train images")
    p.add_argument("--test", type=int, default=100, help="number of test images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layout", choices=["current", "original"], default="current",
                   help="train.csv layout: ImageId,ClassId,EncodedPixels or ImageId_ClassId")
    p.add_argument("--compare", default=None, metavar="TRAIN_CSV",
                   help="write nothing: compare the masks of --train images with a real "
                        "train.csv's (area, components, runs, box, edge; per class)")
    p.add_argument("--compare-images", default=None, metavar="IMAGE_DIR",
                   help="write nothing: compare image statistics (streak direction, lighting, "
                        "specks and marks off the labels, dark edges) of --train synthetic "
                        "images with the real images of a folder (outlines drawn in colour "
                        "are taken as the labels)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes drawing images (default: one per CPU, at most 8)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("folds", help="stratified folds over the four classes and 'no defect'")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="dataset folder (train.csv, train_images/)")
    source.add_argument("--labels", help="or image-level labels: a CSV with columns ImageId,"
                        "c1,c2,c3,c4 (0/1 per class; other columns ignored)")
    p.add_argument("--n-folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default="folds/folds.csv")
    p.set_defaults(func=cmd_folds)

    p = sub.add_parser("check", help="read every label and decode every image of a dataset")
    p.add_argument("--data", required=True)
    p.set_defaults(func=cmd_check)
