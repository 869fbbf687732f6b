"""Terminal output: one rich Console factory, so tables stay readable when stdout is a pipe or a log file."""

from __future__ import annotations

import sys

from rich.console import Console

PIPE_WIDTH = 140  # rich falls back to 80 columns off a TTY, which squeezes every table column to "…"


def console(stderr: bool = False) -> Console:
    """A Console that uses the terminal's width, or a wide fixed width when writing to a pipe or file."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else PIPE_WIDTH)
