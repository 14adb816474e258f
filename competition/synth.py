"""A synthetic Severstal: steel-like 1600x256 JPEGs with four classes of drawn defects.

It stands in for the Kaggle data on machines that have none. Each class has its own look:
1 clusters of small dark pits, 2 thin bright near-vertical scratches, 3 long horizontal
streaks and patches with a striated texture (the most common), 4 large dark areas.
Label sets are drawn in the proportions of the real train set (DESIGN.md), and the masks
are exact: a class's pixels are changed only inside its mask, and what the RLE says is what
was drawn. Same seed, same bytes.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from competition import rle
from competition.files import atomic_dir, write_json
from competition.images import HEIGHT, WIDTH
from competition.labels import CLASSES
from competition.progress import progress

# Label sets of the 12,568 real train images: the class counts add up to the real
# 897 / 247 / 5,150 / 801 and 5,902 defect-free images; the split of the multi-class
# images between combinations is approximate.
LABEL_SETS = {
    (): 5902, (1,): 769, (2,): 195, (3,): 4759, (4,): 516,
    (3, 4): 284, (1, 3): 91, (1, 2): 35, (2, 3): 14, (2, 4): 1, (1, 2, 3): 2,
}
JPEG_QUALITY = 92
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


def _smooth(rng: np.random.Generator, n: int, scale: float, sigma: float) -> np.ndarray:
    """1-D smooth noise of length n (gaussian noise blurred with a kernel of width sigma)."""
    x = rng.normal(0.0, 1.0, n + 6 * int(sigma))
    k = np.exp(-0.5 * (np.arange(-3 * sigma, 3 * sigma + 1) / sigma) ** 2)
    y = np.convolve(x, k / np.sqrt((k ** 2).sum()), mode="same")[3 * int(sigma):][:n]
    return scale * y


def background(rng: np.random.Generator) -> np.ndarray:
    """(256, 1600) float32 grey steel: a level, rolling streaks along x, lighting, grain."""
    level = rng.uniform(85, 135)
    rows = _smooth(rng, HEIGHT, rng.uniform(3, 8), 2.0)[:, None]  # horizontal rolling marks
    light = _smooth(rng, WIDTH, rng.uniform(4, 12), 120.0)[None, :]  # slow lighting drift
    grain = rng.normal(0, 1, (HEIGHT, WIDTH // 4)).astype(np.float32)
    grain = cv2.resize(grain, (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR)  # stretched in x
    return (level + rows + light + rng.uniform(4, 8) * grain).astype(np.float32)


def _point(rng, x0=0, x1=WIDTH, y0=0, y1=HEIGHT) -> tuple[int, int]:
    return int(rng.integers(x0, x1)), int(rng.integers(y0, y1))


def _blob(rng, center, rx, ry, n_vertices) -> np.ndarray:
    """An irregular polygon around center with radii about (rx, ry): (n, 1, 2) int32."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, n_vertices))
    radius = rng.uniform(0.6, 1.0, n_vertices)
    x = center[0] + rx * radius * np.cos(angles)
    y = center[1] + ry * radius * np.sin(angles)
    return np.stack([x, y], axis=1).round().astype(np.int32)[:, None, :]


def draw_pits(mask: np.ndarray, rng: np.random.Generator) -> None:
    """Class 1: one to three clusters of small pits."""
    for _ in range(rng.integers(1, 4)):
        cx, cy = _point(rng, 40, WIDTH - 40, 20, HEIGHT - 20)
        spread = rng.uniform(15, 60)
        for _ in range(rng.integers(6, 25)):
            x = int(np.clip(cx + rng.normal(0, spread), 0, WIDTH - 1))
            y = int(np.clip(cy + rng.normal(0, spread / 2), 0, HEIGHT - 1))
            axes = (int(rng.integers(2, 7)), int(rng.integers(2, 6)))
            cv2.ellipse(mask, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)


