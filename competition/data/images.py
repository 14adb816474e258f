"""Severstal images on disk: listing a folder, checking sizes, reading pixels."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from competition.errors import InputError

HEIGHT, WIDTH = 256, 1600
SUFFIXES = (".jpg", ".jpeg", ".png")


def list_images(folder: str | Path) -> list[str]:
    """Sorted file names of the images in a folder (the ImageIds)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: image folder not found")
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)


def check_image(path: str | Path) -> None:
    """Header check, no decode: the file opens as an image of 1600x256 pixels."""
    try:
        with Image.open(path) as im:
            size = im.size
    except FileNotFoundError:
        raise InputError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"{path}: unreadable image ({e.__class__.__name__})") from None
    if size != (WIDTH, HEIGHT):
        raise InputError(f"{path}: image is {size[0]}x{size[1]}, expected {WIDTH}x{HEIGHT}")


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image: (256, 1600, 3) uint8, RGB (Severstal's grey is the same in all three)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: image file not found")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"{path}: unreadable image")
    if image.shape[:2] != (HEIGHT, WIDTH):
        h, w = image.shape[:2]
        raise InputError(f"{path}: image is {w}x{h}, expected {WIDTH}x{HEIGHT}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
