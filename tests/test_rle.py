import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import reference
from competition.data import rle
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


# ---------------------------------------------------------------- decode against slow references


def slow_decode_into(encoded: str, out: np.ndarray, value: int = 1) -> np.ndarray:
    """The obvious decoder: pixel p of a run is row p % H of column p // H."""
    H = out.shape[0]
    values = [int(v) for v in encoded.split()]
    for start, length in zip(values[0::2], values[1::2]):
        for p in range(start - 1, start - 1 + length):
            out[p % H, p // H] = value
    return out


def check_decoders(encoded: str, shape, seed: int = 0) -> None:
    """decode and decode_into (on a busy array, with a value other than 1) against the slow
    decoder."""
    expected = slow_decode_into(encoded, np.zeros(shape, np.uint8))
    mask = rle.decode(encoded, shape)
    assert mask.dtype == np.uint8 and mask.flags.c_contiguous and mask.flags.owndata
    assert np.array_equal(mask, expected)
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 256, shape, dtype=np.uint8)
    out = background.copy()
    assert rle.decode_into(encoded, out, value=7) is out
    assert np.array_equal(out, slow_decode_into(encoded, background.copy(), value=7))


def smooth_masks(n: int, seed: int) -> list[np.ndarray]:
    """Masks drawn as the annotators drew them (the synthetic generator's outlines)."""
    from competition.data.synth import DRAW

    rng = np.random.default_rng(seed)
    masks = []
    for i in range(n):
        mask = np.zeros((256, 1600), np.uint8)
        DRAW[1 + i % 4](mask, rng)
        masks.append(mask)
    return masks


def test_decode_matches_slow_decoder_on_smooth_masks():
    for i, mask in enumerate(smooth_masks(8, seed=5)):
        check_decoders(rle.encode(mask), mask.shape, seed=i)


@pytest.mark.parametrize("density", [0.001, 0.01, 0.05, 0.1, 0.3, 0.6, 0.95])
def test_decode_matches_slow_decoder_on_ragged_masks(density):
    rng = np.random.default_rng(int(density * 1000))
    mask = (rng.random((256, 1600)) < density).astype(np.uint8)
    check_decoders(rle.encode(mask), mask.shape, seed=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decode_matches_slow_decoder_where_sparse_and_dense_columns_alternate(seed):
    # bands of 8-column groups, ragged or smooth, sparse or dense, next door or apart: a
    # mask of short runs but enough of them that the decoder picks a way for each group
    rng = np.random.default_rng(seed)
    mask = np.zeros((256, 1600), np.uint8)
    for g, kind in enumerate(rng.integers(0, 6, 200)):
        cols = slice(8 * g, 8 * g + 8)
        if kind == 1:
            mask[:, cols] = rng.random((256, 8)) < 0.01
        elif kind == 2:
            mask[:, cols] = rng.random((256, 8)) < 0.5
        elif kind == 3:
            top = int(rng.integers(0, 200))
            mask[top:top + int(rng.integers(1, 56)), cols] = 1
        elif kind == 4:
            mask[rng.integers(0, 256), 8 * g + int(rng.integers(0, 8))] = 1
    encoded = rle.encode(mask)
    lengths = rle.runs(encoded)[1]
    assert lengths.sum() < rle._SMOOTH * len(lengths)  # not smooth
    assert lengths.sum() + len(lengths) >= 256 * 200  # not few: a choice per group
    check_decoders(encoded, mask.shape)
    (smooth,) = smooth_masks(1, seed=seed)
    both = np.where(np.arange(1600) < 800, smooth, mask).astype(np.uint8)
    check_decoders(rle.encode(both), both.shape)


def test_runs_across_columns_and_groups_of_eight_columns():
    shape = (5, 16)  # columns of 5 pixels; columns 0-7 and 8-15 are the two groups
    for encoded in ["4 10",         # row 3 of column 0 to row 2 of column 2
                    "39 4",         # rows 3-4 of column 7, rows 0-1 of column 8
                    "1 80",         # everything
                    "36 10 46 5",   # two runs that touch: all of columns 7, 8 and 9
                    "2 1 5 2 11 30 77 4"]:
        check_decoders(encoded, shape)
    for encoded in ["300 100000", "1 409600", "409600 1", "1 1", "256 2 2048 4097"]:
        check_decoders(encoded, (256, 1600))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.floats(0.0, 1.0), st.integers(0, 2**32 - 1))
