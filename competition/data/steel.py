"""The steel strip's own look in the synthetic data (generator 2, synth.GENERATOR), apart from
the defects: streaks down the strip, smooth 2-D lighting, dark strip edges, and the marks no
annotator labelled (pits, short scratches, smudges), glints and dark grains. Each draws from
the random stream it is given; synth.draw gives them the image's look and surface streams, so
the masks (the layout stream) never depend on them. `synth --compare-images` measures the
result against real images (fidelity.py, docs/data.md)."""
from __future__ import annotations

import cv2
import numpy as np

from competition.data.images import HEIGHT, WIDTH


def smooth(rng: np.random.Generator, n: int, scale: float, sigma: float) -> np.ndarray:
    """1-D smooth noise of length n (gaussian noise blurred with a kernel of width sigma)."""
    x = rng.normal(0.0, 1.0, n + 6 * int(sigma))
    k = np.exp(-0.5 * (np.arange(-3 * sigma, 3 * sigma + 1) / sigma) ** 2)
    y = np.convolve(x, k / np.sqrt((k ** 2).sum()), mode="same")[3 * int(sigma):][:n]
    return scale * y


def lighting(rng: np.random.Generator) -> np.ndarray:
    """(256, 1600) float32 smooth 2-D lighting about 0: brighter toward the top or the bottom
    of the strip, a slow drift along it, and low-resolution patches of both."""
    y = np.linspace(-1.0, 1.0, HEIGHT)[:, None]
    down = rng.normal() * y + rng.normal() * (y ** 2 - 1 / 3)
    down *= rng.uniform(12, 28) / max(float(down.std()), 1e-6)
    along = smooth(rng, WIDTH, rng.uniform(10, 20), 120.0)[None, :]
    patches = cv2.resize(rng.standard_normal((3, 8)).astype(np.float32), (WIDTH, HEIGHT),
                         interpolation=cv2.INTER_CUBIC)
    return down.astype(np.float32) + along.astype(np.float32) + rng.uniform(3, 10) * patches


