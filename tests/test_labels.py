import shutil

import cv2
import numpy as np
import pytest

from competition.data import labels
from competition.data import rle
from competition.errors import InputError
from competition.data.images import check_image, read_image

CURRENT = "ImageId,ClassId,EncodedPixels\na.jpg,1,1 3\na.jpg,3,10 2\nb.jpg,4,400000 5\n"
ORIGINAL = ("ImageId_ClassId,EncodedPixels\n"
            "a.jpg_1,1 3\na.jpg_2,\na.jpg_3,10 2\na.jpg_4,\n"
            "b.jpg_1,\nb.jpg_2,\nb.jpg_3,\nb.jpg_4,400000 5\n")


def write(tmp_path, text, name="train.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_both_layouts_read_to_the_same_defect_table(tmp_path):
    current = labels.read_train(write(tmp_path, CURRENT, "current.csv"))
    original = labels.read_train(write(tmp_path, ORIGINAL, "original.csv"))
    expected = [("a.jpg", 1, "1 3"), ("a.jpg", 3, "10 2"), ("b.jpg", 4, "400000 5")]
    for table in (current, original):
        assert list(table.itertuples(index=False, name=None)) == expected


def test_columns_in_another_order_and_blank_lines(tmp_path):
    text = "EncodedPixels,ImageId,ClassId\n1 3,a.jpg,1\n\n10 2,a.jpg,3\n"
    table, layout, header = labels.read_table(write(tmp_path, text))
    assert layout == "current" and header == ["EncodedPixels", "ImageId", "ClassId"]
    assert table.index.tolist() == [2, 4]  # line numbers survive the blank line


@pytest.mark.parametrize("text, message", [
    ("", "empty file"),
    ("ImageId,EncodedPixels\na.jpg,1 3\n", "columns ImageId,EncodedPixels are neither"),
    ("ImageId,ClassId,EncodedPixels,Extra\na.jpg,1,1 3,x\n", "are neither"),
    ("ImageId,ClassId,EncodedPixels\na.jpg,1,1 3\nb.jpg,5,1 3\n", "line 3: ClassId '5' is not one of"),
    ("ImageId,ClassId,EncodedPixels\na.jpg,one,1 3\n", "line 2: ClassId 'one'"),
    ("ImageId,ClassId,EncodedPixels\na.jpg,1,1 3\na.jpg,1,5 3\n",
     "line 3: duplicate (a.jpg, class 1), first at line 2"),
    ("ImageId,ClassId,EncodedPixels\na.jpg,2,1 3 7\n", "line 2 (a.jpg class 2): bad RLE: 3 values"),
    ("ImageId,ClassId,EncodedPixels\n,2,1 3\n", "line 2: empty ImageId"),
    ("ImageId_ClassId,EncodedPixels\na.jpg,1 3\n", "line 2: ImageId_ClassId 'a.jpg' is not"),
    ("ImageId_ClassId,EncodedPixels\na.jpg_0,1 3\n", "ClassId '0' is not one of 1, 2, 3, 4"),
    ('ImageId,ClassId,EncodedPixels\n"a.jpg,1,1 3\n', "not a readable CSV"),
])
def test_bad_label_files_name_file_line_and_value(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as e:
        labels.read_train(path)
    assert str(path) in str(e.value) and message in str(e.value)


def test_binary_file_is_not_a_csv(tmp_path):
    path = tmp_path / "train.csv"
    ok, data = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    path.write_bytes(data.tobytes())
    with pytest.raises(InputError, match="train.csv"):
        labels.read_train(path)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        labels.read_train(tmp_path / "nope.csv")


def test_sample_layouts_expand_to_four_rows_per_image(tmp_path):
    placeholder = "ImageId,EncodedPixels,ClassId\nb.jpg,1 409600,0\na.jpg,1 409600,0\n"
    original = "ImageId_ClassId,EncodedPixels\n" + "".join(
        f"{i}_{c},\n" for i in ("b.jpg", "a.jpg") for c in (1, 2, 3, 4))
    for text in (placeholder, original):
        sample = labels.read_sample(write(tmp_path, text, "sample.csv"))
        assert list(sample.pairs.itertuples(index=False, name=None)) == [
            (i, c) for i in ("b.jpg", "a.jpg") for c in (1, 2, 3, 4)]
    assert labels.read_sample(write(tmp_path, placeholder, "s.csv")).header == (
        "ImageId", "EncodedPixels", "ClassId")


def test_masks_and_class_matrix():
    encoded = {1: "1 3", 4: "257 2"}
    m = labels.masks(encoded)
    assert m.shape == (4, 256, 1600)
    assert m[0, :3, 0].tolist() == [1, 1, 1] and m[0].sum() == 3
    assert m[3, :2, 1].tolist() == [1, 1] and m[3].sum() == 2
    assert m[1].sum() == m[2].sum() == 0
    import pandas as pd
    table = pd.DataFrame({"ImageId": ["x", "x", "z"], "ClassId": [1, 4, 2],
                          "EncodedPixels": ["1 1", "1 1", "1 1"]})
    assert labels.class_matrix(["x", "y", "z"], table).tolist() == [
        [1, 0, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0]]


def test_load_train_checks_images(synthetic, tmp_path):
    image_ids, table = labels.load_train(synthetic)
    assert len(image_ids) == 60 and set(table.ImageId) <= set(image_ids)
    data = tmp_path / "data"
    shutil.copytree(synthetic, data)
    victim = table.ImageId.iloc[0]
    (data / "train_images" / victim).unlink()
    with pytest.raises(InputError, match=f"no image file .*{victim}"):
        labels.load_train(data)


def test_images_wrong_size_corrupt_and_missing(tmp_path):
    small = tmp_path / "small.jpg"
    cv2.imwrite(str(small), np.zeros((256, 800, 3), np.uint8))
    for fn in (check_image, read_image):
        with pytest.raises(InputError, match="image is 800x256, expected 1600x256"):
            fn(small)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not a jpeg at all")
    for fn in (check_image, read_image):
        with pytest.raises(InputError, match="unreadable image"):
            fn(junk)
        with pytest.raises(InputError, match="not found"):
            fn(tmp_path / "missing.jpg")


def test_read_image_is_rgb_grey(synthetic):
    image = read_image(next((synthetic / "train_images").iterdir()))
    assert image.shape == (256, 1600, 3) and image.dtype == np.uint8
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
    assert rle.SHAPE == image.shape[:2]
