"""The HTML report of a run or a sweep: U-curve, learning curves, weight norms, samples, tables, audit."""

from __future__ import annotations

from pathlib import Path


def write_report(path: Path, samples: int = 5) -> Path:
    """Write `report.html` (self-contained) and `plots/*.png` inside a run or sweep folder; returns the HTML path."""
    from decaylab.report.render import write_report as _write

    return _write(Path(path), samples=samples)


__all__ = ["write_report"]
