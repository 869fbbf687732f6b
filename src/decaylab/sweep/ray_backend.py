"""The Ray backend of sweeps (`--backend ray [--address ADDR]`): trials as Ray tasks across a cluster's nodes.

Grid, CV folds, `--seeds` repeats and every halving rung hand their independent jobs to `RayBackend.runner` (the
`TrialRunner` seam, sweep/workers.py); each job is one Ray task that requests the trial's CPUs (`train.threads`,
else 1; torch gets that many threads) and, when the trial trains on a GPU, one GPU. The task runs the ordinary
`ctx.train(job)`, so it writes the ordinary run folder under the sweep folder (every node must see that folder at
the same path: a shared filesystem) and the driver records each row in trials.jsonl as it arrives. A task whose
worker process or node dies is retried by Ray (`TASK_RETRIES` times): the retry continues the trial from its run
folder's `checkpoints/last`, which ends with exactly the metrics of an undisturbed run. Optuna strategies run
`--workers` Ray tasks that each take trials from the shared study (sweep/optuna_search.py).

`ray` is imported here only, and only when a sweep asks for it, so decaylab works without it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from decaylab.errors import UserError
from decaylab.sweep.trial import TrialContext, TrialJob
from decaylab.sweep.workers import OnResult, init_worker

BACKENDS = ("local", "ray")
# Ray retries a task whose worker process (or node) died this many times; an exception a trial raises is not
# retried (it is the trial's answer, e.g. bad input), only system failures are.
TASK_RETRIES = 3
# A local instance's object store: trials pass rows and small contexts only (Ray's minimum is 75 MB).
LOCAL_OBJECT_STORE = 128 * 1024 * 1024
CONNECT_TIMEOUT_S = 10.0


def check_backend(backend: str, address: str | None) -> None:
    """`--backend` is local or ray; `--address` goes with ray only."""
    if backend not in BACKENDS:
        raise UserError(f"--backend: must be {' or '.join(BACKENDS)} (got {backend!r})")
    if address is not None and backend != "ray":
        raise UserError("--address: names a Ray cluster to run the trials on; it goes with --backend ray")


def import_ray() -> Any:
    """The ray module, or a UserError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError("--backend ray: Ray is not installed; install it with `pip install decaylab[ray]`") from None
    return ray


def _check_reachable(address: str) -> None:
    """A HOST:PORT that nothing listens on fails in seconds here; ray.init would retry for minutes."""
    host, sep, port = address.rpartition(":")
    if address.startswith("ray://") or not sep:
        return  # Ray Client URLs and names Ray resolves itself are left to ray.init
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except (OSError, ValueError) as exc:
        raise UserError(f"--address {address}: no Ray cluster answers there ({exc.__class__.__name__}: {exc}); "
                        "start one with `ray start --head --port PORT` or leave --address out to start a local "
                        "Ray instance") from None


