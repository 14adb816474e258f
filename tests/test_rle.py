import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import reference
from competition import rle
from competition.errors import InputError
from conftest import FIXTURES


def test_golden_row_decodes_to_4396_pixels_and_encodes_back():
    path = FIXTURES / "severstal_golden.csv"
    if not path.exists():
        pytest.skip(f"{path} not found (it sits beside the repository in CI)")
    row = pd.read_csv(path, dtype=str).iloc[0]
    mask = rle.decode(row.EncodedPixels)
    assert mask.shape == (256, 1600) and mask.dtype == np.uint8
    assert int(mask.sum()) == 4396
    assert rle.encode(mask) == row.EncodedPixels
    assert np.array_equal(mask, np.array(reference.decode(row.EncodedPixels, (256, 1600))))


def test_hand_worked_example():
    # 3x2 image, pixels numbered down the columns: 1 2 3 | 4 5 6
    mask = np.array([[1, 0],
                     [1, 1],
                     [0, 1]], np.uint8)
    assert rle.encode(mask) == "1 2 5 2"
    assert np.array_equal(rle.decode("1 2 5 2", (3, 2)), mask)


def test_run_continues_from_bottom_of_one_column_into_the_next():
    mask = np.zeros((256, 1600), np.uint8)
    mask[250:, 0] = 1  # pixels 251..256 of column 1
    mask[:4, 1] = 1    # pixels 257..260, the top of column 2
    assert rle.encode(mask) == "251 10"
    assert np.array_equal(rle.decode("251 10"), mask)


def test_last_pixel_and_full_and_empty_masks():
    mask = np.zeros((256, 1600), np.uint8)
    assert rle.encode(mask) == ""
    assert rle.decode("").sum() == 0
    mask[-1, -1] = 1
    assert rle.encode(mask) == "409600 1"
    assert rle.encode(np.ones((256, 1600), np.uint8)) == "1 409600"
    assert rle.decode("1 409600").all()


def test_any_nonzero_value_and_dtype_is_set():
    mask = np.zeros((4, 8), np.uint8)
    mask[1, 0], mask[2, 0] = 255, 7  # different nonzero bytes are still one run
    assert rle.encode(mask) == "2 2"
    assert rle.encode(mask.astype(bool)) == "2 2"
    assert rle.encode(mask.astype(np.float32)) == "2 2"
    assert rle.encode(np.asfortranarray(mask)) == "2 2"


masks = st.tuples(st.integers(1, 12), st.integers(1, 20)).flatmap(
    lambda shape: arrays(np.uint8, shape, elements=st.integers(0, 1)))


@settings(max_examples=300, deadline=None)
@given(masks)
def test_random_small_masks_match_reference_and_round_trip(mask):
    encoded = rle.encode(mask)
    assert encoded == reference.encode(mask)
    assert np.array_equal(rle.decode(encoded, mask.shape), mask)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.0, 1.0))
def test_random_full_size_masks_match_reference(seed, density):
    rng = np.random.default_rng(seed)
    # blocky masks: long runs, and runs that cross column ends
    mask = (rng.random((256, 1600 // 8)) < density).repeat(8, axis=1).astype(np.uint8)
    mask[rng.integers(0, 256), :] ^= 1
    encoded = rle.encode(mask)
    assert encoded == reference.encode(mask)
    assert np.array_equal(rle.decode(encoded), mask)


def test_very_fragmented_mask_takes_the_slow_path():
    mask = np.indices((256, 1600)).sum(axis=0) % 2  # checkerboard: 204,800 single pixels,
    encoded = rle.encode(mask)  # but the bottom of every even column joins the next top
    assert len(encoded.split()) == 2 * (204800 - 800)
    assert encoded == reference.encode(mask)
    assert np.array_equal(rle.decode(encoded), mask)


def test_batch_helpers():
    rng = np.random.default_rng(0)
    batch = (rng.random((3, 256, 1600)) < 0.01).astype(np.uint8)
    encoded = rle.encode_many(batch)
    assert encoded == [reference.encode(m) for m in batch]
    assert np.array_equal(rle.decode_many(encoded), batch)
    assert [rle.area(e) for e in encoded] == [int(m.sum()) for m in batch]


def test_decode_into_keeps_other_pixels_and_writes_a_value():
    out = np.zeros((3, 2), np.uint8)
    out[0, 1] = 9
    rle.decode_into("2 2", out, value=4)
    assert out.tolist() == [[0, 9], [4, 0], [4, 0]]


def test_nan_and_none_are_empty():
    assert rle.decode(float("nan")).sum() == 0
    assert rle.decode(None).sum() == 0


@pytest.mark.parametrize("bad, message", [
    ("1 2 3", "3 values, not `start length` pairs"),
    ("1 2 x 4", "value 3 'x' is not an integer"),
    ("1 2.5", "value 2 '2.5' is not an integer"),
    ("0 5", "run 1 '0 5' start < 1"),
    ("-3 5", "run 1 '-3 5' start < 1"),
    ("10 0", "run 1 '10 0' length < 1"),
    ("409600 2", "run 1 '409600 2' runs past the end of a 256x1600 image"),
    ("99999999999999999999 1", "runs past the end"),
    ("100 5 50 5", "run 2 '50 5' starts before the previous run ends"),
    ("100 5 103 5", "run 2 '103 5' starts before the previous run ends"),
])
def test_bad_rle_raises_a_clear_error(bad, message):
    with pytest.raises(InputError, match="bad RLE") as e:
        rle.decode(bad)
    assert message in str(e.value)
    with pytest.raises(InputError):
        rle.runs(bad)


def test_bad_rle_leaves_decode_into_target_untouched():
    out = np.zeros((256, 1600), np.uint8)
    with pytest.raises(InputError):
        rle.decode_into("1 10 5 3", out)
    assert out.sum() == 0


def test_touching_runs_are_valid():
    assert rle.decode("1 2 3 2", (2, 3)).sum() == 4


def test_other_white_space_and_odd_characters_are_reported_not_crashed():
    assert rle.decode("1 2\t5\n2\r", (3, 2)).sum() == 4
    for bad, shown in [("1 2\x0c5 2", "'2\\x0c5'"), ("1 ２", "'２'"), ("1 -", "'-'"),
                       ("1 " + "9" * 60, "runs past the end")]:
        with pytest.raises(InputError) as e:
            rle.decode(bad, (3, 2))
        assert shown in str(e.value)
