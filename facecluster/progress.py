"""Progress reporting without printing from the library.

Library functions take a :class:`Progress` and call ``with progress.task(name, total) as
advance: advance(n)``. The default does nothing; the CLI passes :class:`RichProgress`, which
draws bars on stderr so stdout stays clean for the summary.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator


class Progress:
    """Interface: one context manager per step."""

    @contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
        yield lambda n=1: None


class NullProgress(Progress):
    """Reports nothing (library default)."""


class RichProgress(Progress):
    """rich progress bars on a console (the CLI gives it a stderr console)."""

    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True)

    @contextmanager
    def task(self, description: str, total: int | None = None):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as _Bar

        if total is None:  # unknown length: a spinner and the elapsed time
            columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        else:
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       TimeRemainingColumn())
        with _Bar(*columns, console=self.console, transient=False) as bar:
            tid = bar.add_task(description, total=total)
            try:
                yield lambda n=1: bar.advance(tid, n)
            except BaseException:
                bar.remove_task(tid)  # a stage that failed leaves no bar: its error is the one line
                raise
            if total is not None:
                bar.update(tid, completed=total)
