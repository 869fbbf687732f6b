"""Grid strategy: every point trained on the training split for the full epochs, chosen on validation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from decaylab.sweep.points import Point
from decaylab.sweep.store import TrialBook
from decaylab.sweep.trial import FINISHED, TrialContext, TrialJob
from decaylab.sweep.workers import TrialRunner, run_trials

Say = Callable[[str], None]


def describe(row: dict[str, Any]) -> str:
    """One progress line for a finished trial."""
    where = f" fold {row['fold'] + 1}" if row.get("fold") is not None else ""
    where += f" seed {row['seed']}" if row.get("seed") is not None else ""
    rung = f" rung {row['rung']}" if row.get("rung") is not None else ""
    if row.get("best_val_loss") is None:
        return f"{row['trial']}{where}{rung}: {row['status']}"
    return (f"{row['trial']}{where}{rung}: best val loss {row['best_val_loss']:.4f} at epoch {row['best_epoch']:g} "
            f"of {row['epochs']:g} ({row['status']}, {row['wall_s']:.0f} s)")


def run_jobs(ctx: TrialContext, jobs: Sequence[TrialJob], book: TrialBook, workers: int, say: Say,
             runner: TrialRunner = run_trials) -> list[dict[str, Any]]:
    """Run the jobs that have no finished row yet (a resumed sweep recomputes nothing) and return all rows."""
    book.plan([job.key for job in jobs])
    todo = [job for job in jobs if (book.get(job.key, job.rung) or {}).get("status") not in FINISHED]
    if len(todo) < len(jobs):
        say(f"{len(jobs) - len(todo)} of {len(jobs)} trials already finished; running {len(todo)}")

    def on_result(job: TrialJob, row: dict[str, Any]) -> None:
        book.record(row)
        say(describe(row))

    runner(ctx, todo, workers, on_result)
    return [book.get(job.key, job.rung) for job in jobs]


def seed_keys(seeds: list[int] | None) -> list[tuple[int | None, str]]:
    """(seed, trial-name suffix) per repeat: one unnamed repeat with the base seed when `seeds` is None."""
    return [(None, "")] if seeds is None else [(seed, f"-seed{seed}") for seed in seeds]


def run_grid(ctx: TrialContext, points: list[Point], book: TrialBook, workers: int, say: Say,
             runner: TrialRunner = run_trials, seeds: list[int] | None = None) -> list[dict[str, Any]]:
    """Train every point (once per seed) on the training split; rows in grid order."""
    jobs = [TrialJob(point.key + suffix, point, seed=seed) for point in points for seed, suffix in seed_keys(seeds)]
    return run_jobs(ctx, jobs, book, workers, say, runner)
