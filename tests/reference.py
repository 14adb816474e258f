"""Slow, obvious references the fast code is checked against: pixel by pixel, pure Python."""


def encode(mask) -> str:
    """Walk pixels in Kaggle order (down each column, columns left to right)."""
    H, W = mask.shape
    pairs = []
    run_start = None
    for p in range(H * W):
        on = bool(mask[p % H][p // H])
        if on and run_start is None:
            run_start = p
        if not on and run_start is not None:
            pairs += [run_start + 1, p - run_start]
            run_start = None
    if run_start is not None:
        pairs += [run_start + 1, H * W - run_start]
    return " ".join(str(v) for v in pairs)


def decode(rle: str, shape) -> list[list[int]]:
    H, W = shape
    mask = [[0] * W for _ in range(H)]
    values = [int(v) for v in rle.split()]
    for start, length in zip(values[0::2], values[1::2]):
        for p in range(start - 1, start - 1 + length):
            mask[p % H][p // H] = 1
    return mask


def pixels(rle: str) -> set[int]:
    values = [int(v) for v in rle.split()]
    return {p for s, n in zip(values[0::2], values[1::2]) for p in range(s, s + n)}


def dice(pred: str, truth: str) -> float:
    """Dice on sets of pixel numbers; 1 when both are empty."""
    x, y = pixels(pred), pixels(truth)
    if not x and not y:
        return 1.0
    return 2 * len(x & y) / (len(x) + len(y))
