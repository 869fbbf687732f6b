"""Bayesian search: Optuna TPE over log-uniform λ or its timescale τ (plus an explicit λ = 0 trial), pruning on
per-epoch metrics.

The study lives in an Optuna storage so that several processes (`--workers N` here, `--join` elsewhere) share
it: a SQLite file for one machine, any SQLAlchemy URL (PostgreSQL, MySQL) or a journal file for many.
The trial budget is counted in the storage: a worker takes a slot with `study.ask()` (trial numbers are
handed out atomically) and gives it back unrun if other workers already took all `--trials` slots.
On a database storage each running trial beats a heartbeat, and a trial whose process died is failed and retried
(sweep/heartbeat.py).
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import socket
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from decaylab.config import Config
from decaylab.errors import UserError
from decaylab.runfolder.lock import FolderInUse
from decaylab.sweep.heartbeat import Heartbeat, fail_stale, storage_kwargs
from decaylab.sweep.points import Point, point_lambda
from decaylab.sweep.selection import higher_is_better, history_value
from decaylab.sweep.trial import StopTrial, TrialContext, TrialJob
from decaylab.sweep.workers import init_worker, threads_per_worker

JOURNAL_PREFIX = "journal:"
HEARTBEAT_ATTR = "heartbeat_s"  # the study's user attribute with its heartbeat interval (None: off)


def storage_url(given: str | None, root: Path) -> str:
    """The storage as given, or a SQLite file inside the sweep folder (absolute, so workers agree)."""
    return given if given else f"sqlite:///{(root / 'optuna.db').resolve()}"


def open_storage(url: str, heartbeat: int | None = None):
    """An Optuna storage for an SQLAlchemy URL or `journal:PATH` (a database one with a heartbeat every `heartbeat`
    seconds, if given); anything that cannot be opened is a UserError."""
    import optuna

    _quiet_optuna()
    try:
        if url.startswith(JOURNAL_PREFIX):
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            path = Path(url[len(JOURNAL_PREFIX):]).expanduser()
            if not path.parent.is_dir():
                raise FileNotFoundError(f"folder {path.parent} does not exist")
            return JournalStorage(JournalFileBackend(str(path)))
        if "://" not in url:
            raise UserError(f"--storage {url!r}: expected an SQLAlchemy URL (sqlite:///sweeps/s.db, "
                            "postgresql://user:password@host/db) or journal:PATH")
        if url.startswith("sqlite:///"):
            path = Path(url[len("sqlite:///"):])
            if str(path) not in ("", ":memory:") and not path.parent.is_dir():
                raise FileNotFoundError(f"folder {path.parent} does not exist")
        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url), **storage_kwargs(heartbeat))
    except UserError:
        raise
    except Exception as exc:  # a missing driver, an unreachable server, a bad path: all one line for the user
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        hint = ""
        if isinstance(exc, ImportError) and url.startswith("postgres"):
            hint = ("; install a driver: pip install 'decaylab[postgres]' (psycopg 3) and write the URL "
                    "postgresql+psycopg://user@host:port/database")
        raise UserError(f"--storage {url}: cannot open it ({exc.__class__.__name__}: {reason}){hint}") from None


def _engine_kwargs(url: str) -> dict[str, Any]:
    # Several processes write one SQLite file; wait for the lock rather than failing at once.
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # decaylab beats the heartbeat itself around ask/tell (sweep/heartbeat.py), which this warning does not know
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def make_pruner(name: str, trials: int):
    """`median` (Optuna's MedianPruner after a few finished trials), `halving` (asynchronous SH) or `none`."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=min(5, max(1, trials // 5)), n_warmup_steps=0)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def make_sampler(seed: int | None, trials: int):
    """TPE with fewer random start-up trials than Optuna's 10 when the budget is small."""
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, trials // 3)))


def create_or_load_study(settings: dict[str, Any], storage=None):
    """The study of this sweep; the process that creates it also enqueues the λ = 0 trial(s), exactly once, and
    records its heartbeat interval, which every process then uses (one that beats less often than another expects
    would have its live trials taken for dead)."""
    import optuna

    beat = settings.get("heartbeat")
    storage = storage if storage is not None else open_storage(settings["storage"], beat)
    direction = "maximize" if higher_is_better(settings["metric"]) else "minimize"
    common = {"storage": storage, "study_name": settings["study"],
              "sampler": make_sampler(settings.get("seed"), settings["trials"]),
              "pruner": make_pruner(settings["pruner"], settings["trials"])}
    try:
        # Creation is atomic in the storage, so among processes started together exactly one enqueues.
        study = optuna.create_study(direction=direction, load_if_exists=False, **common)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(**common)
        found = study.direction.name.lower()
        if found != direction:
            raise UserError(f"--storage: study {settings['study']!r} exists there with direction {found}, "
                            f"not {direction} (--metric {settings['metric']})") from None
        recorded = study.user_attrs.get(HEARTBEAT_ATTR, beat)
        if recorded != beat and not settings["storage"].startswith(JOURNAL_PREFIX):
            return optuna.load_study(**{**common, "storage": open_storage(settings["storage"], recorded)})
        return study
    study.set_user_attr(HEARTBEAT_ATTR, beat)
    if settings["zero"]:
        for dropout in settings["dropouts"] or [None]:
            study.enqueue_trial({} if dropout is None else {"dropout": dropout}, user_attrs={"zero": True})
    return study


def _counts(trial) -> bool:
    """Whether a trial uses up one of the `--trials` slots (a failed slot it gave back, or a lost trial, does not)."""
    from optuna.trial import TrialState

    if trial.state == TrialState.FAIL:
        return bool(trial.user_attrs.get("diverged"))
    return True


def suggest_point(trial, settings: dict[str, Any], base: Config | None = None) -> Point:
    """λ (or, in a τ sweep of `base`, τ) log-uniform in [lo, hi] (or the enqueued λ = 0), the mode and the dropout as
    categorical choices."""
    dropouts = settings["dropouts"]
    if dropouts and len(dropouts) > 1:
        dropout = float(trial.suggest_categorical("dropout", dropouts))
    else:
        dropout = float(dropouts[0]) if dropouts else settings["base_dropout"]
    if trial.user_attrs.get("zero"):
        return Point("none", 0.0, dropout)
    modes = settings["modes"]
    mode = trial.suggest_categorical("mode", modes) if len(modes) > 1 else modes[0]
    if settings.get("steps_per_epoch") is not None:  # a τ sweep: τ log-uniform, λ derived as its trial derives it
        tau = trial.suggest_float("tau", settings["lo"], settings["hi"], log=True)
        point = Point(mode, math.nan, dropout, float(f"{tau:.6g}"))
        assert base is not None
        return dataclasses.replace(point, lam=point_lambda(base, point, modes, settings["steps_per_epoch"]))
    lam = trial.suggest_float("lambda", settings["lo"], settings["hi"], log=True)
    return Point(mode, float(f"{lam:.6g}"), dropout)


def optuna_worker(ctx: TrialContext, settings: dict[str, Any], worker: int) -> int:
    """Take trial slots from the shared study until all `trials` are taken; returns how many this worker ran."""
    from optuna.trial import TrialState

    _quiet_optuna()
    settings = {**settings, "seed": settings["seed"] + worker if settings.get("seed") is not None else None}
    study = create_or_load_study(settings)
    beat = study_heartbeat(study)
    # a τ sweep derives each trial's λ from the base config (an objective sweep has none, and sweeps λ)
    base = ctx.base_config() if settings.get("steps_per_epoch") is not None else None
    budget, ran = settings["trials"], 0
    while True:
        fail_stale(study)  # a dead process's trial becomes FAIL and is enqueued again (before we count the slots)
        existing = study.get_trials(deepcopy=False)
        # Enqueued trials (λ = 0, continuations of cut-off trials) count as taken slots, but must still be run.
        if sum(_counts(t) for t in existing) >= budget and not any(t.state == TrialState.WAITING for t in existing):
            break
        trial = study.ask()
        with Heartbeat(study._storage, trial._trial_id, beat):
            ran += _run_trial(ctx, study, trial, settings, base, budget)
    return ran


def study_heartbeat(study) -> int | None:
    """The heartbeat interval of the storage this process opened the study with (the one its grace period is
    measured against); None without a heartbeat (also for a journal storage, which has none)."""
    interval = getattr(study._storage, "get_heartbeat_interval", None)
    return interval() if interval is not None else None


def _run_trial(ctx: TrialContext, study, trial, settings: dict[str, Any], base: Config | None, budget: int) -> int:
    """Train the trial just asked for and tell the study; 1 if it trained, 0 if it gave its slot back or was taken
    for dead meanwhile."""
    import optuna
    from optuna.trial import TrialState

    ahead = sum(_counts(t) for t in study.get_trials(deepcopy=False) if t.number < trial.number)
    if ahead >= budget:  # another worker took the last slot between our count and our ask
        trial.set_user_attr("over_budget", True)
        study.tell(trial, state=TrialState.FAIL)
        return 0
    point = suggest_point(trial, settings, base)
    key = trial.user_attrs.get("continue") or f"t{trial.number:04d}-{point.key}"
    for name, value in (("run", key), ("host", socket.gethostname()), ("pid", os.getpid())):
        trial.set_user_attr(name, value)
    reported = 0

    def monitor(history: list[dict[str, Any]]) -> None:
        nonlocal reported
        try:
            for step in range(reported + 1, len(history) + 1):
                trial.report(history_value(history[:step], settings["metric"]), step)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Another process missed our heartbeats (a stalled machine) and failed this trial; its retry continues
            # the folder, which we leave at this evaluation.
            raise StopTrial("lost") from None
        reported = len(history)
        if trial.should_prune():
            raise StopTrial("pruned")

    row = _train_when_free(ctx, TrialJob(key, point), monitor, trial.user_attrs.get("retry_of") is not None)
    row["trial_number"] = trial.number
    try:
        trial.set_user_attr("row", row)
    except optuna.exceptions.UpdateFinishedTrialError:
        row["status"] = "lost"
    if row["status"] == "lost":
        _say_verbose(settings, f"optuna trial {trial.number}: {key} was taken for dead by another process "
                               "(no heartbeat); left to its retry")
        return 0
    value = row["best_val_loss"] if settings["metric"] == "loss" else row.get(settings["metric"])
    if row["status"] == "pruned":
        study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
    elif row["status"] != "done" or value is None or not math.isfinite(value):
        trial.set_user_attr("diverged", True)
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    else:
        study.tell(trial, value, skip_if_finished=True)
    _say_verbose(settings, f"optuna trial {trial.number}: {key} -> {row['status']}"
                 + (f", best val loss {row['best_val_loss']:.4f}" if row["best_val_loss"] is not None else ""))
    return 1


def _train_when_free(ctx: TrialContext, job: TrialJob, monitor, retry: bool) -> dict[str, Any]:
    """ctx.train(job); a retry whose folder is still held (its first process, taken for dead, has not yet noticed)
    waits for it, up to a minute."""
    deadline = time.monotonic() + 60.0
    while True:
        try:
            return ctx.train(job, monitor)
        except FolderInUse:
            if not retry or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def _say_verbose(settings: dict[str, Any], message: str) -> None:
    if settings.get("verbose"):
        print(message, file=sys.stderr, flush=True)


def recover_lost_trials(study, say) -> int:
    """Trials left RUNNING by a killed process of this machine: mark them failed and enqueue a continuation."""
    import optuna
    from optuna.trial import Trial, TrialState

    host, lost = socket.gethostname(), 0
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = frozen.user_attrs
        if attrs.get("host") != host or _alive(attrs.get("pid")):
            continue
        try:
            Trial(study, frozen._trial_id).set_user_attr("lost", True)
            study.tell(frozen.number, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process found it stale (no heartbeat) first, and enqueued its retry
        keep = {k: v for k, v in attrs.items() if k == "zero"}
        study.enqueue_trial(dict(frozen.params), user_attrs={**keep, "continue": attrs.get("run")})
        say(f"optuna trial {frozen.number} ({attrs.get('run')}) was cut off; it will continue from its checkpoint")
        lost += 1
    return lost


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_optuna(ctx: TrialContext, settings: dict[str, Any], workers: int, say, leader: bool,
               resume: bool, verbose: bool = False, backend: Any = None) -> list[dict[str, Any]]:
    """Run this process's workers on the shared study; the leader then waits for trials of other processes.

    `backend` (a sweep/ray_backend.RayBackend) runs the workers as Ray tasks instead of processes of this machine."""
    from optuna.trial import TrialState

    _quiet_optuna()
    study = create_or_load_study(settings)
    if leader and resume:
        recover_lost_trials(study, say)
    settings = {**settings, "verbose": verbose}
    if backend is not None:
        backend.optuna(ctx, settings, workers)
    elif workers <= 1:
        optuna_worker(ctx, settings, 0)
    else:
        threads = threads_per_worker(workers, ctx.threads)
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=init_worker, initargs=(threads,)) as pool:
            for future in [pool.submit(optuna_worker, ctx, settings, i) for i in range(workers)]:
                future.result()
    if leader:
        announced = False
        while True:
            fail_stale(study)  # a trial whose process died (no heartbeat) is failed and enqueued again
            if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                optuna_worker(ctx, settings, 0)  # a retry, or a slot another process gave up: run it here
                continue
            if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                break
            if not announced:
                say("waiting for trials that other processes are still running")
                announced = True
            time.sleep(2.0)
    return study_rows(study)


def study_rows(study) -> list[dict[str, Any]]:
    """trials.jsonl rows from the study (each trial stored its row), in trial-number order."""
    rows = []
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        row = trial.user_attrs.get("row")
        if row is not None and not trial.user_attrs.get("lost"):
            rows.append(row)
    return rows
