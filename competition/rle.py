"""Run-length encoding exactly as Kaggle's Severstal metric reads it, compiled with numba.

Convention: space-separated `start length` pairs; starts are 1-indexed; pixels are numbered
top to bottom, then left to right (column-major), so a run may continue from the bottom of
one column into the top of the next; runs are sorted and do not overlap; an empty mask is ''.

Masks are (H, W) arrays, H=256 rows by W=1600 columns for Severstal, any nonzero value set.
The kernels work on C-ordered masks without transposing them: encode compares each row with
the row above eight pixels at a time, decode writes each run straight into its column.
numba's on-disk cache (`cache=True`) keeps the compile cost to the first run on a machine.
"""
from __future__ import annotations

import re
import sys

import numba
import numpy as np

from competition.errors import InputError

SHAPE = (256, 1600)  # (H, W) of every Severstal image
if sys.byteorder != "little":  # the encoder reads byte k of a uint64 word as column 8j + k
    raise ImportError("competition.rle needs a little-endian machine")

# uint64 constants of the encoder's byte tricks (typed, so numba never mixes in float64)
_LOW7 = np.uint64(0x7F7F7F7F7F7F7F7F)
_HIGH = np.uint64(0x8080808080808080)
_BYTE_INDEX = np.uint64(0x0706050403020100)  # (1 << 8k) * this has 7 - k in its top byte
_ONE, _SEVEN, _TOP_BYTE = np.uint64(1), np.uint64(7), np.uint64(56)

_SEPARATORS = r"[ \t\n\r]+"  # the white space the parser accepts between values

# error codes of the numba parser; the message for each is built in `_raise`
_OK, _NOT_INT, _ODD, _START, _LENGTH, _PAST_END, _ORDER = range(7)


# ---------------------------------------------------------------- encode


@numba.njit(cache=True, nogil=True)
def _boundaries(m: np.ndarray, words: np.ndarray, W: int, room: int):
    """Column-major positions (0-based) where the mask changes value, in increasing order.

    m: (H, Wp) uint8, C-ordered, Wp a multiple of 8 (columns from W on are zero padding);
    words: the same bytes as (H, Wp // 8) uint64.
    A boundary at position p means pixel p differs from pixel p - 1 (pixel -1 is 0); a
    final boundary at H * W closes a run that reaches the last pixel. Each row is compared
    with the row above as uint64 words: a word equal to the one above holds no boundary.
    Returns (boundaries, True), or (empty, False) when there are more than `room`.
    """
    H = m.shape[0]
    n_words = words.shape[1]
    rows = np.empty(room, np.int32)
    cols = np.empty(room, np.int32)
    n = 0
    # row 0: pixel (0, c) follows (H - 1, c - 1), the bottom of the previous column
    prev = False
    for c in range(W):
        if (m[0, c] != 0) != prev:
            rows[n] = 0
            cols[n] = c
            n += 1
        prev = m[H - 1, c] != 0
    # rows 1..H-1, found in row order, so rows increase within each column. In a word that
    # differs from the one above, bit 7 of each byte is set where exactly one of the two
    # bytes is nonzero; each such bit is a boundary, its byte index k = column 8j + k.
    for r in range(1, H):
        for j in range(n_words):
            a = words[r, j]
            b = words[r - 1, j]
            if a != b:
                d = ((((a & _LOW7) + _LOW7) | a) ^ (((b & _LOW7) + _LOW7) | b)) & _HIGH
                while d != 0:
                    bit = d & (~d + _ONE)
                    k = 7 - np.int64(((bit >> _SEVEN) * _BYTE_INDEX) >> _TOP_BYTE)
                    if n == room:
                        return np.empty(0, np.int64), False
                    rows[n] = r
                    cols[n] = 8 * j + k
                    n += 1
                    d ^= bit
    last = m[H - 1, W - 1] != 0
    # counting sort by column (stable, so rows stay increasing within a column)
    first = np.zeros(W + 1, np.int64)
    for i in range(n):
        first[cols[i] + 1] += 1
    for c in range(W):
        first[c + 1] += first[c]
    out = np.empty(n + 1 if last else n, np.int64)
    for i in range(n):
        c = cols[i]
        out[first[c]] = np.int64(c) * H + rows[i]
        first[c] += 1
    if last:
        out[n] = np.int64(H) * W
    return out, True


