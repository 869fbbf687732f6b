"""k-fold cross-validation: every point trained on k−1 folds of the training split and scored on the k-th."""

from __future__ import annotations

from typing import Any

from decaylab.sweep.grid import Say, run_jobs, seed_keys
from decaylab.sweep.points import Point
from decaylab.sweep.store import TrialBook
from decaylab.sweep.trial import TrialContext, TrialJob
from decaylab.sweep.workers import TrialRunner, run_trials


def cv_jobs(points: list[Point], folds: int, seeds: list[int] | None = None) -> list[TrialJob]:
    """One job per (point, seed, fold), the folds of a point next to each other."""
    return [TrialJob(f"{point.key}{suffix}-fold{k + 1}", point, fold=k, seed=seed)
            for point in points for seed, suffix in seed_keys(seeds) for k in range(folds)]


def run_cv(ctx: TrialContext, points: list[Point], book: TrialBook, workers: int, say: Say,
           runner: TrialRunner = run_trials, seeds: list[int] | None = None) -> list[dict[str, Any]]:
    """Train every (point, seed, fold); the table's mean and standard error come from these rows."""
    assert ctx.folds is not None
    return run_jobs(ctx, cv_jobs(points, len(ctx.folds), seeds), book, workers, say, runner)
