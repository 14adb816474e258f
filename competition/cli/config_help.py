"""`train --help` text for every TrainConfig field, read from the field's own comment in
model/config.py (so the help and the source say the same thing), with the valid names of
the fields that take one and a metavar that shows a tuple's length and meaning.

The comment convention (stated above TrainConfig): a field's comment is the comment on its
line plus the comment lines right below it; a field with none takes the comment block right
above it; a blank line ends a comment. Read with `tokenize`, so a '#' inside a string default
is never taken for a comment."""
from __future__ import annotations

import inspect
import io
import tokenize

from competition.model import config as config_lib

# the valid names of a field, shown in its help (checked by config.check and the registries)
CHOICES = {
    "task": config_lib.TASKS,
    "arch": config_lib.ARCH_NAMES,
    "schedule": config_lib.SCHEDULE_NAMES,
    "amp": config_lib.AMP_MODES,
    "cache": config_lib.CACHES,
}
# free-form fields whose help lists the names they are built from
NAMED = {
    "encoder": ("tried here", config_lib.ENCODERS_TRIED),
    "loss": ("losses", config_lib.LOSS_NAMES),
}
# a tuple field's items: C1..C4 the four defect classes, D1..D3 the three ASPP branches
ITEM_NAMES = {4: "C", 3: "D"}


def _lines(source: str) -> list[tuple[str | None, str | None]]:
    """Per source line: (field name or None, comment text or None); (None, None) is blank."""
    found: dict[int, list] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        row = found.setdefault(token.start[0], [])
        if token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            row.append(token)
    rows = []
    for number in range(1, len(source.splitlines()) + 1):
        tokens = found.get(number, [])
        field = (tokens[0].string if len(tokens) > 2 and tokens[0].type == tokenize.NAME
                 and tokens[1].string == ":" else None)
        comment = next((t.string.lstrip("#").strip() for t in tokens
                        if t.type == tokenize.COMMENT), None)
        rows.append((field, comment))
    return rows


def field_comments(cls=None) -> dict[str, str]:
    """field -> its comment, by the convention above ('' where it has none)."""
    cls = cls or config_lib.TrainConfig
    comments: dict[str, list[str]] = {}
    above: list[str] = []
    current = None  # the field whose comment the next comment lines continue
    for field, comment in _lines(inspect.getsource(cls)):
        if field is not None:
            comments[field] = [comment] if comment else above
            current, above = (field if comment else None), []
        elif comment is None:  # a blank line (or code that is not a field)
            current, above = None, []
        elif current is not None:
            comments[current].append(comment)
        else:
            above.append(comment)
    return {name: " ".join(parts) for name, parts in comments.items()}


def metavar(name: str, kind: type, length: int) -> str:
    """{the,valid,names}; INT, FLOAT, STR; a tuple's items by meaning: C1,C2,C3,C4 or
    D1,D2,D3."""
    if name in CHOICES:
        return "{" + ",".join(CHOICES[name]) + "}"
    if not length:
        return kind.__name__.upper()
    if length not in ITEM_NAMES:
        raise KeyError(f"config field {name}: no item names for a tuple of {length}")
    return ",".join(f"{ITEM_NAMES[length]}{i}" for i in range(1, length + 1))


def help_text(name: str, default, length: int, comment: str) -> str:
    """The comment, the valid names, the item meaning of a tuple, and the default. '%' is
    doubled: argparse formats help with %-formatting."""
    parts = [comment.rstrip(".") if comment else name.replace("_", " ")]
    if name in CHOICES:
        parts.append(f"one of: {', '.join(CHOICES[name])}")
    if name in NAMED:
        label, names = NAMED[name]
        parts.append(f"{label}: {', '.join(names)}")
    if length == 4:
        parts.append("one value per defect class 1-4, comma-separated")
    elif length:
        parts.append(f"{length} comma-separated values")
    shown = ",".join(str(x) for x in default) if length else (default if default != ""
                                                               else '""')
    text = "; ".join(parts) + f" (default {shown!s}, or the preset's)"
    return text.replace("%", "%%")
