"""A synthetic Severstal: steel-like 1600x256 JPEGs with four classes of drawn defects.

It stands in for the Kaggle data on machines that have none. Each class has its own look:
1 clusters of small dark pits, 2 thin bright near-vertical scratches, 3 bands and patches with
a striated, duller texture (the most common), 4 large dark areas. Label sets are drawn in the
proportions of the real train set (DESIGN.md).

Masks are drawn as annotators drew the real ones: smooth outlines around defect regions (a
cluster of pits is one region, a scratch gets a narrow region around it), one to several
regions a mask, placed side by side or stacked. The sizes, counts, gaps and outline
irregularity of each class (SHAPES) were fitted to the 4,379 real masks of
shared/real/derived/train_partial_new_layout.csv, then tuned until `synth --compare` on it
met every target (docs/data.md has the table); the generator never reads that file. The masks
are exact: a class changes pixels only inside its mask (its `ink`, e.g. the pits, is a part of
the region), and what the RLE says is what was drawn. Same seed, same bytes; the layout
has a random stream of its own, so the masks can be drawn without the images.

The steel (generator 2, GENERATOR) looks like the real strips'
(`synth --compare-images` measures it against real images; docs/data.md): streaks running
down the strip (a value per column, lines of part of its height), smooth 2-D lighting, a
dark strip edge on about a quarter of the images (the layout's margin, or an extra one from
the surface stream that stops short of every defect), glints and dark grains, and marks no
annotator labelled (pits, short scratches, smudges) kept MARK_GAP pixels off every mask. All
that generator 2 added comes from a third random stream, so its masks are generator 1's, byte
for byte.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from competition.data import rle
from competition.files import atomic_dir, write_json
from competition.data.images import HEIGHT, WIDTH
from competition.data.labels import CLASSES
from competition.data.steel import (MARK_GAP, background, extra_edge, smooth, sparkle,
                                     strip_edge, unlabelled_marks)
from competition.progress import progress

# Label sets of the 12,568 real train images: the class counts add up to the real
# 897 / 247 / 5,150 / 801 and 5,902 defect-free images; the split of the multi-class
# images between combinations is approximate.
LABEL_SETS = {
    (): 5902, (1,): 769, (2,): 195, (3,): 4759, (4,): 516,
    (3, 4): 284, (1, 3): 91, (1, 2): 35, (2, 3): 14, (2, 4): 1, (1, 2, 3): 2,
}
JPEG_QUALITY = 92
GENERATOR = 2  # synth.json's "generator" (see make_dataset)
SPLITS = {"train": 0, "test": 1}  # seeds the two splits apart


def allocate(n: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """n label sets in the real proportions (largest remainder), in random order."""
    sets = list(LABEL_SETS)
    share = np.array([LABEL_SETS[s] for s in sets], float) / sum(LABEL_SETS.values()) * n
    counts = np.floor(share).astype(int)
    for i in np.argsort(-(share - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    out = [s for s, k in zip(sets, counts) for _ in range(k)]
    rng.shuffle(out)
    return out


@dataclass(frozen=True)
class Shape:
    """How one class's annotation looks: the outlines an annotator draws around its regions.
    Numbers are fitted to the 4,379 real masks (see the module docstring)."""

    count: tuple[float, ...]  # P(1 region), P(2 regions), ... (normalised)
    log_w: tuple[float, float]  # mean and sd of log(region width in pixels)
    log_h: tuple[float, float]  # the same for the height, before the image clips it
    corr: float  # correlation of log width and log height
    log_gap: tuple[float, float]  # log of the free columns between neighbouring regions
    wobble: float  # outline irregularity (0: an ellipse)
    edge: int  # least distance to the left/right image edge (-1: may run off it)
    satellite: float = 1.0  # regions after the first are this much smaller (each side)
    stack: float = 0.0  # chance that a region goes under or over the previous one
    tilt: float = 0.0  # sd of the outline's rotation, radians


OVERHANG = 0.1
SHAPES = {
    1: Shape((.40, .14, .09, .06, .04, .05, .07, .04, .02, .02, .02, .01, .01, .01),
             (3.45, .35), (4.4, .5), .38, (2.8, 1.5), .12, 8, satellite=.7,
             stack=.5),
    2: Shape((.74, .23, .03), (2.8, .39), (5.15, .45), .49, (1.5, .8), .08, 8, satellite=.8,
             tilt=.04),
    3: Shape((.30, .26, .17, .10, .06, .04, .03, .02, .01, .01),
             (3.76, 1.02), (5.2, .9), .06, (4.8, 1.0), .1, -1, satellite=.8),
    4: Shape((.39, .30, .14, .08, .05, .02, .02), (5.1, .6), (4.9, .5), .73, (3.7, 1.2),
             .22, -1, satellite=.55),
}


def outline(rng, cx: float, cy: float, w: float, h: float, wobble: float,
            tilt: float = 0.0, n: int = 28) -> np.ndarray:
    """A smooth closed outline about w x h around (cx, cy): an ellipse whose radius varies
    with a few low harmonics of random phase, rotated by `tilt`. (n, 1, 2) int32."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.ones(n)
    for k in (2, 3, 4):
        r += wobble * rng.normal() / (k - 1) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    r = np.clip(r, 0.5, 1.5)
    x, y = w / 2 * r * np.cos(t), h / 2 * r * np.sin(t)
    c, s = np.cos(tilt), np.sin(tilt)
    points = np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)
    return points.round().astype(np.int32)[:, None, :]


