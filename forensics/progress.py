"""A progress bar on a terminal, silence when piped (or when not asked for)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator


class _Quiet:
    def step(self, description: str) -> None:
        pass


class _Bar:
    def __init__(self, progress, task) -> None:
        self.progress, self.task, self.started = progress, task, False

    def step(self, description: str) -> None:
        """Start the next step: the previous one is done."""
        self.progress.update(self.task, advance=1 if self.started else 0, description=description)
        self.started = True


@contextmanager
def steps(total: int, enabled: bool) -> Iterator[_Quiet | _Bar]:
    if not enabled or not sys.stderr.isatty():
        yield _Quiet()
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as p:
        yield _Bar(p, p.add_task("starting", total=total))