def test_decode_matches_slow_decoder_on_any_shape(H, W, density, seed):
    rng = np.random.default_rng(seed)
    mask = (rng.random((H, W)) < density).astype(np.uint8)
    if rng.random() < 0.5:  # long runs that wrap from one column into the next
        flat = mask.ravel(order="F")
        flat[int(rng.integers(0, H * W)):int(rng.integers(0, H * W + 1))] = 1
        mask = flat.reshape((H, W), order="F")
    check_decoders(rle.encode(mask), (H, W), seed=seed)


def test_decode_into_unaligned_and_sliced_arrays():
    encoded = rle.encode(smooth_masks(1, seed=3)[0])
    expected = slow_decode_into(encoded, np.zeros((256, 1600), np.uint8), value=5)
    raw = np.zeros(256 * 1600 + 1, np.uint8)
    unaligned = raw[1:].reshape(256, 1600)  # rows are not uint64 words here
    assert unaligned.ctypes.data % 8 != 0
    rle.decode_into(encoded, unaligned, value=5)
    assert np.array_equal(unaligned, expected)
    stack = np.zeros((3, 256, 1600), np.uint8)
    rle.decode_into(encoded, stack[1], value=5)
    assert np.array_equal(stack[1], expected) and not stack[0].any() and not stack[2].any()


def test_decoded_masks_are_fresh_arrays():
    a, b = rle.decode("5 10"), rle.decode("5 10")
    assert not np.shares_memory(a, b)
    a[0, 0] = 1
    assert b[0, 0] == 0 and rle.decode("5 10")[0, 0] == 0


def test_bad_rle_leaves_a_busy_decode_into_target_untouched():
    background = np.random.default_rng(0).integers(0, 256, (256, 1600), dtype=np.uint8)
    out = background.copy()
    for bad in ["1 10 20 5 300 2 299 5", "1 10 x 5", "1 10 20"]:
        with pytest.raises(InputError):
            rle.decode_into(bad, out, value=3)
        assert np.array_equal(out, background)


# ---------------------------------------------------------------- parser against a slow one


def slow_parse(text: str, n_pixels: int):
    """(starts, lengths) or (error code, index), read the obvious way: split on white space,
    every value must be an integer, then pairs, then each run in order. Like the parser,
    it reads at most the first 15 digits of a value."""
    tokens = [t for t in re.split(r"[ \t\n\r]+", text) if t]
    for i, token in enumerate(tokens):
        if not re.fullmatch(r"-?[0-9]+", token):
            return rle._NOT_INT, i
    if len(tokens) % 2:
        return rle._ODD, len(tokens)
    values = [(-1 if t[0] == "-" else 1) * int(t.lstrip("-")[:15]) for t in tokens]
    end = 0
    for k in range(len(values) // 2):
        start, length = values[2 * k], values[2 * k + 1]
        for code, bad in [(rle._START, start < 1), (rle._LENGTH, length < 1),
                          (rle._PAST_END, start - 1 + length > n_pixels),
                          (rle._ORDER, start - 1 < end)]:
            if bad:
                return code, k
        end = start - 1 + length
    return values[0::2], values[1::2]


separators = st.sampled_from([" ", " ", " ", "  ", "\t", "\n", "\r\n"])
tokens = st.one_of(
    st.integers(1, 400).map(str), st.integers(1, 10**7).map(str),
    st.sampled_from(["0", "-3", "x", "2.5", "+1", "-", "1-", "12345678", "123456789012",
                     "9" * 20, "0" * 16 + "5", "１", "1\x0c2", "é"]))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(tokens, separators), max_size=12), st.booleans(),
       st.integers(1, 10**7))
def test_parser_matches_slow_parser(pairs, lead, n_pixels):
    text = (" " if lead else "") + "".join(t + s for t, s in pairs)
    starts, lengths, n, code, index = rle._parse(rle._as_bytes(text), n_pixels)
    expected = slow_parse(text, n_pixels)
    if code == rle._OK:
        assert (starts.tolist(), lengths.tolist()) == ([s - 1 for s in expected[0]],
                                                       expected[1])
        assert n == len(expected[1])
    else:
        assert (code, index) == expected


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 3000), min_size=2, max_size=60), separators)
def test_parser_reads_valid_runs_of_any_width(gaps, separator):
    # sorted runs with values of 1 to 7 digits, so that every width goes the fast way
    values, p = [], 0
    for gap, length in zip(gaps[0::2], gaps[1::2]):
        values += [p + gap, length]
        p += gap + length
    text = separator.join(str(v) for v in values)
    starts, lengths = rle.runs(text, (1, p + 1))
    assert starts.tolist() == [v - 1 for v in values[0::2]]
    assert lengths.tolist() == values[1::2]