def stack(column: list[np.ndarray], points: np.ndarray, rng) -> bool:
    """Put a region's outline just below, or else just above, the last one of a column, two
    free rows between them and inside the column's width; False where neither fits."""
    last, height = column[-1][..., 1], np.ptp(points[..., 1])
    if last.max() + 3 + height < HEIGHT:
        points[..., 1] += last.max() + 3 - points[..., 1].min()
    elif last.min() - 3 - height >= 0:
        points[..., 1] += last.min() - 3 - points[..., 1].max()
    else:
        return False
    room = max(c[..., 0].max() for c in column) - points[..., 0].max()
    points[..., 0] += int(rng.integers(0, room + 1)) if room > 0 else 0
    column.append(points)
    return True


def draw_regions(c: int, mask: np.ndarray, rng: np.random.Generator) -> None:
    """Class c's annotation, in place: one to several outlined regions in columns (a region
    goes under or over the previous one with the class's `stack` chance), the columns left to
    right with a free gap between neighbours (so regions stay apart), sizes from the class's
    log-normal; the group starts anywhere it fits."""
    shape = SHAPES[c]
    p = np.array(shape.count) / sum(shape.count)
    k = 1 + int(rng.choice(len(p), p=p))
    (mw, sw), (mh, sh) = shape.log_w, shape.log_h
    cov = [[sw ** 2, shape.corr * sw * sh], [shape.corr * sw * sh, sh ** 2]]
    sizes = np.exp(rng.multivariate_normal([mw, mh], cov, size=k))
    sizes[1:] *= shape.satellite
    columns: list[list[np.ndarray]] = []
    for w, h in sizes:
        tilt = rng.normal(0, shape.tilt) if shape.tilt else 0.0
        points = outline(rng, 0, rng.uniform(0, HEIGHT), min(w, WIDTH / 2), h, shape.wobble, tilt)
        points[..., 0] -= points[..., 0].min()
        if not (columns and rng.random() < shape.stack and stack(columns[-1], points, rng)):
            columns.append([points])
    widths = np.array([max(r[..., 0].max() for r in column) + 1 for column in columns])
    gaps = 2 + np.exp(rng.normal(*shape.log_gap, size=len(columns) - 1))
    room = WIDTH - 2 * max(shape.edge, 0) - widths.sum()
    if gaps.sum() > max(room, 0):  # squeeze the gaps (the regions may then touch)
        gaps *= max(room, 0) / gaps.sum()
    if shape.edge >= 0:
        lo, hi = shape.edge, WIDTH - shape.edge - widths.sum() - gaps.sum()
    else:  # the outer regions may run off the image by up to OVERHANG of their width
        lo = -OVERHANG * widths[0]
        hi = WIDTH - widths.sum() - gaps.sum() + OVERHANG * widths[-1]
    left = rng.uniform(lo, max(lo, hi))
    for column, width, gap in zip(columns, widths, np.append(gaps, 0)):
        for points in column:
            points[..., 0] += int(round(left))
        cv2.fillPoly(mask, column, 1)
        left += width + gap