def background(rng: np.random.Generator) -> np.ndarray:
    """(256, 1600) float32 grey steel: a level, 2-D lighting, streaks running down the strip
    (a value per column that fades in and out down it, and lines of part of its height),
    faint rolling marks along it, grain stretched down it and pixel noise."""
    level = rng.uniform(80, 130)
    fine = rng.uniform(0.3, 1.5)
    columns = (smooth(rng, WIDTH, fine, 1.0)  # fine streaks
               + smooth(rng, WIDTH, rng.uniform(2, 7), rng.uniform(10, 30)))  # broad bands
    fade = cv2.resize(rng.uniform(0.3, 1.4, (4, 24)).astype(np.float32), (WIDTH, HEIGHT),
                      interpolation=cv2.INTER_LINEAR)
    image = level + lighting(rng) + fade * columns[None, :].astype(np.float32)
    for _ in range(rng.poisson(rng.uniform(3, 30))):  # dark (mostly) or bright lines
        length = int(min(HEIGHT, 20 + rng.exponential(100)))
        top, x = int(rng.integers(-length // 2, HEIGHT - length // 2)), int(rng.integers(WIDTH))
        taper = np.sin(np.linspace(0, np.pi, length)) ** 0.5
        value = -rng.uniform(5, 25) if rng.random() < 0.8 else rng.uniform(4, 15)
        rows = slice(max(top, 0), min(top + length, HEIGHT))
        image[rows, x:x + int(rng.integers(1, 4))] += (value * taper[rows.start - top:
                                                                      rows.stop - top])[:, None]
    rolling = smooth(rng, HEIGHT, fine * rng.uniform(0.3, 0.8), 1.0)  # fainter, along it
    image += rolling.astype(np.float32)[:, None]
    grain = rng.standard_normal((HEIGHT // 4, WIDTH), np.float32)
    grain = cv2.resize(grain, (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR)  # stretched in y
    image += rng.uniform(1.5, 3.5) * grain
    # pixel noise, uniform: 409,600 normal draws would cost 8 ms an image, these 1 ms
    noise = rng.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)
    image += (noise.astype(np.float32) - 127.5) * np.float32(rng.uniform(2.5, 4.5) / 73.9)
    return image


EXTRA_EDGE = 0.15  # chance of a dark strip edge on an image the layout gave no margin
EDGE_GAP = 8  # free columns between an extra edge and the nearest defect
MARK_GAP = 6  # least distance, in pixels, from an unlabelled mark to a defect's mask


def extra_edge(rng: np.random.Generator, masks: np.ndarray) -> slice | None:
    """A dark strip edge on an image without a margin (EXTRA_EDGE of them), 30 to 900 columns
    wide on one side, narrowed to leave EDGE_GAP free columns before the first defect;
    None when that leaves fewer than 16 (the edge never covers a defect)."""
    if rng.random() >= EXTRA_EDGE:
        return None
    width, left = int(np.exp(rng.uniform(np.log(30), np.log(900)))), rng.random() < 0.5
    used = np.flatnonzero(masks.any(axis=(0, 1)))
    if len(used):
        width = min(width, (used[0] if left else WIDTH - 1 - used[-1]) - EDGE_GAP)
    if width < 16:
        return None
    return slice(0, width) if left else slice(WIDTH - width, WIDTH)


def strip_edge(image: np.ndarray, edge: slice, rng: np.random.Generator) -> None:
    """Paint the strip's end in place: near-black columns `edge` (a level of 0 to 11 and a
    little noise), the steel beside it shaded toward the edge over 4 to 30 columns."""
    black = rng.uniform(0, 11) + 0.4 * rng.standard_normal((HEIGHT, edge.stop - edge.start))
    image[:, edge] = np.clip(black, 0, 12.4)
    ramp = int(rng.integers(4, 31))
    shade = np.linspace(rng.uniform(0.35, 0.9), 1.0, ramp, dtype=np.float32)
    if edge.start == 0:
        image[:, edge.stop:edge.stop + ramp] *= shade[:WIDTH - edge.stop]
    else:
        image[:, max(edge.start - ramp, 0):edge.start] *= shade[::-1][-edge.start:]


def unlabelled_marks(rng: np.random.Generator, image: np.ndarray,
                     keep_off: np.ndarray) -> np.ndarray:
    """Marks no annotator labelled, added in place: small dark pits (one to three), short
    bright or dark scratches and small dull smudges, like the defects' looks but fewer,
    smaller and fainter; a moderate number an image. A mark touching `keep_off` (the
    defects' masks grown by MARK_GAP, the dark edges) is dropped whole. (H, W) bool: the
    pixels marked."""
    layer = np.zeros((HEIGHT, WIDTH), np.float32)
    for _ in range(rng.poisson(rng.uniform(5, 35))):
        x, y = int(rng.integers(WIDTH)), int(rng.integers(HEIGHT))
        kind = rng.random()
        if kind < 0.35:  # a few pits
            for _ in range(int(rng.integers(1, 4))):
                centre = (x + int(rng.integers(-8, 9)), y + int(rng.integers(-8, 9)))
                axes = (int(rng.integers(1, 3)), int(rng.integers(1, 4)))
                cv2.ellipse(layer, centre, axes, float(rng.uniform(0, 180)), 0, 360,
                            -rng.uniform(20, 50), -1)
        elif kind < 0.7:  # a short scratch, mostly along the strip's streaks
            length, angle = rng.uniform(6, 40), np.pi / 2 + rng.normal(0, 0.5)
            end = (int(x + length * np.cos(angle)), int(y + length * np.sin(angle)))
            value = rng.uniform(15, 45) if rng.random() < 0.7 else -rng.uniform(15, 35)
            cv2.line(layer, (x, y), end, value, int(rng.integers(1, 3)))
        else:  # a small dull smudge
            axes = (int(rng.integers(3, 15)), int(rng.integers(2, 9)))
            cv2.ellipse(layer, (x, y), axes, float(rng.uniform(0, 180)), 0, 360,
                        -rng.uniform(8, 25), -1)
    _, label = cv2.connectedComponents((layer != 0).astype(np.uint8), connectivity=8)
    dropped = np.unique(label[keep_off & (label > 0)])
    marked = (label > 0) & ~np.isin(label, dropped)
    image[marked] += layer[marked]
    return marked


GLINTS = ((1, 1, .42), (2, 1, .2), (2, 2, .15), (3, 2, .06), (2, 3, .04), (3, 3, .08),
          (4, 4, .05))  # (rows, columns, share) of the glints' footprints


def sparkle(rng: np.random.Generator, image: np.ndarray) -> None:
    """Glints and dark grains of 1 to 16 pixels (GLINTS), in place: 600 to 5,500 bright ones
    an image and a fifth to two thirds as many dark, anywhere on the steel (texture, not
    defects: real steel has them inside the labelled regions too)."""
    layer = np.zeros((HEIGHT, WIDTH), np.float32)
    bright = np.exp(rng.uniform(np.log(600), np.log(5500)))
    for n, sign, scale in ((bright, 1, 25.0), (bright * rng.uniform(0.2, 0.67), -1, 15.0)):
        for (h, w, _), k in zip(GLINTS, rng.multinomial(int(n), [g[2] for g in GLINTS])):
            y, x = rng.integers(0, HEIGHT - h + 1, k), rng.integers(0, WIDTH - w + 1, k)
            value = sign * (40 + rng.exponential(scale, k))
            for dy in range(h):
                for dx in range(w):  # ragged: a pixel of the footprint may be missing or dim
                    keep = rng.random(k) < (1.0 if dy == dx == 0 else 0.7)
                    dim = rng.uniform(0.6, 1.1, int(keep.sum()))
                    layer[y[keep] + dy, x[keep] + dx] = value[keep] * dim
    image += cv2.GaussianBlur(layer, (3, 3), 0.6)  # soft, not square
