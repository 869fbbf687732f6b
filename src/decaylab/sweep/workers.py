"""Run a list of trial jobs in this process or in N worker processes on this machine.

`run_trials` is the seam of the grid-shaped strategies (grid, CV folds, each halving rung): they hand it a
list of independent jobs and get one trials.jsonl row per job back, in job order. A vectorized engine that
trains K points at once as one stacked model can replace it (the `runner=` argument of `sweep`) without the
strategies changing. A replacement must, per job: train `trial_config(ctx.base_config(), job.point, ctx.modes)`
from the shared tokenizer and initial weights (`shared.load_shared`), on the job's fold if any, stopping at
`job.budget` epochs if set; write the normal run folder `SweepStore(ctx.root).run_dir(job.key)` (so a resume or
a halving rung can continue it); and return `trial.trial_row(...)`, calling `on_result` as each job finishes.
`sweep/ray_backend.RayBackend.runner` is such a replacement that runs each job as a Ray task on a cluster.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Protocol

from decaylab.sweep.trial import TrialContext, TrialJob

OnResult = Callable[[TrialJob, dict[str, Any]], None]


class TrialRunner(Protocol):
    """Trains `jobs` and returns their rows in job order, calling `on_result` as each one finishes."""

    def __call__(self, ctx: TrialContext, jobs: Sequence[TrialJob], workers: int,
                 on_result: OnResult | None = None) -> list[dict[str, Any]]: ...


def threads_per_worker(workers: int, configured: int | None) -> int:
    """The config's train.threads if set, else the machine's cores split evenly (at least one each)."""
    if configured:
        return configured
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def init_worker(threads: int) -> None:
    """Runs first in every worker process: a share of the cores, so N workers do not oversubscribe them."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already fixed in this process; harmless
        pass


def run_trials(ctx: TrialContext, jobs: Sequence[TrialJob], workers: int = 1,
               on_result: OnResult | None = None) -> list[dict[str, Any]]:
    """Train every job (sequentially here, or in `workers` spawned processes) and return rows in job order."""
    rows: dict[int, dict[str, Any]] = {}
    if workers <= 1 or len(jobs) <= 1:
        for index, job in enumerate(jobs):
            rows[index] = ctx.train(job)
            if on_result is not None:
                on_result(job, rows[index])
        return [rows[i] for i in range(len(jobs))]
    threads = threads_per_worker(workers, ctx.threads)
    # spawn, not fork: torch's thread pools and an already-initialised CUDA context do not survive a fork.
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn"),
                             initializer=init_worker, initargs=(threads,)) as pool:
        pending: dict[Future, int] = {pool.submit(ctx.train, job): i for i, job in enumerate(jobs)}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    index = pending.pop(future)
                    rows[index] = future.result()
                    if on_result is not None:
                        on_result(jobs[index], rows[index])
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return [rows[i] for i in range(len(jobs))]
