import pandas as pd
import pytest

from competition.data import submission
from competition.errors import InputError
from competition.data.labels import read_sample

SAMPLE = "ImageId,EncodedPixels,ClassId\nb.jpg,1 409600,0\na.jpg,1 409600,0\n"


@pytest.fixture
def sample_path(tmp_path):
    path = tmp_path / "sample_submission.csv"
    path.write_text(SAMPLE)
    return path


def test_write_follows_the_sample_header_and_order(tmp_path, sample_path):
    out = tmp_path / "sub.csv"
    submission.write(out, read_sample(sample_path), {("a.jpg", 3): "5 10"})
    frame = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(frame.columns) == ["ImageId", "EncodedPixels", "ClassId"]
    assert list(zip(frame.ImageId, frame.ClassId)) == [
        (i, str(c)) for i in ("b.jpg", "a.jpg") for c in (1, 2, 3, 4)]
    assert frame.EncodedPixels.tolist() == [""] * 6 + ["5 10", ""]
    submission.validate(out, sample_path)


def test_write_original_layout(tmp_path):
    sample = tmp_path / "s.csv"
    sample.write_text("ImageId_ClassId,EncodedPixels\n" +
                      "".join(f"x.jpg_{c},\n" for c in (1, 2, 3, 4)))
    out = tmp_path / "sub.csv"
    submission.write(out, read_sample(sample), {("x.jpg", 2): "1 1"})
    assert out.read_text().splitlines() == [
        "ImageId_ClassId,EncodedPixels", "x.jpg_1,", "x.jpg_2,1 1", "x.jpg_3,", "x.jpg_4,"]


def test_a_bad_submission_is_never_moved_into_place(tmp_path, sample_path):
    out = tmp_path / "sub.csv"
    out.write_text("previous good file\n")
    with pytest.raises(InputError, match="bad RLE"):
        submission.write(out, read_sample(sample_path), {("a.jpg", 1): "3 1 1 1"})
    assert out.read_text() == "previous good file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample_submission.csv", "sub.csv"]


def rows(pairs):
    return "ImageId,EncodedPixels,ClassId\n" + "".join(f"{i},{e},{c}\n" for i, e, c in pairs)


GOOD = [(i, "", c) for i in ("b.jpg", "a.jpg") for c in (1, 2, 3, 4)]


@pytest.mark.parametrize("text, message", [
    ("ImageId,ClassId,EncodedPixels\n" + "".join(f"{i},{c},\n" for i, _, c in GOOD),
     "header ImageId,ClassId,EncodedPixels differs from the sample's"),
    (rows(GOOD[:-1]), "1 pairs of the sample are missing, first (a.jpg, class 4)"),
    (rows(GOOD + [("c.jpg", "", 1)]), "line 10: (c.jpg, class 1) is not in the sample"),
    (rows(GOOD + [("a.jpg", "", 4)]), "line 10: duplicate (a.jpg, class 4), first at line 9"),
    (rows([("b.jpg", "1 5 3 1", 1)] + GOOD[1:]), "line 2 (b.jpg class 1): bad RLE: run 2"),
    (rows([("b.jpg", "409000 700", 1)] + GOOD[1:]), "runs past the end"),
    (rows([("b.jpg", "", 7)] + GOOD[1:]), "line 2: ClassId '7'"),
])
def test_validate_reports_what_is_wrong(tmp_path, sample_path, text, message):
    path = tmp_path / "sub.csv"
    path.write_text(text)
    with pytest.raises(InputError) as e:
        submission.validate(path, sample_path)
    assert message in str(e.value) and str(path) in str(e.value)


def test_validate_accepts_good_submission_in_any_row_order(tmp_path, sample_path):
    path = tmp_path / "sub.csv"
    path.write_text(rows(GOOD[::-1]))
    assert len(submission.validate(path, sample_path)) == 8
