"""Errors a user can act on: bad input, named by file, row and column.

The CLI turns :class:`InputError` into one line on stderr and exit status 2; library
callers catch it like any other exception.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


@dataclass
class InputError(ValueError):
    """Bad input, located as precisely as we can. A ``ValueError``, so code that catches
    scikit-learn's bad-input errors (an estimator fitted on NaN, empty or 1-D data) catches it.

    Parameters
    ----------
    file : path of the offending file (or a description such as ``"<embeddings>"``)
    message : what was expected and what came
    row : 1-based data row (the header is not counted), if the problem is in one row
    column : column name (manifest) or vector dimension index (embeddings)
    """

    file: str | Path
    message: str
    row: int | None = None
    column: str | int | None = None

    def __str__(self) -> str:
        where = [str(self.file)]
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            col = self.column
            where.append(f"column {col!r}" if isinstance(col, str) else f"column {col}")
        return f"{', '.join(where)}: {self.message}"


def not_utf8(path: str | Path, what: str = "file") -> InputError:
    """The error for a text file that is not UTF-8, read from the file itself: the byte of
    the first invalid sequence and its row (1-based data row, the header line not counted;
    a quoted field spanning lines is counted by lines). A parser's own exception gives the
    offset within the chunk it was decoding, not within the file."""
    data = Path(path).read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        row = len(re.findall(rb"\r\n|\r|\n", data[:exc.start]))  # any line ending, CR-only too
        where = "in the header" if row == 0 else None
        message = f"not a UTF-8 text {what} ({exc.reason} at byte {exc.start}{', ' + where if where else ''})"
        return InputError(path, message, row=row or None)
    return InputError(path, f"not a UTF-8 text {what}")


# --------------------------------------------------------------------------- setting checks
# What a setting must be, said once: a value taken silently otherwise (bool("no") is True,
# int(2.5) is 2, and True is an int to Python) changes a run without a word.


def is_whole(value) -> bool:
    """A whole number (Python or numpy integer), not a boolean."""
    import numpy as np

    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real(value) -> bool:
    """A real number (Python or numpy, integer or float; NaN included), not a boolean."""
    import numpy as np

    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def is_flag(value) -> bool:
    """True or False (Python or numpy), not a text or a number that reads as one."""
    import numpy as np

    return isinstance(value, (bool, np.bool_))


def is_centre(value) -> bool:
    """A ``centre`` setting: "auto", True or False."""
    return value == "auto" if isinstance(value, str) else is_flag(value)
