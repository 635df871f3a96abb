"""A progress bar for the long steps outside Lightning's loops (answering prompts, the judge):
a count, the elapsed time and an ETA, in the style of the training bar."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


@contextmanager
def progress(total: int, description: str, stderr: bool = False) -> Iterator[Callable[[int], None]]:
    """A bar of ``total`` items, shown while the block runs (on stderr with ``stderr``, for a
    command whose stdout is its output); the block calls the function it gets with the number
    of items each piece of work finished (a batch: its prompts)."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("•"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=stderr)) as bar:
        task = bar.add_task(description, total=total)
        yield lambda done: bar.advance(task, done)