@numba.njit(cache=True, nogil=True)
def _write_pairs(b: np.ndarray, width: int) -> np.ndarray:
    """ASCII bytes of the `start length` pairs for boundaries b (even count, see above);
    width: the most digits of one value plus the separator."""
    buf = np.empty(b.shape[0] * width + 1, np.uint8)
    k = 0
    for i in range(b.shape[0]):
        v = b[i] + 1 if i % 2 == 0 else b[i] - b[i - 1]  # 1-indexed start, then length
        digits = 1
        power = 10
        while v >= power:
            digits += 1
            power *= 10
        k += digits
        for t in range(1, digits + 1):  # last digit first
            buf[k - t] = 48 + v % 10
            v //= 10
        buf[k] = 32  # ' '
        k += 1
    return buf[: max(k - 1, 0)]


def _as_mask_bytes(mask: np.ndarray) -> np.ndarray:
    """(H, W) mask -> C-ordered uint8 (H, Wp), zero-padded to Wp = W rounded up to 8."""
    m = np.asarray(mask)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"mask must be a non-empty 2-D (H, W) array, got shape {m.shape}")
    if m.dtype == np.bool_:
        m = m.view(np.uint8)
    elif m.dtype != np.uint8:
        m = (m != 0).view(np.uint8)
    H, W = m.shape
    if W % 8:
        padded = np.zeros((H, W + 8 - W % 8), np.uint8)
        padded[:, :W] = m
        return padded
    return np.ascontiguousarray(m)


_ROOM = 32768  # boundaries a realistic mask fits in (Severstal masks have ~10^3)


def encode(mask: np.ndarray) -> str:
    """(H, W) mask, nonzero = defect -> Kaggle RLE string ('' for an empty mask)."""
    H, W = np.shape(mask)
    width = len(str(H * W)) + 1
    m = _as_mask_bytes(mask)
    words = m.view(np.uint64)
    b, fits = _boundaries(m, words, W, max(_ROOM, W + 1))  # row 0 alone may need W
    if not fits:  # a very fragmented mask: make room for every pixel
        b, fits = _boundaries(m, words, W, H * W + 1)
    return _write_pairs(b, width).tobytes().decode("ascii")


def encode_many(masks: np.ndarray) -> list[str]:
    """(N, H, W) masks -> N RLE strings."""
    return [encode(m) for m in masks]


# ---------------------------------------------------------------- decode


@numba.njit(cache=True, nogil=True)
def _parse(buf: np.ndarray, n_pixels: int):
    """Parse and check ASCII RLE bytes.

    Returns (starts, lengths, n_runs, error code, index of the offending value). Starts are
    0-based. Values are separated by any ASCII white space; a leading '-' is read so that
    negative values get their own message.
    """
    n_max = buf.shape[0] // 2 + 1
    values = np.empty(n_max, np.int64)
    n = 0
    i = 0
    L = buf.shape[0]
    while i < L:
        ch = buf[i]
        if ch == 32 or ch == 9 or ch == 10 or ch == 13:
            i += 1
            continue
        neg = False
        if ch == 45:  # '-'
            neg = True
            i += 1
        v = 0
        nd = 0
        bad = False
        while i < L:
            ch = buf[i]
            if ch == 32 or ch == 9 or ch == 10 or ch == 13:
                break
            if 48 <= ch <= 57:
                if nd < 15:  # more digits cannot fit an image anyway; keep 15 for the check
                    v = v * 10 + (ch - 48)
                nd += 1
            else:
                bad = True
            i += 1
        if bad or nd == 0:
            return values[:0], values[:0], 0, _NOT_INT, n
        values[n] = -v if neg else v
        n += 1
    if n % 2 == 1:
        return values[:0], values[:0], 0, _ODD, n
    runs = n // 2
    starts = np.empty(runs, np.int64)
    lengths = np.empty(runs, np.int64)
    end = 0
    for k in range(runs):
        s = values[2 * k]
        ln = values[2 * k + 1]
        if s < 1:
            return starts[:0], lengths[:0], 0, _START, k
        if ln < 1:
            return starts[:0], lengths[:0], 0, _LENGTH, k
        if s - 1 + ln > n_pixels:
            return starts[:0], lengths[:0], 0, _PAST_END, k
        if s - 1 < end:
            return starts[:0], lengths[:0], 0, _ORDER, k
        starts[k] = s - 1
        lengths[k] = ln
        end = s - 1 + ln
    return starts, lengths, runs, _OK, 0


