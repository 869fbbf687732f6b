"""The training progress bar: rich on a terminal, plain log lines otherwise (pipes, files, --quiet)."""

from __future__ import annotations

import sys
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class StepProgress:
    """Steps done out of the run's total, with the running loss; evaluation lines print above the bar."""

    def __init__(self, total: int, done: int, quiet: bool = False, bar: bool = True):
        """`bar=False`: evaluation lines only (runs side by side show one bar, that of the first)."""
        self.quiet = quiet
        self._bar: Progress | None = None
        if bar and not quiet and sys.stderr.isatty():
            self._bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=Console(stderr=True))
            self._task = self._bar.add_task("train", total=total, completed=done, loss="-")

    def __enter__(self) -> StepProgress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.stop()

    def step(self, loss: float) -> None:
        """One optimizer step done (cheap: rich redraws on its own thread)."""
        if self._bar is not None:
            self._bar.update(self._task, advance=1, loss=f"{loss:.3f}")

    def say(self, message: str) -> None:
        """A log line: above the bar on a terminal, on stderr otherwise, nothing when quiet."""
        if self._bar is not None:
            self._bar.console.print(message, highlight=False, markup=False)
        elif not self.quiet:
            print(message, file=sys.stderr, flush=True)
