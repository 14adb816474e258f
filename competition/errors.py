"""The one exception type for errors a user can cause (bad CSV, bad RLE, missing image...).

`python -m competition` prints it as a single line and exits with status 2; any other
exception reaching the terminal is a bug in the package.
"""


class InputError(Exception):
    """Bad user input. The message names the file, the row and the offending value."""


def where(path, line=None) -> str:
    """Prefix for an error message: `train.csv line 7` (line numbers count the header as 1)."""
    return f"{path}" if line is None else f"{path} line {line}"