DRAW = {c: partial(draw_regions, c) for c in CLASSES}  # (mask, rng): draws in place


def pits(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Small dark pits scattered over a region (about one per 40 pixels), inside it only."""
    ink = np.zeros_like(region)
    rows, cols = np.nonzero(region)
    for i in rng.integers(0, len(rows), max(3, len(rows) // 40)):
        axes = (int(rng.integers(1, 5)), int(rng.integers(1, 4)))
        cv2.ellipse(ink, (int(cols[i]), int(rows[i])), axes, float(rng.uniform(0, 180)),
                    0, 360, 1, -1)
    return ink & region


def scratch(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A thin line down the middle of each region: in every row, the centre of that row's
    pixels of the region, widened to 2 to 4 pixels, inside the region only."""
    ink = np.zeros_like(region)
    _, label = cv2.connectedComponents(region, connectivity=8)
    rows, cols = np.nonzero(label)
    key = label[rows, cols] * HEIGHT + rows  # one centre per (region, row)
    count = np.bincount(key)
    keys = np.flatnonzero(count)
    centre = np.bincount(key, weights=cols)[keys] / count[keys]
    half = rng.uniform(1.0, 2.0)
    offsets = np.arange(-2, 3)[None, :]
    near = np.abs(offsets + np.round(centre)[:, None] - centre[:, None]) <= half
    x = np.clip(np.round(centre).astype(int)[:, None] + offsets, 0, WIDTH - 1)
    y = np.broadcast_to((keys % HEIGHT)[:, None], x.shape)
    ink[y[near], x[near]] = 1
    return ink & region


INK = {  # (region mask, rng) -> the pixels of the region that the defect changes
    1: pits,
    2: scratch,
    3: lambda region, rng: region,
    4: lambda region, rng: region,
}

LOOKS = {  # (values, their rows, striation, rng) -> new values of a class's pixels
    1: lambda v, rows, stri, rng: v - rng.uniform(40, 70),  # dark pits
    2: lambda v, rows, stri, rng: v + rng.uniform(45, 75),  # bright scratches
    3: lambda v, rows, stri, rng: 0.8 * v + stri[rows] - rng.uniform(5, 20),  # duller, striated
    4: lambda v, rows, stri, rng: 0.35 * v + rng.uniform(0, 15),  # dark areas
}


def render(image: np.ndarray, masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Change the pixels of each class inside its mask only (in place); returns the (4, H, W)
    ink: the pixels each class changed."""
    striation = smooth(rng, HEIGHT, 14.0, 1.0)  # one offset per row
    inks = np.zeros_like(masks)
    for c in CLASSES:
        if masks[c - 1].any():
            inks[c - 1] = INK[c](masks[c - 1], rng)
            rows, cols = np.nonzero(inks[c - 1])
            image[rows, cols] = LOOKS[c](image[rows, cols], rows, striation, rng)
    return inks


def layout(rng: np.random.Generator, classes: tuple[int, ...]) -> tuple[np.ndarray, slice | None]:
    """Where things are: (4, 256, 1600) uint8 exact masks and the black margin (a column
    slice, or None). Every class of `classes` gets pixels of its own: none under another
    class or the margin."""
    masks = np.zeros((len(CLASSES), HEIGHT, WIDTH), np.uint8)
    taken = np.zeros((HEIGHT, WIDTH), bool)
    margin = None
    if rng.random() < 0.12:  # the strip's edge: a black margin on one side, never a defect
        width = int(rng.integers(40, 300))
        margin = slice(0, width) if rng.random() < 0.5 else slice(WIDTH - width, WIDTH)
        taken[:, margin] = True
    for c in classes:
        for _ in range(100):  # draw again while the margin or other classes cover it all
            DRAW[c](masks[c - 1], rng)
            masks[c - 1][taken] = 0
            if masks[c - 1].any():
                break
        assert masks[c - 1].any(), f"could not place class {c}"
        taken |= masks[c - 1] != 0
    return masks, margin


def streams(rng: np.random.Generator) -> list[np.random.Generator]:
    """An image's three random streams: [layout (margin and masks), looks (texture,
    defects), surface (edges, unlabelled marks, glints)]. Children of one SeedSequence: the
    first two are those of generator 1, so its masks are drawn unchanged."""
    return rng.spawn(3)


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of image `index` of a split: its own, so any process can draw it."""
    return np.random.default_rng([seed, SPLITS[split], index])


