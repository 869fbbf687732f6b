"""Successive halving over the grid: train all for r epochs, keep the best 1/η, give the survivors η× the budget.

Every trial trains with the schedule of the full run and is merely stopped at its rung's budget; a survivor
continues from its own `checkpoints/last` (the trainer's resume), so the last rung's run is exactly the full
run of that point and nothing a rung computed is thrown away.
"""

from __future__ import annotations

import math
from typing import Any

from decaylab.sweep.grid import Say, run_jobs
from decaylab.sweep.points import Point
from decaylab.sweep.selection import METRIC_FIELDS, compute_seconds, higher_is_better
from decaylab.sweep.store import TrialBook
from decaylab.sweep.trial import TrialContext, TrialJob
from decaylab.sweep.workers import TrialRunner, run_trials


def halving_budgets(n: int, epochs: int, eta: int, min_epochs: int | None = None) -> list[int]:
    """Epoch budget per rung: r, rη, rη², … below the full epochs, then the full epochs (r = epochs/η^⌊log_η n⌋)."""
    if n <= 1:
        return [epochs]
    halvings = int(math.floor(math.log(n) / math.log(eta) + 1e-9))
    budget = min_epochs or max(1, round(epochs / eta**halvings))
    budgets = []
    while budget < epochs and len(budgets) < halvings:
        budgets.append(budget)
        budget *= eta
    return budgets + [epochs]


def keep_count(n: int, eta: int) -> int:
    """How many of n trials go on to the next rung: ⌊n/η⌋, at least one."""
    return max(1, n // eta)


def rank(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Rows best first by the metric; unfinished or diverged rows last; ties keep the plan order."""
    sign = -1.0 if higher_is_better(metric) else 1.0

    def score(row: dict[str, Any]) -> float:
        value = row.get(METRIC_FIELDS[metric])
        ok = row.get("status") == "done" and isinstance(value, (int, float)) and math.isfinite(value)
        return sign * value if ok else math.inf

    return [row for _, row in sorted(enumerate(rows), key=lambda item: (score(item[1]), item[0]))]


def run_halving(ctx: TrialContext, points: list[Point], book: TrialBook, workers: int, say: Say, epochs: int,
                eta: int, metric: str, min_epochs: int | None = None,
                runner: TrialRunner = run_trials) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run every rung; returns one row per point (its furthest rung) and what the rungs did."""
    budgets = halving_budgets(len(points), epochs, eta, min_epochs)
    alive = list(points)
    furthest: dict[str, dict[str, Any]] = {}
    rungs, every_row = [], []
    for index, budget in enumerate(budgets):
        say(f"rung {index}: {len(alive)} trial(s) to epoch {budget}")
        jobs = [TrialJob(point.key, point, budget=float(budget), rung=index) for point in alive]
        rows = run_jobs(ctx, jobs, book, workers, say, runner)
        every_row.extend(rows)
        for row in rows:
            furthest[row["trial"]] = row
        last = index == len(budgets) - 1
        keep = rows if last else rank(rows, metric)[:keep_count(len(rows), eta)]
        kept = {row["trial"] for row in keep}
        rungs.append({"budget": budget, "trials": [row["trial"] for row in rows],
                      "survivors": [row["trial"] for row in rows if row["trial"] in kept] if not last else []})
        alive = [point for point in alive if point.key in kept]
    finalists = {key for key in rungs[-1]["trials"]}
    table_rows = []
    for point in points:
        row = dict(furthest[point.key])
        if point.key not in finalists and row["status"] == "done":
            row["status"] = "eliminated"  # for the table only: its value is from a shorter budget
        table_rows.append(row)
    trained = sum(row.get("epochs") or 0 for row in furthest.values())
    full = len(points) * epochs
    seconds = compute_seconds(every_row)
    per_epoch = seconds / trained if trained else 0.0
    info = {"eta": eta, "budgets": budgets, "rungs": rungs, "epochs_trained": trained, "epochs_full_grid": full,
            "compute_fraction": trained / full if full else None,
            "estimated_full_grid_s": per_epoch * full, "estimated_saved_s": per_epoch * (full - trained)}
    return table_rows, info
