"""A rich progress bar fed by the library's ``progress(stage, done, total)`` callback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..pipeline import Progress as ProgressCallback


@contextmanager
def stage_progress() -> Iterator[ProgressCallback]:
    """Yield a callback that shows one bar per stage on stderr (hidden when not a terminal)."""
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, disable=not console.is_terminal,
    ) as bars:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:  # from ``done``, not 0: a resumed stage's first jump is no speed
                tasks[stage] = bars.add_task(stage, total=total, completed=done)
            bars.update(tasks[stage], completed=done)

        yield update