def label_sets(n: int, seed: int, split: str) -> list[tuple[int, ...]]:
    """The label sets of a split's n images, in image order."""
    return allocate(n, np.random.default_rng([seed, SPLITS[split]]))


def draw(rng: np.random.Generator, classes: tuple[int, ...]) -> dict:
    """One sample with its parts: background (the steel with its edges, unlabelled marks and
    glints) and image (float32), masks, inks, marks (the unlabelled marks' pixels, bool) and
    edges (the dark edges' column slices). The layout has a random stream of its own, so
    `layout` alone gives the same masks, faster; what generator 2 added has its own too."""
    shape_rng, look_rng, surface_rng = streams(rng)
    masks, margin = layout(shape_rng, classes)
    image = background(look_rng)
    edges = [margin] if margin is not None else []
    extra = extra_edge(surface_rng, masks) if margin is None else None
    edges += [extra] if extra is not None else []
    keep_off = cv2.dilate(masks.any(axis=0).astype(np.uint8),
                          np.ones((2 * MARK_GAP + 1,) * 2, np.uint8)) != 0
    for edge in edges:
        keep_off[:, max(edge.start - MARK_GAP, 0):edge.stop + MARK_GAP] = True
    marks = unlabelled_marks(surface_rng, image, keep_off)
    sparkle(surface_rng, image)
    for edge in edges:
        strip_edge(image, edge, surface_rng)
    plain = image.copy()
    inks = render(image, masks, look_rng)
    return {"background": plain, "image": image, "masks": masks, "inks": inks,
            "marks": marks, "edges": edges}


def make_image(rng: np.random.Generator, classes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """One sample: (256, 1600, 3) uint8 grey image and (4, 256, 1600) uint8 exact masks."""
    parts = draw(rng, classes)
    grey = np.clip(parts["image"], 0, 255).round().astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2), parts["masks"]


def train_masks(n: int, seed: int) -> pd.DataFrame:
    """The defect table that `make_dataset(n_train=n, seed=seed)` writes for its train split
    (ImageId, ClassId, EncodedPixels), from the layouts alone: no image is drawn."""
    rows = []
    for index, classes in enumerate(label_sets(n, seed, "train")):
        if classes:
            masks, _ = layout(streams(image_rng(seed, "train", index))[0], classes)
            name = image_id(seed, "train", index)
            rows.extend((name, c, rle.encode(masks[c - 1])) for c in classes)
    return pd.DataFrame(rows, columns=["ImageId", "ClassId", "EncodedPixels"])


def image_id(seed: int, split: str, index: int) -> str:
    """Kaggle-looking ImageId: nine hex digits, fixed by (seed, split, index)."""
    return hashlib.sha1(f"{seed}/{split}/{index}".encode()).hexdigest()[:9] + ".jpg"


def jpeg(image: np.ndarray) -> bytes:
    """(256, 1600, 3) uint8 -> the JPEG bytes the dataset's file holds."""
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    assert ok, "JPEG encoding failed"
    return data.tobytes()


def write_image(folder: Path, seed: int, split: str, index: int,
                classes: tuple[int, ...]) -> list[tuple[str, int, str]]:
    """Draw image `index` of a split, write its JPEG, return its (ImageId, ClassId, RLE) rows."""
    image, masks = make_image(image_rng(seed, split, index), classes)
    name = image_id(seed, split, index)
    (folder / name).write_bytes(jpeg(image))
    return [(name, c, rle.encode(masks[c - 1])) for c in CLASSES if masks[c - 1].any()]


def train_images(n: int, seed: int):
    """The first n train images of `make_dataset(seed=seed)` as its files would decode, in
    memory: (256, 1600) uint8 grey and (256, 1600) bool labelled pixels (any class), per image.
    (The label sets depend on n, as in make_dataset: the first 40 of 400 differ from 40.)"""
    for index, classes in enumerate(label_sets(n, seed, "train")):
        image, masks = make_image(image_rng(seed, "train", index), classes)
        grey = cv2.imdecode(np.frombuffer(jpeg(image), np.uint8), cv2.IMREAD_GRAYSCALE)
        yield grey, masks.any(axis=0)