@dataclass
class RayBackend:
    """A connection to a Ray cluster (or a local instance it started) that runs a sweep's trials as tasks."""

    address: str | None = None
    workers: int | None = None  # at most this many trials at once (None: as many as the cluster's CPUs/GPUs fit)
    quiet: bool = True
    _ray: Any = field(default=None, repr=False)
    _owned: bool = field(default=False, repr=False)

    def check(self) -> RayBackend:
        """Fail now, before the sweep writes anything, when Ray is missing or nothing answers at the address."""
        self._ray = import_ray()
        if self.address not in (None, "auto"):
            _check_reachable(self.address)
        return self

    def __enter__(self) -> RayBackend:
        ray = self._ray if self._ray is not None else self.check()._ray
        if ray.is_initialized():  # a user's own ray.init() in this process: use it, leave it running
            return self
        try:
            if self.address is None:  # "local": a fresh instance, not whatever cluster this machine last started
                ray.init(address="local", include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE,
                         log_to_driver=not self.quiet, logging_level=logging.WARNING)
            else:
                ray.init(address=self.address, log_to_driver=not self.quiet, logging_level=logging.WARNING)
        except Exception as exc:  # no cluster, a refused token, a version mismatch: one line, and what it said
            where = self.address or "a local instance"
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise UserError(f"--address {where}: cannot connect to Ray ({reason})") from None
        self._owned = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._owned:  # a local instance stops here; a cluster keeps running, this driver just leaves it
            self._ray.shutdown()
            self._owned = False

    def gpus_per_trial(self, ctx: TrialContext) -> int:
        """1 when the trial trains on a GPU (train.device cuda, or auto on a cluster that has GPUs), else 0."""
        train = ctx.base.get("train") if isinstance(ctx.base.get("train"), dict) else None
        device = (train or {}).get("device", "cpu")
        if device == "cuda":
            return 1
        return int(device == "auto" and self._ray.cluster_resources().get("GPU", 0) >= 1)

    def _task(self, function: Any, ctx: TrialContext, retries: int) -> Any:
        cpus = ctx.threads or 1
        return self._ray.remote(function).options(num_cpus=cpus, num_gpus=self.gpus_per_trial(ctx),
                                                  max_retries=retries, retry_exceptions=False), cpus

    def runner(self, ctx: TrialContext, jobs: Sequence[TrialJob], workers: int,
               on_result: OnResult | None = None) -> list[dict[str, Any]]:
        """A TrialRunner: every job a Ray task, at most `self.workers` in flight; rows in job order."""
        ray = self._ray
        task, cpus = self._task(run_job, ctx, TASK_RETRIES)
        cwd = os.getcwd()
        limit = self.workers or len(jobs)
        queue = list(enumerate(jobs))
        pending: dict[Any, int] = {}
        rows: dict[int, dict[str, Any]] = {}
        try:
            while queue or pending:
                while queue and len(pending) < limit:
                    index, job = queue.pop(0)
                    pending[task.remote(ctx, job, cpus, cwd)] = index
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    index = pending.pop(ref)
                    rows[index] = self._result(ref, jobs[index], ctx)
                    if on_result is not None:
                        on_result(jobs[index], rows[index])
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return [rows[i] for i in range(len(jobs))]

    def _result(self, ref: Any, job: TrialJob | None, ctx: TrialContext) -> Any:
        """ray.get, with a trial's own exception raised as itself and a worker lost for good as one line."""
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # the trial raised: its own exception (UserError, …) goes on
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise
        except ray.exceptions.RayError as exc:  # worker or node lost more often than the retries allow
            what = f"trial {job.key}" if job is not None else "an Optuna worker"
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise UserError(f"--backend ray: {what} was lost ({exc.__class__.__name__}: {reason}); the trials that "
                            f"finished are kept: continue with `decaylab sweep --resume {ctx.root}`") from None

    def optuna(self, ctx: TrialContext, settings: dict[str, Any], workers: int) -> None:
        """`workers` Ray tasks that each take trials from the shared study until it has its `--trials`."""
        # Not retried: a worker that died leaves its trial RUNNING in the study, which only the leader's
        # `--resume` gives back (recover_lost_trials); a blind retry would leave the leader waiting for it.
        task, cpus = self._task(run_optuna_worker, ctx, 0)
        if self.workers is None:
            capacity = int(self._ray.cluster_resources().get("CPU", 1) // cpus)
            workers = max(1, min(capacity, settings["trials"]))
        refs = [task.remote(ctx, settings, index, cpus, os.getcwd()) for index in range(workers)]
        for ref in refs:
            self._result(ref, None, ctx)


def _enter(cwd: str, threads: int) -> None:
    """A Ray worker takes the driver's working folder (a relative `data.name`, an `--objective FILE.py:fn`) where
    its node has it, and the trial's CPU request as its torch threads. (Ray itself puts the driver's working
    folder on the workers' sys.path, so `--objective module:fn` imports there as in the driver.)"""
    if os.path.isdir(cwd):
        os.chdir(cwd)
    init_worker(threads)


def run_job(ctx: TrialContext, job: TrialJob, threads: int, cwd: str) -> dict[str, Any]:
    """The Ray task of one trial: train (or continue) it into its run folder and return its row."""
    _enter(cwd, threads)
    return ctx.train(job)


def run_optuna_worker(ctx: TrialContext, settings: dict[str, Any], index: int, threads: int, cwd: str) -> int:
    """The Ray task of one Optuna worker (sweep/optuna_search.optuna_worker); returns how many trials it ran."""
    from decaylab.sweep.optuna_search import optuna_worker

    _enter(cwd, threads)
    return optuna_worker(ctx, settings, index)
