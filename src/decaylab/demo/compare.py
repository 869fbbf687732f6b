"""The demo's evidence: per seed, the best-checkpoint loss of λ > 0 minus λ = 0's, on validation and on test."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from decaylab.evaluation.evaluate import evaluate_run
from decaylab.report.findings import paired_rows

# The bar the demo has to clear: the mean paired difference at least this many standard errors below zero.
BAR_SE = 2.0


@dataclass
class Paired:
    """Mean ± SE over seeds of (λ > 0 − λ = 0) on one field, and in how many seeds λ > 0 was lower."""

    field: str
    mean: float | None
    se: float | None
    wins: int
    n: int

    @property
    def ses(self) -> float | None:
        """How many standard errors the mean difference is from zero (negative: λ > 0 is better)."""
        return self.mean / self.se if self.mean is not None and self.se else None

    @property
    def meets_bar(self) -> bool:
        """λ > 0 lower by at least BAR_SE standard errors."""
        return self.ses is not None and self.ses <= -BAR_SE


def paired(decayed: list[dict[str, Any]], baseline: list[dict[str, Any]], field: str) -> Paired:
    """The paired difference decayed − baseline on `field` over the seeds both finished."""
    mean, se, wins, n = paired_rows(decayed, baseline, field)
    return Paired(field, mean, se, wins, n)


def add_test_losses(root: Path, rows: list[dict[str, Any]]) -> None:
    """Evaluate each trial's best checkpoint once on the test split (into its eval.json) and put the loss in its
    row as `test_loss`; the test split chose neither λ nor any checkpoint."""
    for row in rows:
        if row.get("status") == "done":
            row["test_loss"] = float(evaluate_run(root / str(row["run"]), "test")["loss"])


def per_seed(decayed: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per seed: both runs' best val loss (and epoch), test loss, and the two differences."""
    by_seed = {row.get("seed"): row for row in baseline}
    lines = []
    for row in sorted(decayed, key=lambda r: r.get("seed") or 0):
        zero = by_seed.get(row.get("seed"))
        if zero is None:
            continue
        line = {"seed": row.get("seed"), "val_0": zero["best_val_loss"], "val_l": row["best_val_loss"],
                "epoch_0": zero["best_epoch"], "epoch_l": row["best_epoch"],
                "test_0": zero.get("test_loss", math.nan), "test_l": row.get("test_loss", math.nan)}
        line["val_diff"] = line["val_l"] - line["val_0"]
        line["test_diff"] = line["test_l"] - line["test_0"]
        lines.append(line)
    return lines
