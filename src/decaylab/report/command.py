"""`decaylab report PATH`: the HTML report of a run or sweep folder (heavy imports happen inside the command)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def report(
    path: Annotated[Path, typer.Argument(help="A run folder (config.yaml) or a sweep folder (sweep.yaml).")],
    samples: Annotated[int, typer.Option(help="How many validation sources to translate in the samples.")] = 5,
    screenshot: Annotated[Path | None, typer.Option(help="Also save a full-page PNG of the report as headless "
                                                    "Chromium renders it (needs chromium + chromedriver).")] = None,
) -> None:
    """Write PATH/report.html (self-contained: plots embedded, no network) and PATH/plots/*.png."""
    import time

    from decaylab.errors import UserError
    from decaylab.report import write_report

    if samples < 0:
        raise UserError(f"--samples: must be ≥ 0 (got {samples})")
    if screenshot is not None:  # checked before the report is built, so a bad path costs nothing
        from decaylab.runfolder.lock import folder_problem

        if screenshot.is_dir():
            raise UserError(f"--screenshot {screenshot}: is a folder; give the PNG file to write")
        problem = folder_problem(screenshot.parent)
        if problem is not None:
            raise UserError(f"--screenshot {screenshot}: cannot be written there ({problem})")
    started = time.perf_counter()
    target = write_report(path, samples=samples)
    typer.echo(f"wrote {target} and {target.parent / 'plots'}/*.png in {time.perf_counter() - started:.1f} s")
    if screenshot is not None:
        from decaylab.files import atomic_write
        from decaylab.report.browser import BrowserUnavailable, capture

        try:
            shot = capture(target)
        except BrowserUnavailable as exc:
            raise UserError(f"--screenshot: {exc}") from None
        atomic_write(screenshot, lambda tmp: tmp.write_bytes(shot.png))
        problems = f"; {len(shot.errors)} console error(s): {shot.errors[0]}" if shot.errors else ""
        typer.echo(f"wrote {screenshot} ({shot.width}x{shot.height} px){problems}")
