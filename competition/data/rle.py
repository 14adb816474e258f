"""Run-length encoding exactly as Kaggle's Severstal metric reads it, compiled with numba.

Convention: space-separated `start length` pairs; starts are 1-indexed; pixels are numbered
top to bottom, then left to right (column-major), so a run may continue from the bottom of
one column into the top of the next; runs are sorted and do not overlap; an empty mask is ''.

Masks are (H, W) arrays, H=256 rows by W=1600 columns for Severstal, any nonzero value set.
The kernels work on C-ordered masks without transposing them: encode compares each row with
the row above eight pixels at a time; decode parses eight bytes at a time and writes eight
columns at a time, a uint64 word per row (`_fill_words`).
numba's on-disk cache (`cache=True`) keeps the compile cost to the first run on a machine.
"""
from __future__ import annotations

import re
import sys

import numba
import numba.extending
import numpy as np
from llvmlite import ir

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


@numba.extending.intrinsic
def _load_u64(typingctx, buf, i):
    """The 8 bytes buf[i:i + 8] as a little-endian uint64, one unaligned load, no bounds
    check: the caller makes sure that i + 8 <= len(buf)."""
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        pointer = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(64).as_pointer())
        return builder.load(pointer, align=1)
    return numba.types.uint64(buf, numba.types.intp), codegen


@numba.extending.intrinsic
def _trailing_zeros(typingctx, x):
    """Number of trailing zero bits of a nonzero integer (LLVM's cttz)."""
    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 0))
    return x(x), codegen


# uint64 constants of the parser's eight-bytes-at-a-time digits (see `_parse`)
_ZEROS = np.uint64(0x3030303030303030)  # '0' in every byte
_ADD_46, _ADD_50 = np.uint64(0x4646464646464646), np.uint64(0x5050505050505050)
_PAIRS, _QUADS = np.uint64(0x00FF00FF00FF00FF), np.uint64(0x0000FFFF0000FFFF)
_LOW32 = np.uint64(0xFFFFFFFF)
_TEN, _HUNDRED, _TEN_THOUSAND = np.uint64(10), np.uint64(100), np.uint64(10000)
_EIGHT, _SIXTEEN, _THIRTY_TWO, _SIXTY_FOUR = (np.uint64(8), np.uint64(16), np.uint64(32),
                                              np.uint64(64))
_BYTE_FF = np.uint64(0xFF)


@numba.njit(cache=True, nogil=True)
def _parse(buf: np.ndarray, n_pixels: int):
    """Parse and check ASCII RLE bytes in one pass, straight into starts and lengths.

    Returns (starts, lengths, n_runs, error code, index of the offending value). Starts are
    0-based. Values are separated by any ASCII white space; a leading '-' is read so that
    negative values get their own message. The errors are reported as if all values were
    read first, then the runs checked in order: a value that is not an integer anywhere
    wins over an odd count, which wins over the first bad run.

    A value of 1 to 7 digits followed by white space, with 8 bytes to read, is read as one
    uint64 without a branch per digit; anything else (the last bytes, a '-', a bad
    character, a long value) goes through the byte-at-a-time loop, which has the last word.
    """
    L = len(buf)
    room = (L + 1) // 4 + 1  # a pair takes at least 4 bytes with its separator
    starts = np.empty(room, np.int64)
    lengths = np.empty(room, np.int64)
    n = 0  # values read
    runs = 0  # runs checked and kept
    run_code = _OK
    run_index = 0
    start = 0  # the value before the current one, when the current one is a length
    end = 0  # end of the last kept run
    i = 0
    while i < L:
        ch = buf[i]
        if ch == 32 or ch == 9 or ch == 10 or ch == 13:
            i += 1
            continue
        read = False
        v = 0
        if i + 8 <= L:
            w = _load_u64(buf, i)
            t = w & _LOW7
            # bit 7 of each byte: set where the byte is not '0'..'9' (ASCII or not)
            other = ((t + _ADD_46) | ~(t + _ADD_50) | w) & _HIGH
            if other != 0:
                d = _trailing_zeros(other) // _EIGHT
                sep = (w >> (_EIGHT * d)) & _BYTE_FF
                if d > 0 and (sep == 32 or sep == 9 or sep == 10 or sep == 13):
                    # digits in the top d bytes, most significant first, zeros below
                    x = (w - _ZEROS) << (_SIXTY_FOUR - _EIGHT * d)
                    x = (x * _TEN + (x >> _EIGHT)) & _PAIRS
                    x = (x * _HUNDRED + (x >> _SIXTEEN)) & _QUADS
                    x = (x * _TEN_THOUSAND + (x >> _THIRTY_TWO)) & _LOW32
                    v = np.int64(x)
                    i += np.int64(d) + 1  # the separator too
                    read = True
        if not read:
            neg = False
            if ch == 45:  # '-'
                neg = True
                i += 1
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
                return starts[:0], lengths[:0], 0, _NOT_INT, n
            if neg:
                v = -v
        if n % 2 == 0:
            start = v
        elif run_code == _OK:  # v is the length of run n // 2
            if start < 1:
                run_code = _START
            elif v < 1:
                run_code = _LENGTH
            elif start - 1 + v > n_pixels:
                run_code = _PAST_END
            elif start - 1 < end:
                run_code = _ORDER
            else:
                starts[runs] = start - 1
                lengths[runs] = v
                runs += 1
                end = start - 1 + v
            if run_code != _OK:
                run_index = n // 2
        n += 1
    if n % 2 == 1:
        return starts[:0], lengths[:0], 0, _ODD, n
    if run_code != _OK:
        return starts[:0], lengths[:0], 0, run_code, run_index
    return starts[:runs], lengths[:runs], runs, _OK, 0


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


