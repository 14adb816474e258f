"""The one exception type for errors a user can cause (bad CSV, bad RLE, missing image...).

`python -m competition` prints it as a single line and exits with status 2; any other
exception reaching the terminal is a bug in the package.
"""
import contextlib


class InputError(Exception):
    """Bad user input. The message names the file, the row and the offending value."""


def where(path, line=None) -> str:
    """Prefix for an error message: `train.csv line 7` (line numbers count the header as 1)."""
    return f"{path}" if line is None else f"{path} line {line}"


@contextlib.contextmanager
def about(path):
    """Re-raise an InputError raised inside as one prefixed with `path`: a check that knows
    the key and the value (config.check) but not the file they came from."""
    try:
        yield
    except InputError as e:
        raise InputError(f"{path}: {e}") from None


def one_line(error: Exception) -> str:
    """The message to print. torch re-raises an error from a DataLoader worker with the
    worker's whole traceback as its text: keep the original message alone."""
    text = str(error).strip()
    if "Original Traceback" in text:
        return text.splitlines()[-1].split("InputError: ", 1)[-1]
    return text
