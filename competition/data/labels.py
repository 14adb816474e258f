"""Severstal label files: train.csv, sample_submission.csv, truth and submission CSVs.

Two layouts exist and both are read into one table, columns ImageId, ClassId (int),
EncodedPixels (str, '' for an empty mask):
- current:  ImageId,ClassId,EncodedPixels   (train.csv lists present defects only)
- original: ImageId_ClassId,EncodedPixels   (`0002cc93b.jpg_1`, four rows per image)
Image-level labels (`ImageId,c1,c2,c3,c4`, one row per image, 1 where it has a defect of that
class) are read for folds, where no masks are needed.
Line numbers in messages count the header as line 1, as an editor shows them.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from competition.data import rle
from competition.errors import InputError, where
from competition.data.images import check_image, list_images

CLASSES = (1, 2, 3, 4)
CURRENT = ("ImageId", "ClassId", "EncodedPixels")
ORIGINAL = ("ImageId_ClassId", "EncodedPixels")
IMAGE_LABELS = ("ImageId", "c1", "c2", "c3", "c4")


def read_csv(path: str | Path) -> pd.DataFrame:
    """Every cell as a string ('' when empty); fully blank lines dropped, line numbers kept
    in the index (header = line 1). One clear error for a missing, empty or non-CSV file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: empty file, expected a CSV with a header") from None
    except (pd.errors.ParserError, UnicodeDecodeError, csv.Error) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise InputError(f"{path}: not a readable CSV ({first})") from None
    frame.index = frame.index + 2
    blank = (frame == "").all(axis=1)
    return frame[~blank]


def read_columns(path: str | Path, required, need: str) -> pd.DataFrame:
    """read_csv with its column names stripped, and an InputError when a `required` column
    is missing (`need`: what needs them, e.g. "image-level labels need") or no row follows
    the header."""
    raw = read_csv(path)
    raw.columns = [c.strip() for c in raw.columns]
    missing = [c for c in required if c not in raw.columns]
    if missing:
        raise InputError(f"{path}: no column {', '.join(missing)} ({need} {','.join(required)})")
    if raw.empty:
        raise InputError(f"{path}: no rows, only a header")
    return raw


def _layout(path: Path, columns: list[str]) -> str:
    cols = tuple(c.strip() for c in columns)
    if set(cols) == set(CURRENT) and len(cols) == 3:
        return "current"
    if set(cols) == set(ORIGINAL) and len(cols) == 2:
        return "original"
    raise InputError(
        f"{path}: columns {','.join(cols)} are neither {','.join(CURRENT)} "
        f"nor {','.join(ORIGINAL)}"
    )


def _first(frame: pd.DataFrame, bad) -> tuple[int, pd.Series]:
    line = frame.index[np.flatnonzero(np.asarray(bad))[0]]
    return line, frame.loc[line]


def read_table(path: str | Path, *, placeholder: bool = False, check_rle: bool = True,
               shape: tuple[int, int] = rle.SHAPE) -> tuple[pd.DataFrame, str, list[str]]:
    """Read a label CSV of either layout.

    Returns (table, layout, header): the table has columns ImageId, ClassId, EncodedPixels
    and keeps the file's row order and line numbers (index); header is the file's column
    order. placeholder=True accepts ClassId 0 (a sample submission's one row per image).
    Raises InputError on unknown columns, a bad ClassId, a duplicate (ImageId, ClassId),
    an empty ImageId or (check_rle) a bad RLE.
    """
    path = Path(path)
    raw = read_csv(path)
    header = [c.strip() for c in raw.columns]
    raw.columns = header
    layout = _layout(path, header)
    if layout == "original":
        key = raw["ImageId_ClassId"].str.strip()
        parts = key.str.rpartition("_")
        bad = (parts[1] != "_") | (parts[0] == "")
        if bad.any():
            line, row = _first(raw, bad)
            raise InputError(f"{where(path, line)}: ImageId_ClassId {row['ImageId_ClassId']!r} "
                             "is not <ImageId>_<ClassId>")
        image_ids, class_ids = parts[0], parts[2]
    else:
        image_ids, class_ids = raw["ImageId"].str.strip(), raw["ClassId"].str.strip()
    if (image_ids == "").any():
        line, _ = _first(raw, image_ids == "")
        raise InputError(f"{where(path, line)}: empty ImageId")
    valid = [str(c) for c in ((0,) if placeholder else ()) + CLASSES]
    bad = ~class_ids.isin(valid)
    if bad.any():
        line, _ = _first(raw, bad)
        raise InputError(f"{where(path, line)}: ClassId {class_ids[line]!r} is not one of "
                         f"{', '.join(valid)}")
    table = pd.DataFrame({
        "ImageId": image_ids,
        "ClassId": class_ids.astype(int),
        "EncodedPixels": raw["EncodedPixels"].str.strip(),
    }, index=raw.index)
    dup = table.duplicated(["ImageId", "ClassId"], keep="first")
    if dup.any():
        line, row = _first(table, dup)
        same = table[(table.ImageId == row.ImageId) & (table.ClassId == row.ClassId)]
        raise InputError(f"{where(path, line)}: duplicate ({row.ImageId}, class {row.ClassId}),"
                         f" first at line {same.index[0]}")
    if check_rle:
        for line, image_id, class_id, encoded in table.itertuples():
            if encoded:
                try:
                    rle.runs(encoded, shape)
                except InputError as e:
                    raise InputError(f"{where(path, line)} ({image_id} class {class_id}): "
                                     f"{e}") from None
    return table, layout, header


