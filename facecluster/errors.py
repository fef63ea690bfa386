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