def draw_scratches(mask: np.ndarray, rng: np.random.Generator) -> None:
    """Class 2: one to four thin, nearly vertical scratches."""
    for _ in range(rng.integers(1, 5)):
        x, y = _point(rng, 20, WIDTH - 20, 0, HEIGHT // 2)
        length = int(rng.integers(50, 230))
        dx = int(rng.integers(-12, 13))
        cv2.line(mask, (x, y), (x + dx, min(y + length, HEIGHT - 1)), 1, int(rng.integers(2, 5)))


def draw_streaks(mask: np.ndarray, rng: np.random.Generator) -> None:
    """Class 3: long horizontal streaks and wide patches."""
    for _ in range(rng.integers(1, 4)):
        center = _point(rng, 100, WIDTH - 100, 15, HEIGHT - 15)
        if rng.random() < 0.5:
            axes = (int(rng.integers(150, 600)), int(rng.integers(6, 25)))
            cv2.ellipse(mask, center, axes, float(rng.uniform(-3, 3)), 0, 360, 1, -1)
        else:
            rx, ry = rng.uniform(60, 220), rng.uniform(25, 80)
            cv2.fillPoly(mask, [_blob(rng, center, rx, ry, int(rng.integers(7, 13)))], 1)


def draw_dark_areas(mask: np.ndarray, rng: np.random.Generator) -> None:
    """Class 4: one or two large dark areas."""
    for _ in range(rng.integers(1, 3)):
        center = _point(rng, 100, WIDTH - 100, 40, HEIGHT - 40)
        rx, ry = rng.uniform(70, 160), rng.uniform(50, 120)
        cv2.fillPoly(mask, [_blob(rng, center, rx, ry, int(rng.integers(8, 15)))], 1)


DRAW = {1: draw_pits, 2: draw_scratches, 3: draw_streaks, 4: draw_dark_areas}


LOOKS = {  # (values, their rows, striation, rng) -> new values of a class's pixels
    1: lambda v, rows, stri, rng: v - rng.uniform(40, 70),  # dark pits
    2: lambda v, rows, stri, rng: v + rng.uniform(45, 75),  # bright scratches
    3: lambda v, rows, stri, rng: 0.8 * v + stri[rows] - rng.uniform(5, 20),  # duller, striated
    4: lambda v, rows, stri, rng: 0.35 * v + rng.uniform(0, 15),  # dark areas
}


def render(image: np.ndarray, masks: np.ndarray, rng: np.random.Generator) -> None:
    """Change the pixels of each class inside its mask only (in place)."""
    striation = _smooth(rng, HEIGHT, 14.0, 1.0)  # one offset per row
    for c in CLASSES:
        rows, cols = np.nonzero(masks[c - 1])
        if len(rows):
            image[rows, cols] = LOOKS[c](image[rows, cols], rows, striation, rng)


def make_image(rng: np.random.Generator, classes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """One sample: (256, 1600, 3) uint8 grey image and (4, 256, 1600) uint8 exact masks.
    Every class of `classes` gets pixels of its own: none under another class or the margin."""
    image = background(rng)
    masks = np.zeros((len(CLASSES), HEIGHT, WIDTH), np.uint8)
    taken = np.zeros((HEIGHT, WIDTH), bool)
    if rng.random() < 0.12:  # the strip's edge: a black margin on one side, never a defect
        width = int(rng.integers(40, 300))
        edge = slice(0, width) if rng.random() < 0.5 else slice(WIDTH - width, WIDTH)
        image[:, edge] = rng.uniform(0, 12)
        taken[:, edge] = True
    for c in classes:
        for _ in range(100):  # draw again while the margin or other classes cover it all
            DRAW[c](masks[c - 1], rng)
            masks[c - 1][taken] = 0
            if masks[c - 1].any():
                break
        assert masks[c - 1].any(), f"could not place class {c}"
        taken |= masks[c - 1] != 0
    render(image, masks, rng)
    grey = np.clip(image, 0, 255).round().astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2), masks


def image_id(seed: int, split: str, index: int) -> str:
    """Kaggle-looking ImageId: nine hex digits, fixed by (seed, split, index)."""
    return hashlib.sha1(f"{seed}/{split}/{index}".encode()).hexdigest()[:9] + ".jpg"


def write_image(folder: Path, seed: int, split: str, index: int,
                classes: tuple[int, ...]) -> list[tuple[str, int, str]]:
    """Draw image `index` of a split, write its JPEG, return its (ImageId, ClassId, RLE) rows."""
    image, masks = make_image(np.random.default_rng([seed, SPLITS[split], index]), classes)
    name = image_id(seed, split, index)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    assert ok, "JPEG encoding failed"
    (folder / name).write_bytes(data.tobytes())
    return [(name, c, rle.encode(masks[c - 1])) for c in CLASSES if masks[c - 1].any()]


def make_split(folder: Path, split: str, n: int, seed: int, workers: int = 1) -> pd.DataFrame:
    """Write n images of a split into folder/<split>_images; return its defect table.
    Each image has its own random stream, so the bytes do not depend on `workers`."""
    label_sets = allocate(n, np.random.default_rng([seed, SPLITS[split]]))
    images = folder / f"{split}_images"
    images.mkdir(parents=True)
    draw = partial(write_image, images, seed, split)
    indices = range(n)
    with ProcessPoolExecutor(workers) if workers > 1 else nullcontext() as pool:
        results = (pool.map(draw, indices, label_sets, chunksize=8) if pool
                   else map(draw, indices, label_sets))
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
    test masks, same layout as train.csv) and synth.json (parameters and class counts).
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
            "train_images_per_class": {str(c): int((train.ClassId == c).sum()) for c in CLASSES},
            "train_defect_free": n_train - int(train.ImageId.nunique()),
        }
        write_json(tmp / "synth.json", info)
    return info