def make_split(folder: Path, split: str, n: int, seed: int, workers: int = 1) -> pd.DataFrame:
    """Write n images of a split into folder/<split>_images; return its defect table.
    Each image has its own random stream, so the bytes do not depend on `workers`."""
    sets = label_sets(n, seed, split)
    images = folder / f"{split}_images"
    images.mkdir(parents=True)
    draw = partial(write_image, images, seed, split)
    indices = range(n)
    with ProcessPoolExecutor(workers) if workers > 1 else nullcontext() as pool:
        results = (pool.map(draw, indices, sets, chunksize=8) if pool
                   else map(draw, indices, sets))
        rows = [row for rows in progress(results, total=n, desc=f"synth {split}", unit="img")
                for row in rows]
    table = pd.DataFrame(rows, columns=["ImageId", "ClassId", "EncodedPixels"])
    return table.sort_values(["ImageId", "ClassId"], kind="stable").reset_index(drop=True)


def to_layout(table: pd.DataFrame, image_ids: list[str], layout: str) -> pd.DataFrame:
    """Defect table -> the CSV of a layout: current lists present defects only, original has
    four rows per image with an empty EncodedPixels for no defect."""
    if layout == "current":
        return table[["ImageId", "ClassId", "EncodedPixels"]]
    full = pd.MultiIndex.from_product([sorted(image_ids), CLASSES], names=["ImageId", "ClassId"])
    encoded = table.set_index(["ImageId", "ClassId"]).EncodedPixels.reindex(full, fill_value="")
    keys = [f"{i}_{c}" for i, c in full]
    return pd.DataFrame({"ImageId_ClassId": keys, "EncodedPixels": encoded.to_numpy()})


def sample_submission(image_ids: list[str], layout: str) -> pd.DataFrame:
    """Four rows per test image, empty EncodedPixels, in ImageId then ClassId order."""
    pairs = [(i, c) for i in sorted(image_ids) for c in CLASSES]
    if layout == "original":
        return pd.DataFrame({"ImageId_ClassId": [f"{i}_{c}" for i, c in pairs],
                             "EncodedPixels": ""})
    return pd.DataFrame({"ImageId": [i for i, _ in pairs], "EncodedPixels": "",
                         "ClassId": [c for _, c in pairs]})


def make_dataset(out: str | Path, n_train: int = 400, n_test: int = 100, seed: int = 0,
                 layout: str = "current", workers: int | None = None) -> dict:
    """Write a dataset in the Kaggle layout, replacing `out` only once it is complete:
    train_images/, test_images/, train.csv, sample_submission.csv, test_truth.csv (the
    test masks, same layout as train.csv) and synth.json (parameters and class counts;
    "layout" is the CSV layout, "generator" the image generator's version, GENERATOR: 2 drew
    streaks down the strip, 2-D lighting, unlabelled marks and glints, more dark edges; data
    without the key is generator 1's, same masks, horizontal marks only).
    workers: processes drawing images (default: one per CPU, at most 8); same bytes for any."""
    if layout not in ("current", "original"):
        raise ValueError(f"layout must be 'current' or 'original', got {layout!r}")
    train_ids = [image_id(seed, "train", i) for i in range(n_train)]
    test_ids = [image_id(seed, "test", i) for i in range(n_test)]
    if len(set(train_ids + test_ids)) != n_train + n_test:  # before drawing anything
        raise ValueError(f"seed {seed}: two ImageIds collide; pick another seed")
    workers = workers or min(os.cpu_count() or 1, 8)
    with atomic_dir(out) as tmp:
        train = make_split(tmp, "train", n_train, seed, workers)
        test = make_split(tmp, "test", n_test, seed, workers)
        to_layout(train, train_ids, layout).to_csv(tmp / "train.csv", index=False)
        to_layout(test, test_ids, layout).to_csv(tmp / "test_truth.csv", index=False)
        sample_submission(test_ids, layout).to_csv(tmp / "sample_submission.csv", index=False)
        info = {
            "seed": seed, "train": n_train, "test": n_test, "layout": layout,
            "generator": GENERATOR,
            "train_images_per_class": {str(c): int((train.ClassId == c).sum()) for c in CLASSES},
            "train_defect_free": n_train - int(train.ImageId.nunique()),
        }
        write_json(tmp / "synth.json", info)
    return info
