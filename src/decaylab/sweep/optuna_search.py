"""Bayesian search: Optuna TPE over log-uniform λ or its timescale τ (plus an explicit λ = 0 trial), pruning on
per-epoch metrics.

The study lives in an Optuna storage so that several processes (`--workers N` here, `--join` elsewhere) share
it: a SQLite file for one machine, any SQLAlchemy URL (PostgreSQL, MySQL) or a journal file for many.
The trial budget is counted in the storage: a worker takes a slot with `study.ask()` (trial numbers are
handed out atomically) and gives it back unrun if other workers already took all `--trials` slots.
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
from decaylab.sweep.points import Point, point_lambda
from decaylab.sweep.selection import higher_is_better, history_value
from decaylab.sweep.trial import StopTrial, TrialContext, TrialJob
from decaylab.sweep.workers import init_worker, threads_per_worker

JOURNAL_PREFIX = "journal:"


def storage_url(given: str | None, root: Path) -> str:
    """The storage as given, or a SQLite file inside the sweep folder (absolute, so workers agree)."""
    return given if given else f"sqlite:///{(root / 'optuna.db').resolve()}"


def open_storage(url: str):
    """An Optuna storage for an SQLAlchemy URL or `journal:PATH`; anything that cannot be opened is a UserError."""
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
        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
    except UserError:
        raise
    except Exception as exc:  # a missing driver, an unreachable server, a bad path: all one line for the user
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise UserError(f"--storage {url}: cannot open it ({exc.__class__.__name__}: {reason})") from None


def _engine_kwargs(url: str) -> dict[str, Any]:
    # Several processes write one SQLite file; wait for the lock rather than failing at once.
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


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
    """The study of this sweep; the process that creates it also enqueues the λ = 0 trial(s), exactly once."""
    import optuna

    storage = storage if storage is not None else open_storage(settings["storage"])
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
        return study
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
    # a τ sweep derives each trial's λ from the base config (an objective sweep has none, and sweeps λ)
    base = ctx.base_config() if settings.get("steps_per_epoch") is not None else None
    budget, ran = settings["trials"], 0
    while True:
        existing = study.get_trials(deepcopy=False)
        # Enqueued trials (λ = 0, continuations of cut-off trials) count as taken slots, but must still be run.
        if sum(_counts(t) for t in existing) >= budget and not any(t.state == TrialState.WAITING for t in existing):
            break
        trial = study.ask()
        ahead = sum(_counts(t) for t in study.get_trials(deepcopy=False) if t.number < trial.number)
        if ahead >= budget:  # another worker took the last slot between our count and our ask
            trial.set_user_attr("over_budget", True)
            study.tell(trial, state=TrialState.FAIL)
            continue
        point = suggest_point(trial, settings, base)
        key = trial.user_attrs.get("continue") or f"t{trial.number:04d}-{point.key}"
        for name, value in (("run", key), ("host", socket.gethostname()), ("pid", os.getpid())):
            trial.set_user_attr(name, value)
        reported = 0

        def monitor(history: list[dict[str, Any]], trial=trial) -> None:
            nonlocal reported
            for step in range(reported + 1, len(history) + 1):
                trial.report(history_value(history[:step], settings["metric"]), step)
            reported = len(history)
            if trial.should_prune():
                raise StopTrial("pruned")

        row = ctx.train(TrialJob(key, point), monitor)
        row["trial_number"] = trial.number
        trial.set_user_attr("row", row)
        value = row["best_val_loss"] if settings["metric"] == "loss" else row.get(settings["metric"])
        if row["status"] == "pruned":
            study.tell(trial, state=TrialState.PRUNED)
        elif row["status"] != "done" or value is None or not math.isfinite(value):
            trial.set_user_attr("diverged", True)
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, value)
        ran += 1
        if settings.get("verbose"):
            print(f"optuna trial {trial.number}: {key} -> {row['status']}"
                  + (f", best val loss {row['best_val_loss']:.4f}" if row["best_val_loss"] is not None else ""),
                  file=sys.stderr, flush=True)
    return ran


def recover_lost_trials(study, say) -> int:
    """Trials left RUNNING by a killed process of this machine: mark them failed and enqueue a continuation."""
    from optuna.trial import Trial, TrialState

    host, lost = socket.gethostname(), 0
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = frozen.user_attrs
        if attrs.get("host") != host or _alive(attrs.get("pid")):
            continue
        Trial(study, frozen._trial_id).set_user_attr("lost", True)
        study.tell(frozen.number, state=TrialState.FAIL)
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
        while study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
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