def _as_bytes(rle) -> bytes:
    """The RLE's bytes, which numba reads as a read-only uint8 buffer without a copy."""
    if isinstance(rle, str):
        try:
            return rle.encode("ascii")
        except UnicodeEncodeError:
            return rle.encode("utf-8")  # non-ASCII bytes fail the digit check of the parser
    if rle is None or (isinstance(rle, float) and rle != rle):  # None or pandas' NaN: empty
        return b""
    raise InputError(f"bad RLE: expected a string, got {rle!r}")


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
def _fill_bytes(out: np.ndarray, starts: np.ndarray, lengths: np.ndarray, value: np.uint8):
    """Set sorted runs in a C-ordered (H, W) array, walking down each column. The column is
    tracked as the runs advance, so no division per run. The simple path, for the shapes
    and arrays `_fill_words` does not take."""
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


_SMOOTH = 8  # runs at least this long on average: every group dense (`_fill_words`)
_LOOK = 8  # runs read ahead to tell a sparse group from a dense one (see `_fill_words`)


@numba.njit(cache=True, nogil=True)
def _fill_words(out: np.ndarray, starts: np.ndarray, lengths: np.ndarray, value: np.uint8,
                zeros: bool, smooth: bool):
    """Set sorted runs in a C-ordered (H, W) uint8 array, W a multiple of 8 and the data
    8-byte aligned, a group of 8 columns at a time.

    A dense group is written one uint64 word per row, from its first set row to its last:
    byte k of the word toggles at the rows where a piece of column 8g + k starts and ends,
    so a row's word is the toggles so far XOR-ed together. `zeros`: `out` is all zeros, so
    plain stores; else each word keeps the bytes its pieces do not cover.

    A sparse group, with fewer pixels plus runs than H (rows a dense group may have to
    write), is written pixel by pixel as `_fill_bytes` does. `smooth` (long runs, as
    annotators draw) makes every group dense; otherwise up to _LOOK runs are read ahead,
    and a group that they do not settle is taken to be like the previous one when that is
    next door (ragged masks look alike all over), else dense.

    One function on purpose: a call per group that passes arrays costs atomic reference
    counts, several times a group's work. Indices into `out` are unsigned, so numba adds
    no negative-index wrap-around to the inner loops."""
    H, W = out.shape
    flat = out.reshape(out.size)  # bytes
    words = flat.view(np.uint64)
    step = np.uint64(W // 8)  # words per row
    width = np.uint64(W)
    put = np.uint64(value)
    toggles = np.zeros(H + 1, np.uint64)
    n = starts.shape[0]
    k = 0  # next run
    p = 0  # the piece [p, e) of a run still to write
    e = 0
    last_g = -2
    sparse = False
    while True:
        if p >= e:
            if k == n:
                break
            p = starts[k]
            e = p + lengths[k]
            k += 1
        c = p // H  # one division per group
        top = c * H  # position of pixel (0, c)
        g = c >> 3
        stop_g = (g + 1) * 8 * H  # the group ends here
        if smooth or g != last_g + 1:
            sparse = False
        if not smooth:
            budget = H - (min(e, stop_g) - p)
            j = k
            while budget > 0 and j < k + _LOOK and j < n and starts[j] < stop_g:
                budget -= lengths[j] + 1
                j += 1
            if budget <= 0:
                sparse = False
            elif j == n or starts[j] >= stop_g:
                sparse = True
        last_g = g
        count = 0  # pixels plus runs, for the next group to go by
        lo = H  # dense: the toggles of each column's pieces, rows lo..hi
        hi = 0
        while True:  # the group's pieces of runs, one column at a time
            while p >= top + H:
                c += 1
                top += H
            stop = min(e, top + H)
            r0 = p - top
            r1 = stop - top
            if sparse:  # down the column, pixel by pixel
                idx = np.uint64(r0) * width + np.uint64(c)
                for _ in range(r0, r1):
                    flat[idx] = value
                    idx += width
            else:
                bit = _ONE << np.uint64(8 * (c & 7))
                toggles[r0] ^= bit
                toggles[r1] ^= bit
                lo = min(lo, r0)
                hi = max(hi, r1)
            count += r1 - r0 + 1
            p = stop
            if p < e:
                if p == stop_g:  # the run goes on into the next group
                    break
            elif k < n and starts[k] < stop_g:
                p = starts[k]
                e = p + lengths[k]
                k += 1
            else:
                break
        if sparse:
            sparse = count < H
            continue
        sparse = count < H
        state = np.uint64(0)
        idx = np.uint64(lo) * step + np.uint64(g)
        if zeros:
            for r in range(np.uint64(lo), np.uint64(hi)):
                state ^= toggles[r]
                toggles[r] = 0
                words[idx] = state * put
                idx += step
        else:
            for r in range(np.uint64(lo), np.uint64(hi)):
                state ^= toggles[r]
                toggles[r] = 0
                words[idx] = (words[idx] & ~(state * _BYTE_FF)) | (state * put)
                idx += step
        toggles[hi] = 0


@numba.njit(cache=True, nogil=True)
def _decode(buf, out: np.ndarray, value: np.uint8, zeros: bool):
    """Parse, check, then fill (one call from Python). Returns (error code, index).
    A group of 8 columns at a time where rows are whole uint64 words (W a multiple of 8,
    the data 8-byte aligned) and the runs are long or many; else pixel by pixel."""
    H, W = out.shape
    starts, lengths, n, code, index = _parse(buf, H * W)
    if code == _OK:
        pixels = lengths.sum()
        words = W % 8 == 0 and out.ctypes.data % 8 == 0  # rows are whole uint64 words
        if words and pixels >= _SMOOTH * n:
            _fill_words(out, starts, lengths, value, zeros, True)
        elif words and pixels + n >= H * (W // 8):
            _fill_words(out, starts, lengths, value, zeros, False)
        else:  # short runs, and too few to fill the groups on average: pixel by pixel
            _fill_bytes(out, starts, lengths, value)
    return code, index


def decode_into(rle: str, out: np.ndarray, value: int = 1) -> np.ndarray:
    """Write the RLE's pixels as `value` into an existing C-ordered (H, W) uint8 array
    (other pixels are left as they are). A bad RLE raises before anything is written."""
    if out.dtype != np.uint8 or out.ndim != 2 or not out.flags.c_contiguous:
        raise ValueError("out must be a C-contiguous (H, W) uint8 array")
    code, index = _decode(_as_bytes(rle), out, np.uint8(value), False)
    if code != _OK:
        _raise(rle, code, index, out.shape)
    return out


_ONE_U8 = np.uint8(1)


def _decode_zeros(rle, out: np.ndarray) -> None:
    """decode_into(rle, out) for an `out` that this module has just made with np.zeros."""
    if out.ndim != 2:
        raise ValueError("out must be a C-contiguous (H, W) uint8 array")
    code, index = _decode(_as_bytes(rle), out, _ONE_U8, True)  # nothing to keep: plain stores
    if code != _OK:
        _raise(rle, code, index, out.shape)


def decode(rle: str, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """Kaggle RLE string -> (H, W) uint8 mask of 0/1, C-ordered. '' gives all zeros."""
    out = np.zeros(shape, np.uint8)
    _decode_zeros(rle, out)
    return out


def decode_many(rles, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """N RLE strings -> (N, H, W) uint8 masks."""
    rles = list(rles)
    out = np.zeros((len(rles), *shape), np.uint8)
    for i, rle in enumerate(rles):
        _decode_zeros(rle, out[i])
    return out


def area(rle: str, shape: tuple[int, int] = SHAPE) -> int:
    """Number of pixels an RLE sets, without decoding it."""
    return int(runs(rle, shape)[1].sum())
