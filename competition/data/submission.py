"""Submission CSVs: written to follow sample_submission.csv, checked against it."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from competition.errors import InputError, where
from competition.files import atomic_path
from competition.data.labels import Sample, read_sample, read_table


def to_frame(sample: Sample, encoded: dict[tuple[str, int], str]) -> pd.DataFrame:
    """The submission table: the sample's header and rows, EncodedPixels from `encoded`
    ({(ImageId, ClassId): RLE}; a pair it lacks is empty)."""
    image_ids = sample.pairs.ImageId.tolist()
    class_ids = sample.pairs.ClassId.tolist()
    values = [encoded.get((i, c), "") for i, c in zip(image_ids, class_ids)]
    if sample.layout == "original":
        columns = {"ImageId_ClassId": [f"{i}_{c}" for i, c in zip(image_ids, class_ids)]}
    else:
        columns = {"ImageId": image_ids, "ClassId": class_ids}
    columns["EncodedPixels"] = values
    return pd.DataFrame(columns)[list(sample.header)]


def validate(submission: str | Path, sample: str | Path | Sample) -> pd.DataFrame:
    """Check a submission against the sample: the same header, every (ImageId, ClassId) of
    the sample exactly once and nothing else, every RLE valid and inside the image.
    Returns the submission table; raises InputError naming the file, line and value."""
    submission = Path(submission)
    if not isinstance(sample, Sample):
        sample = read_sample(sample)
    table, _, header = read_table(submission)  # checks ClassIds, duplicates and RLEs
    if tuple(header) != sample.header:
        raise InputError(f"{submission}: header {','.join(header)} differs from the sample's "
                         f"{','.join(sample.header)}")
    expected = set(zip(sample.pairs.ImageId, sample.pairs.ClassId))
    for line, image_id, class_id in zip(table.index, table.ImageId, table.ClassId):
        if (image_id, class_id) not in expected:
            raise InputError(f"{where(submission, line)}: ({image_id}, class {class_id}) "
                             "is not in the sample submission")
    present = set(zip(table.ImageId, table.ClassId))
    missing = [p for p in zip(sample.pairs.ImageId, sample.pairs.ClassId) if p not in present]
    if missing:
        raise InputError(f"{submission}: {len(missing)} pairs of the sample are missing, first "
                         f"({missing[0][0]}, class {missing[0][1]})")
    return table


def write(path: str | Path, sample: Sample, encoded: dict[tuple[str, int], str]) -> pd.DataFrame:
    """Write a submission that follows the sample; it is validated under a temporary name
    and only then moved into place, so a bad one never replaces a good one."""
    frame = to_frame(sample, encoded)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
        validate(tmp, sample)
    return frame