def _raise(rle: str, code: int, index: int, shape: tuple[int, int]) -> None:
    tokens = [t for t in re.split(_SEPARATORS, rle) if t]  # as the parser splits them
    if code == _NOT_INT:
        raise InputError(f"bad RLE: value {index + 1} {tokens[index][:40]!r} is not an integer")
    if code == _ODD:
        raise InputError(f"bad RLE: {len(tokens)} values, not `start length` pairs")
    pair = f"run {index + 1} '{tokens[2 * index]} {tokens[2 * index + 1]}'"
    reason = {
        _START: "start < 1 (starts are 1-indexed)",
        _LENGTH: "length < 1",
        _PAST_END: f"runs past the end of a {shape[0]}x{shape[1]} image "
        f"({shape[0] * shape[1]} pixels)",
        _ORDER: "starts before the previous run ends (runs must be sorted, not overlapping)",
    }[code]
    raise InputError(f"bad RLE: {pair} {reason}")


def _as_bytes(rle) -> np.ndarray:
    if rle is None or (isinstance(rle, float) and rle != rle):  # None or pandas' NaN: empty
        return np.empty(0, np.uint8)
    if not isinstance(rle, str):
        raise InputError(f"bad RLE: expected a string, got {rle!r}")
    try:
        data = rle.encode("ascii")
    except UnicodeEncodeError:
        data = rle.encode("utf-8")  # non-ASCII bytes fail the digit check below
    return np.frombuffer(data, np.uint8)


def runs(rle: str, shape: tuple[int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Checked RLE -> (starts, lengths), int64 arrays, starts 0-based column-major.

    Raises InputError naming the offending value for: a non-integer, an odd number of
    values, start < 1, length < 1, a run past the end of the image, unsorted or overlapping
    runs. '' (or NaN/None, as pandas reads an empty cell) is the empty mask.
    """
    starts, lengths, _, code, index = _parse(_as_bytes(rle), shape[0] * shape[1])
    if code != _OK:
        _raise(rle, code, index, shape)
    return starts, lengths


@numba.njit(cache=True, nogil=True)
def _fill(out: np.ndarray, starts: np.ndarray, lengths: np.ndarray, value: np.uint8) -> None:
    """Set sorted runs in a C-ordered (H, W) array, walking down each column. The column is
    tracked as the runs advance, so no division per run."""
    H = out.shape[0]
    c = 0
    top = 0  # position of pixel (0, c)
    for k in range(starts.shape[0]):
        p = starts[k]
        end = p + lengths[k]
        while p < end:
            while p >= top + H:
                c += 1
                top += H
            r = p - top
            stop = min(end, top + H)  # to the bottom of this column at most
            for i in range(r, r + stop - p):
                out[i, c] = value
            p = stop


@numba.njit(cache=True, nogil=True)
def _decode(buf: np.ndarray, out: np.ndarray, value: np.uint8):
    """Parse, check, then fill (one call from Python). Returns (error code, index)."""
    starts, lengths, _, code, index = _parse(buf, out.shape[0] * out.shape[1])
    if code == _OK:
        _fill(out, starts, lengths, value)
    return code, index


def decode_into(rle: str, out: np.ndarray, value: int = 1) -> np.ndarray:
    """Write the RLE's pixels as `value` into an existing C-ordered (H, W) uint8 array
    (other pixels are left as they are). A bad RLE raises before anything is written."""
    if out.dtype != np.uint8 or out.ndim != 2 or not out.flags.c_contiguous:
        raise ValueError("out must be a C-contiguous (H, W) uint8 array")
    code, index = _decode(_as_bytes(rle), out, np.uint8(value))
    if code != _OK:
        _raise(rle, code, index, out.shape)
    return out


def decode(rle: str, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """Kaggle RLE string -> (H, W) uint8 mask of 0/1, C-ordered. '' gives all zeros."""
    return decode_into(rle, np.zeros(shape, np.uint8))


def decode_many(rles, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """N RLE strings -> (N, H, W) uint8 masks."""
    rles = list(rles)
    out = np.zeros((len(rles), *shape), np.uint8)
    for i, rle in enumerate(rles):
        decode_into(rle, out[i])
    return out


def area(rle: str, shape: tuple[int, int] = SHAPE) -> int:
    """Number of pixels an RLE sets, without decoding it."""
    return int(runs(rle, shape)[1].sum())