def read_train(path: str | Path) -> pd.DataFrame:
    """train.csv of either layout -> the present defects only: ImageId, ClassId, EncodedPixels."""
    table, _, _ = read_table(path)
    return table[table.EncodedPixels != ""]


@dataclass(frozen=True)
class Sample:
    """What a submission must look like: its header and its (ImageId, ClassId) rows in order."""

    header: tuple[str, ...]
    layout: str
    pairs: pd.DataFrame  # ImageId, ClassId: four rows per image, in the sample's order


def read_sample(path: str | Path) -> Sample:
    """sample_submission.csv of either layout. Rows with ClassId 0 (one row per image) stand
    for that image's four classes, in class order."""
    table, layout, header = read_table(path, placeholder=True, check_rle=False)
    rows = []
    for image_id, class_id in zip(table.ImageId, table.ClassId):
        rows.extend((image_id, c) for c in (CLASSES if class_id == 0 else (class_id,)))
    pairs = pd.DataFrame(rows, columns=["ImageId", "ClassId"])
    dup = pairs.duplicated(keep="first")
    if dup.any():
        image_id, class_id = pairs[dup].iloc[0]
        raise InputError(f"{path}: ({image_id}, class {class_id}) is listed twice")
    return Sample(tuple(header), layout, pairs)


def load_train(data: str | Path, check_images: bool = True) -> tuple[list[str], pd.DataFrame]:
    """A dataset folder in Kaggle layout -> (train ImageIds from train_images/, defect table).

    Every ImageId of train.csv must have an image file; with check_images, every image's
    header must say 1600x256.
    """
    data = Path(data)
    path = data / "train.csv"
    labels = read_train(path)
    image_ids = list_images(data / "train_images")
    if not image_ids:
        raise InputError(f"{data / 'train_images'}: no images")
    missing = ~labels.ImageId.isin(set(image_ids))
    if missing.any():
        line, row = _first(labels, missing)
        raise InputError(f"{where(path, line)}: no image file "
                         f"{data / 'train_images' / row.ImageId}")
    if check_images:
        for image_id in image_ids:
            check_image(data / "train_images" / image_id)
    return image_ids, labels


def read_image_labels(path: str | Path) -> tuple[list[str], pd.DataFrame]:
    """Image-level labels, columns ImageId,c1,c2,c3,c4 (others ignored), c<k> 0 or 1 ->
    (ImageIds in file order, table ImageId, ClassId of each defect the labels name), the
    pair load_train returns, without masks or images."""
    path = Path(path)
    raw = read_columns(path, IMAGE_LABELS, "image-level labels need")
    image_ids = raw["ImageId"].str.strip()
    if (image_ids == "").any():
        line, _ = _first(raw, image_ids == "")
        raise InputError(f"{where(path, line)}: empty ImageId")
    dup = image_ids.duplicated(keep="first")
    if dup.any():
        line, _ = _first(raw, dup)
        first = image_ids.index[image_ids == image_ids[line]][0]
        raise InputError(f"{where(path, line)}: duplicate ImageId {image_ids[line]!r}, first at "
                         f"line {first}")
    rows = []
    for class_id in CLASSES:
        flags = raw[f"c{class_id}"].str.strip()
        bad = ~flags.isin(["0", "1"])
        if bad.any():
            line, _ = _first(raw, bad)
            raise InputError(f"{where(path, line)} ({image_ids[line]}): c{class_id} "
                             f"{flags[line]!r} is not 0 or 1")
        rows.append(pd.DataFrame({"ImageId": image_ids[flags == "1"], "ClassId": class_id}))
    return image_ids.tolist(), pd.concat(rows)


def class_matrix(image_ids: list[str], labels: pd.DataFrame) -> np.ndarray:
    """(N, 4) uint8: 1 where image n has a defect of class c + 1."""
    index = {image_id: i for i, image_id in enumerate(image_ids)}
    out = np.zeros((len(image_ids), len(CLASSES)), np.uint8)
    rows = [index[i] for i in labels.ImageId]
    out[rows, labels.ClassId.to_numpy() - 1] = 1
    return out


def masks(encoded: dict[int, str], shape: tuple[int, int] = rle.SHAPE) -> np.ndarray:
    """{ClassId: RLE} of one image -> (4, H, W) uint8 masks (absent classes empty)."""
    out = np.zeros((len(CLASSES), *shape), np.uint8)
    for class_id, encoded_pixels in encoded.items():
        rle.decode_into(encoded_pixels, out[class_id - 1])
    return out


def by_image(labels: pd.DataFrame) -> dict[str, dict[int, str]]:
    """Defect table -> {ImageId: {ClassId: RLE}}."""
    out: dict[str, dict[int, str]] = {}
    for image_id, class_id, encoded in zip(labels.ImageId, labels.ClassId, labels.EncodedPixels):
        out.setdefault(image_id, {})[int(class_id)] = encoded
    return out
