"""The vectorized trial runner: the jobs of a grid, CV fold or halving rung trained as stacked replicas.

A drop-in `TrialRunner` (see `workers.py`): jobs that train on the same data from the same step (one fold, one
rung; seed repeats share the data order) form one stack of at most `max_replicas` replicas, trained by
`ReplicaGroups` (on a CPU, as stacks side by side, one per core; `StackedTrainer` each) into the usual run
folders, so rows, resumes, the report and the final model are the same as with the sequential runner.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from decaylab.runfolder.layout import RunPaths
from decaylab.sweep.folds import fold_splits
from decaylab.sweep.points import trial_config
from decaylab.sweep.shared import load_shared
from decaylab.sweep.store import SweepStore
from decaylab.sweep.trial import TrialContext, TrialJob, checkpoint_step, checkpointed_history, trial_row
from decaylab.sweep.workers import OnResult, TrialRunner
from decaylab.training.replica_groups import ReplicaGroups

STRATEGIES = ("grid", "cv", "halving")  # the strategies whose points are known before training starts


def stacks(ctx: TrialContext, jobs: Sequence[TrialJob], max_replicas: int | None) -> list[list[TrialJob]]:
    """Jobs grouped by (fold, checkpoint step), in job order, each group cut into stacks of `max_replicas`."""
    store = SweepStore(Path(ctx.root))
    groups: dict[tuple[int | None, int], list[TrialJob]] = {}
    for job in jobs:
        groups.setdefault((job.fold, checkpoint_step(RunPaths(store.run_dir(job.key)))), []).append(job)
    size = max_replicas or max(1, len(jobs))
    return [group[i:i + size] for group in groups.values() for i in range(0, len(group), size)]


def vectorized_runner(max_replicas: int | None = None, quiet: bool = True) -> TrialRunner:
    """A runner that trains up to `max_replicas` jobs at once (all of a group when None)."""

    def run(ctx: TrialContext, jobs: Sequence[TrialJob], workers: int = 1,
            on_result: OnResult | None = None) -> list[dict[str, Any]]:
        store = SweepStore(Path(ctx.root))
        base = ctx.base_config()
        shared = load_shared(store.shared, base, ctx.fingerprint)
        rows: dict[str, dict[str, Any]] = {}
        for stack in stacks(ctx, jobs, max_replicas):
            splits = shared.splits
            fold = stack[0].fold
            if fold is not None:
                assert ctx.folds is not None
                splits = fold_splits(splits, ctx.folds[fold], fold, len(ctx.folds))
            trainer = ReplicaGroups([trial_config(base, job.point, ctx.modes, job.seed) for job in stack],
                                     [store.run_dir(job.key) for job in stack], splits=splits,
                                     tokenizer=shared.tokenizer,
                                     init_weights=[shared.init_for(job.seed) for job in stack],
                                     budgets=[job.budget for job in stack], names=[job.key for job in stack],
                                     quiet=quiet)
            label = f"{stack[0].key}+{len(stack) - 1}@{trainer.active[0].progress['step'] if trainer.active else 0}"
            started = time.perf_counter()
            replicas = trainer.fit()
            stack_wall_s = time.perf_counter() - started
            for job, replica in zip(stack, replicas, strict=True):
                run_dir = store.run_dir(job.key)
                row = trial_row(job, checkpointed_history(RunPaths(run_dir)), replica.status or "done",
                                run_dir.relative_to(store.root))
                row["stack"], row["stack_wall_s"] = label, stack_wall_s
                rows[job.key] = row
                if on_result is not None:
                    on_result(job, row)
        return [rows[job.key] for job in jobs]

    return run
