"""`sweep()`: check everything, set up the folder, run the strategy, choose, train and test the final model."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from decaylab.config import Config, apply_overrides, build_config, config_to_dict, load_config
from decaylab.errors import UserError, WriteError
from decaylab.regularization.rules import DECAY_MODES
from decaylab.runfolder.lock import LOCK_FILE, FolderLock, check_free, folder_problem
from decaylab.sweep.points import Point, check_points, grid_points, with_lambdas
from decaylab.sweep.ray_backend import RayBackend, check_backend
from decaylab.sweep.selection import build_table, choose, compute_seconds
from decaylab.sweep.spec import SweepSpec, build_spec
from decaylab.sweep.store import RECORD_VERSION, SweepClock, SweepStore, TrialBook
from decaylab.sweep.trial import TrialContext
from decaylab.sweep.workers import TrialRunner, run_trials

DEFAULT_BLEU_EXAMPLES = 200


@dataclass
class SweepResult:
    """What a sweep found: the per-point table, the chosen row, the final model's test metrics."""

    path: Path
    table: list[dict[str, Any]]
    best: dict[str, Any]
    final: dict[str, Any] | None
    trials: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def _resolve_base(config: Config | str | Path | None, overrides: Sequence[str],
                  stored: dict[str, Any] | None = None) -> Config:
    """A Config object as is (plus overrides), a YAML path loaded, or the stored base with overrides on top."""
    if isinstance(config, Config):
        return build_config(apply_overrides(config_to_dict(config), list(overrides))) if overrides else config
    if config is not None:
        return load_config(Path(config), list(overrides))
    if stored is not None:
        return build_config(apply_overrides(stored, list(overrides)), origin="sweep.yaml + overrides")
    return load_config(None, list(overrides))


def _default_mode(base: Config) -> str:
    """The config's own decay mode when it has one; decoupled otherwise (what Adam-family optimizers want)."""
    mode = base.regularization.mode
    return mode if mode in DECAY_MODES else "decoupled"


def _spec_args(spec: SweepSpec) -> dict[str, Any]:
    """build_spec arguments that reproduce `spec` (to overlay the options given on a resume)."""
    args: dict[str, Any] = {"strategy": spec.strategy, "modes": spec.modes, "dropouts": spec.dropouts,
                            "rule": spec.rule, "metric": spec.metric, "no_zero": not spec.zero}
    if spec.taus is not None:
        args["taus"] = spec.taus
    else:
        args["lambdas"] = spec.lambdas
    if spec.strategy == "cv":
        args["folds"] = spec.folds
    if spec.seeds is not None:
        args["seeds"] = spec.seeds
    if spec.strategy == "optuna":
        args.update(trials=spec.trials, pruner=spec.pruner, storage=spec.storage, study=spec.study)
    if spec.strategy == "halving":
        args.update(eta=spec.eta, min_epochs=spec.min_epochs)
    return args


def _with_bleu(base: Config, metric: str, say: Callable[[str], None]) -> Config:
    """BLEU/chrF selection needs them computed at each evaluation."""
    if metric == "loss" or base.train.bleu_examples:
        return base
    say(f"--metric {metric}: setting train.bleu_examples={DEFAULT_BLEU_EXAMPLES} (greedy decoding of that many "
        "validation pairs at each evaluation)")
    raw = config_to_dict(base)
    raw["train"]["bleu_examples"] = DEFAULT_BLEU_EXAMPLES
    return build_config(raw)


def _say_to_stderr(quiet: bool) -> Callable[[str], None]:
    if quiet:
        return lambda message: None
    return lambda message: print(message, file=sys.stderr, flush=True)


def sweep(config: Config | str | Path | None = None, *, overrides: Sequence[str] = (), strategy: str | None = None,
          lambdas: str | Sequence[float] | None = None, modes: str | Sequence[str] | None = None,
          dropouts: str | Sequence[float] | None = None, folds: int | None = None, rule: str | None = None,
          metric: str | None = None, trials: int | None = None, storage: str | None = None,
          study: str | None = None, join: bool = False,
          workers: int | None = None, backend: str = "local", address: str | None = None, eta: int | None = None,
          min_epochs: int | None = None, pruner: str | None = None,
          no_zero: bool | None = None, output: str | Path | None = None, resume: str | Path | None = None,
          final: bool = True, quiet: bool = True, vectorized: bool = False, replicas: int | None = None,
          seeds: int | None = None, runner: TrialRunner = run_trials, overwrite: bool = False,
          taus: str | Sequence[float] | None = None, objective: Callable[..., Any] | str | None = None,
          examples: int | None = None, epochs: int | None = None, seed: int | None = None,
          regularization: Any = None, params: dict[str, Any] | None = None,
          heartbeat: int | None = None) -> SweepResult:
    """Choose λ on evidence (grid, cv, optuna or halving); see docs/sweeps.md. Bad input raises UserError.

    `taus` sweeps λ's EMA timescale τ in epochs instead of λ (`log:LO:HI:N` or a list; not with `lambdas`): each
    trial derives its λ from τ on the data it trains on, and the table shows both (docs/regularization.md).

    `backend="ray"` runs the trials as Ray tasks on the cluster at `address` (`HOST:PORT`, `auto`, or None: a
    local Ray instance started for this sweep; docs/scaling.md "Ray"); `workers` is then the most trials that run
    at once (None: as many as the cluster's CPUs fit). With the local backend it is the number of processes on
    this machine (None: 1).

    With `objective` (a function `fn(trial)`, or its name `module:function`) the trials call that function instead
    of decaylab's trainer (docs/python.md): `examples` (how many training examples the CV folds split), `epochs`
    (the full budget, for halving), `seed`, the base `regularization` (a Regularization or its settings: decay
    set, exclude, multipliers, …) and `params` (handed to every trial) take the place of the config.

    The process that runs the sweep (not a `join` worker) owns its folder (runfolder/lock.py) while it runs; every
    trial's folder is owned by the process that trains it. A new sweep in a folder that holds one is refused
    unless `overwrite`, which removes the old sweep's files first.

    `heartbeat` (optuna): seconds between a running trial's heartbeats in a database storage (default 60 on a
    server, off on SQLite; 0 turns it off); a trial silent for twice that is failed and retried (sweep/heartbeat.py).

    `vectorized=True` trains the points of each grid, CV fold or halving rung at once as one stacked model (at
    most `replicas` per stack; every architecture with a stacked form: rnn, transformer, decoder); in fp32 each
    replica follows its sequential run to float rounding, with dropout too for the Transformers on the CPU (they
    draw their sequential runs' masks; the RNN's and a GPU's are their own draws; under bf16 the RNN's recurrence
    stays fp32; see docs/sweeps.md).
    """
    started = time.perf_counter()
    say = _say_to_stderr(quiet)
    if workers is not None and workers < 1:
        raise UserError(f"--workers: must be at least 1 (got {workers})")
    check_backend(backend, address)
    if backend == "ray" and (vectorized or runner is not run_trials):
        raise UserError(f"--backend ray: runs each trial as a Ray task; {'--vectorized' if vectorized else 'runner'} "
                        "trains in this process (leave out one of them)")
    ray = RayBackend(address, workers, quiet).check() if backend == "ray" else None
    workers = workers or 1
    objective_args = {"examples": examples, "epochs": epochs, "seed": seed, "regularization": regularization,
                      "params": params}
    if objective is not None or (resume is not None and "objective" in SweepStore(Path(resume)).read_record()):
        if config is not None or overrides or vectorized or runner is not run_trials:
            what = ("config" if config is not None else "overrides" if overrides else
                    "vectorized" if vectorized else "runner")
            raise UserError(f"{what}: belongs to a sweep of decaylab's own models; an objective trains its own")
        options = {"strategy": strategy, "lambdas": lambdas, "modes": modes, "dropouts": dropouts, "folds": folds,
                   "rule": rule, "metric": metric, "trials": trials, "storage": storage, "study": study, "eta": eta,
                   "min_epochs": min_epochs, "pruner": pruner, "no_zero": no_zero, "seeds": seeds}
        return _objective_sweep(objective, options, objective_args, workers=workers, join=join, output=output,
                                resume=resume, final=final, quiet=quiet, overwrite=overwrite, started=started,
                                heartbeat=heartbeat, ray=ray)
    for name, value in objective_args.items():
        if value is not None:
            raise UserError(f"{name}: belongs to a sweep over an objective (objective=...); decaylab's own "
                            "trainer takes it from the config")
    if replicas is not None and (replicas < 1 or not vectorized):
        raise UserError(f"--replicas: needs --vectorized and a value of at least 1 (got {replicas})")
    if overwrite and (resume is not None or join):
        raise UserError(f"--overwrite: starts a new sweep in place of an old one; it does not go with "
                        f"{'--resume' if resume is not None else '--join'}")
    given = {"strategy": strategy, "lambdas": lambdas, "modes": modes, "dropouts": dropouts, "folds": folds,
             "rule": rule, "metric": metric, "trials": trials, "storage": storage, "study": study, "eta": eta,
             "min_epochs": min_epochs, "pruner": pruner, "no_zero": no_zero, "seeds": seeds, "taus": taus}
    given = {k: v for k, v in given.items() if v is not None}
    stored: dict[str, Any] | None = None
    if resume is not None:
        store = SweepStore(Path(resume))
        stored = store.read_record()
        if output is not None and Path(output).resolve() != store.root.resolve():
            raise UserError("--output and --resume name different folders; give only --resume DIR")
        base = _resolve_base(config, overrides, stored["base"])
        if given.get("strategy", stored["spec"]["strategy"]) != stored["spec"]["strategy"]:
            raise UserError(f"{store.root}: this sweep was started with --strategy {stored['spec']['strategy']}, "
                            f"not {given['strategy']}; resume it with its own settings or start a new sweep")
        args = {**_spec_args(SweepSpec(**stored["spec"])), **given}
        if "lambdas" in given or "taus" in given:  # the axis given on a resume replaces the stored one
            args.pop("taus" if "lambdas" in given else "lambdas", None)
        spec = build_spec(**{k: v for k, v in args.items() if k != "no_zero"}, no_zero=bool(args.get("no_zero")),
                          join=join, default_mode=_default_mode(base))
    else:
        base = _resolve_base(config, overrides)
        spec = build_spec(**{k: v for k, v in given.items() if k != "no_zero"}, no_zero=bool(no_zero), join=join,
                          default_mode=_default_mode(base))
        store = SweepStore(Path(output) if output is not None else _default_output(config, spec))
        if spec.strategy == "optuna" and spec.study is None:
            spec.study = store.root.resolve().name
    base = _with_bleu(base, spec.metric, say)
    if vectorized:
        runner = _vectorized(spec, base, workers, replicas, quiet)
    beat = _heartbeat(heartbeat, spec, store)
    plan = _validate(spec, base, store, stored, join, overwrite)
    plan.heartbeat = beat
    resuming = resume is not None
    try:
        if join:  # a worker of a running study owns only the trials it trains, not the sweep folder
            with _connected(ray):
                return _run(spec, base, store, plan, workers, join, resuming, final, quiet, runner, started, ray)
        with FolderLock(store.root):
            if stored is None:  # again as the owner: another process may have started a sweep here since the check
                _check_folder(store, plan.record, join, overwrite)
                if overwrite:
                    store.clear()
            with _connected(ray):
                return _run(spec, base, store, plan, workers, join, resuming, final, quiet, runner, started, ray)
    except WriteError as exc:  # a full disk, in a trial or the sweep's own files: how to go on is the sweep's
        go_on = (f"continue with `decaylab sweep --resume {store.root}`" if store.is_sweep()
                 else "start the sweep again")
        raise WriteError(exc.detail, f"{go_on} {exc.when}", exc.full) from exc.__cause__


def _connected(ray: RayBackend | None) -> AbstractContextManager[Any]:
    """The Ray connection for the sweep's lifetime (nothing for the local backend)."""
    return ray if ray is not None else nullcontext()


def _vectorized(spec: SweepSpec, base: Config, workers: int, replicas: int | None, quiet: bool) -> TrialRunner:
    """The stacked-replica runner, after checking that it applies to this sweep."""
    from decaylab.models import STACKED_MODELS
    from decaylab.sweep.vectorized import STRATEGIES, vectorized_runner

    if base.model.arch not in STACKED_MODELS:
        raise UserError(f"--vectorized: the stacked engine has no stacked form of model.arch {base.model.arch!r} "
                        f"(it trains {', '.join(map(repr, STACKED_MODELS))}); run this sweep without --vectorized")
    if base.model.output != "full":
        raise UserError(f"--vectorized: the stacked model has the full softmax only (model.output is "
                        f"{base.model.output!r}); run this sweep without --vectorized")
    if spec.strategy not in STRATEGIES:
        raise UserError(f"--vectorized: works with --strategy {', '.join(STRATEGIES)}, whose points are known "
                        f"before training; {spec.strategy} chooses each trial from the previous ones")
    if workers != 1:
        raise UserError(f"--vectorized: trains every replica in this process; use --workers 1 (got {workers}) "
                        "and --replicas to bound a stack's memory")
    return vectorized_runner(replicas, quiet)


def _heartbeat(given: int | None, spec: SweepSpec, store: SweepStore) -> int | None:
    """The heartbeat interval of an Optuna sweep's storage (None: off); `--heartbeat` elsewhere is an error."""
    from decaylab.sweep.heartbeat import heartbeat_seconds
    from decaylab.sweep.optuna_search import storage_url

    if spec.strategy != "optuna":
        if given is not None:
            raise UserError(f"--heartbeat: only applies to --strategy optuna (this sweep is --strategy "
                            f"{spec.strategy})")
        return None
    return heartbeat_seconds(given, storage_url(spec.storage, store.root))


def _default_output(config: Config | str | Path | None, spec: SweepSpec) -> Path:
    stem = Path(str(config)).stem if isinstance(config, (str, Path)) else "sweep"
    return Path("sweeps") / f"{stem}-{spec.strategy}-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass
class _Plan:
    record: dict[str, Any]
    points: list[Point]
    splits: Any
    folds: list[list[int]] | None
    storage: str | None
    heartbeat: int | None = None  # optuna: seconds between a running trial's heartbeats (None: off)


def _validate(spec: SweepSpec, base: Config, store: SweepStore, stored: dict[str, Any] | None, join: bool,
              overwrite: bool) -> _Plan:
    """Every check that can fail on bad input, before anything is written."""
    from decaylab.data.splits import load_splits
    from decaylab.sweep.folds import fold_indices
    from decaylab.sweep.optuna_search import open_storage, storage_url

    if spec.min_epochs is not None and spec.min_epochs >= base.train.epochs:
        raise UserError(f"--min-epochs: must be below train.epochs ({base.train.epochs}), got {spec.min_epochs}")
    if spec.taus is not None:
        from decaylab.regularization.timescale import timescale_problem

        for mode in spec.modes:
            problem = timescale_problem(mode, base.train.optimizer, base.train.momentum)
            if problem is not None:
                raise UserError(f"--taus: {problem}")
    if spec.strategy != "optuna":
        points = grid_points(spec, base)
    elif spec.taus is not None:
        points = [Point(mode, math.nan, base.model.dropout, spec.tau_range[0]) for mode in spec.modes]
    else:
        points = [Point(mode, spec.lambda_range[0], base.model.dropout) for mode in spec.modes]
    check_points(base, points, spec.modes)
    splits = load_splits(base.data)
    folds = fold_indices(len(splits.train), spec.folds, base.seed) if spec.strategy == "cv" else None
    record = {"version": RECORD_VERSION, "spec": spec.to_dict(), "base": config_to_dict(base),
              "data_fingerprint": splits.fingerprint}
    if stored is not None:
        store.check_same(stored, record)
    else:
        _check_folder(store, record, join, overwrite)
    url = None
    if spec.strategy == "optuna":
        url = storage_url(spec.storage, store.root)
        if spec.storage is not None or store.is_sweep():
            open_storage(url)  # a bad URL fails here, before the sweep folder exists
    return _Plan(record, points, splits, folds, url)


def _check_folder(store: SweepStore, record: dict[str, Any], join: bool, overwrite: bool) -> None:
    """A new sweep's folder: free, or a sweep to join (same settings) or to replace (`overwrite`). Writes nothing."""
    problem = folder_problem(store.root)
    if problem is not None:
        raise UserError(f"--output {problem}")
    if not store.root.exists():
        return
    if not join:
        check_free(store.root)
    if store.is_sweep():
        if join:
            store.check_same(store.read_record(), record)
        elif not overwrite:
            raise UserError(f"{store.root}: already holds a sweep; continue it with --resume {store.root}, pass "
                            "--overwrite to replace it, or choose another --output")
    elif not join and any(entry.name != LOCK_FILE for entry in store.root.iterdir()):
        raise UserError(f"{store.root}: exists and is not a sweep folder; choose another --output")


def _run(spec: SweepSpec, base: Config, store: SweepStore, plan: _Plan, workers: int, join: bool, resuming: bool,
         final: bool, quiet: bool, runner: TrialRunner, started: float, ray: RayBackend | None = None) -> SweepResult:
    from decaylab.sweep.cv import run_cv
    from decaylab.sweep.final import run_final
    from decaylab.sweep.grid import run_grid
    from decaylab.sweep.halving import run_halving
    from decaylab.sweep.optuna_search import run_optuna
    from decaylab.sweep.shared import prepare_seed_inits, prepare_shared

    say = _say_to_stderr(quiet)
    store.root.mkdir(parents=True, exist_ok=True)
    if not store.is_sweep():
        store.write_record(plan.record)
    clock = None if join else SweepClock(store, started)  # a joiner's time is its leader's
    say(f"sweep {store.root}: {spec.strategy}, {plan.splits.sizes()} pairs")
    shared = prepare_shared(store.shared, base, plan.splits)
    per_epoch = None
    if spec.taus is not None:  # each τ point's λ on the training split (the one the grid and the final train on)
        from decaylab.data.prepare import encode_pairs, steps_per_epoch

        per_epoch = steps_per_epoch(base, encode_pairs(shared.tokenizer, plan.splits.train))
        plan.points = with_lambdas(plan.points, base, spec.modes, per_epoch)
    ctx = TrialContext(str(store.root.resolve()), config_to_dict(base), spec.modes,
                       plan.record["data_fingerprint"], plan.folds)
    book = TrialBook(store)
    extra: dict[str, Any] = {}
    jobs_runner: TrialRunner = ray.runner if ray is not None else runner
    seeds = [base.seed + i for i in range(spec.seeds)] if spec.seeds else None
    if seeds:
        prepare_seed_inits(store.shared, base, shared.tokenizer, seeds)
    if spec.strategy == "grid":
        rows = run_grid(ctx, plan.points, book, workers, say, jobs_runner, seeds)
        table_rows = rows
    elif spec.strategy == "cv":
        rows = run_cv(ctx, plan.points, book, workers, say, jobs_runner, seeds)
        table_rows = rows
    elif spec.strategy == "halving":
        table_rows, extra["halving"] = run_halving(ctx, plan.points, book, workers, say, base.train.epochs,
                                                   spec.eta, spec.metric, spec.min_epochs, jobs_runner)
        rows = book.all()
    else:
        settings = {"storage": plan.storage, "study": spec.study, "trials": spec.trials,
                    "metric": spec.metric, "pruner": spec.pruner, "seed": None if join else base.seed,
                    "zero": spec.zero, "modes": spec.modes, "dropouts": spec.dropouts,
                    "base_dropout": base.model.dropout,
                    "lo": (spec.tau_range if spec.taus is not None else spec.lambda_range)[0],
                    "hi": (spec.tau_range if spec.taus is not None else spec.lambda_range)[1],
                    "steps_per_epoch": per_epoch, "heartbeat": plan.heartbeat}
        rows = run_optuna(ctx, settings, workers, say, leader=not join, resume=resuming, verbose=not quiet,
                          backend=ray)
        store.write_rows(rows)
        table_rows = rows
        extra["optuna"] = {"storage": plan.storage, "study": settings["study"],
                           "complete": sum(r["status"] == "done" for r in rows),
                           "pruned": sum(r["status"] == "pruned" for r in rows)}
    table = build_table(table_rows, spec.metric)
    chosen_row = choose(table, spec.rule, spec.metric)
    chosen = {"lambda": chosen_row["lambda"], **({"tau": chosen_row["tau"]} if "tau" in chosen_row else {}),
              "mode": chosen_row["mode"], "dropout": chosen_row["dropout"],
              "rule": spec.rule, "metric": spec.metric, "mean": chosen_row["mean"], "se": chosen_row["se"]}
    point = Point(chosen["mode"], chosen["lambda"], chosen["dropout"], chosen.get("tau"))
    final_info = None
    if final and not join:
        final_info = run_final(store, ctx, shared, point, _reusable(spec, table_rows, point, base), say)
    compute_s = compute_seconds(rows) + ((final_info or {}).get("train_wall_s") or 0.0)
    summary = {"strategy": spec.strategy, "chosen": chosen, "table": table, "final": final_info,
               "compute_s": compute_s, "wall_s": clock.stop() if clock else time.perf_counter() - started,
               "trials": len(rows),
               "spec": spec.to_dict(), "engine": "vectorized" if runner is not run_trials else "sequential",
               **({"backend": "ray"} if ray is not None else {}),
               **({"steps_per_epoch": per_epoch} if per_epoch is not None else {}), **extra}
    if not join:
        store.write_summary(summary)
    return SweepResult(store.root, table, {**chosen_row, **chosen}, final_info, rows, summary)


def _reusable(spec: SweepSpec, rows: list[dict[str, Any]], point: Point, base: Config) -> str | None:
    """The trial that trained exactly the final configuration (same point, training split, full epochs)."""
    if spec.strategy == "cv":
        return None
    matches = [r for r in rows if (r["mode"], r["lambda"], r["dropout"]) == (point.mode, point.lam, point.dropout)
               and r["status"] == "done" and (r.get("budget") is None or r["budget"] >= base.train.epochs)
               and r.get("seed") in (None, base.seed)]  # a seed repeat's run is not the final model's
    if not matches:
        return None
    return min(matches, key=lambda r: r["best_val_loss"])["trial"]


def _objective_sweep(objective: Callable[..., Any] | str | None, options: dict[str, Any], args: dict[str, Any], *,
                     workers: int, join: bool, output: str | Path | None, resume: str | Path | None, final: bool,
                     quiet: bool, overwrite: bool, started: float, heartbeat: int | None = None,
                     ray: RayBackend | None = None) -> SweepResult:
    """`sweep(objective=fn, ...)`: the same plan, folder, resume, selection and summary, with the user's function
    training each trial (sweep/objective.py)."""
    import pickle

    from decaylab.sweep.folds import fold_indices
    from decaylab.sweep.objective import (
        ObjectiveContext,
        base_regularization,
        check_objective_points,
        load_objective,
        objective_name,
        objective_points,
    )

    say = _say_to_stderr(quiet)
    if overwrite and (resume is not None or join):
        raise UserError(f"--overwrite: starts a new sweep in place of an old one; it does not go with "
                        f"{'--resume' if resume is not None else '--join'}")
    given = {k: v for k, v in options.items() if v is not None}
    if isinstance(objective, str):
        name, function = objective, load_objective(objective)
    elif objective is not None:
        name, function = objective_name(objective), objective
    stored: dict[str, Any] | None = None
    if resume is not None:
        store = SweepStore(Path(resume))
        stored = store.read_record()
        if "objective" not in stored:
            raise UserError(f"{store.root}: this sweep trains decaylab's own models; it has no objective")
        if output is not None and Path(output).resolve() != store.root.resolve():
            raise UserError("--output and --resume name different folders; give only --resume DIR")
        if objective is None:
            name, function = stored["objective"], load_objective(stored["objective"])
        settings = {**stored["base"], **{k: v for k, v in args.items() if v is not None}}
        if isinstance(args["regularization"], dict):  # fields given on a resume go on top of the recorded ones
            settings["regularization"] = base_regularization({**stored["base"]["regularization"],
                                                              **args["regularization"]})
        elif args["regularization"] is not None:
            settings["regularization"] = base_regularization(args["regularization"])
        if given.get("strategy", stored["spec"]["strategy"]) != stored["spec"]["strategy"]:
            raise UserError(f"{store.root}: this sweep was started with --strategy {stored['spec']['strategy']}, "
                            f"not {given['strategy']}; resume it with its own settings or start a new sweep")
        spec_args = {**_spec_args(SweepSpec(**stored["spec"])), **given}
    else:
        settings = {"seed": args["seed"] if args["seed"] is not None else 0, "epochs": args["epochs"],
                    "examples": args["examples"], "regularization": base_regularization(args["regularization"]),
                    "params": dict(args["params"] or {})}
        spec_args = given
    mode = settings["regularization"]["mode"]
    spec = build_spec(**{k: v for k, v in spec_args.items() if k != "no_zero"},
                      no_zero=bool(spec_args.get("no_zero")), join=join,
                      default_mode=mode if mode in DECAY_MODES else "decoupled")
    if resume is None:
        store = SweepStore(Path(output) if output is not None else _default_output(None, spec))
        if spec.strategy == "optuna" and spec.study is None:
            spec.study = store.root.resolve().name
    beat = _heartbeat(heartbeat, spec, store)
    for key in ("epochs", "examples"):
        value = settings[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UserError(f"--{key}: must be a whole number of at least 1 (got {value!r})")
    if spec.strategy == "halving" and settings["epochs"] is None:
        raise UserError("--epochs: successive halving needs the full budget in epochs (the trial's report(epoch=…) "
                        "counts them)")
    if spec.min_epochs is not None and spec.min_epochs >= settings["epochs"]:
        raise UserError(f"--min-epochs: must be below --epochs ({settings['epochs']}), got {spec.min_epochs}")
    if spec.metric != "loss":
        say(f"--metric {spec.metric}: the objective must report {spec.metric}=… with each evaluation")
    folds = None
    if spec.strategy == "cv":
        if settings["examples"] is None:
            raise UserError("--examples: cross-validation splits the objective's training examples into folds; "
                            "give how many there are")
        folds = fold_indices(settings["examples"], spec.folds, settings["seed"])
    points = objective_points(spec.lambdas, spec.modes, spec.dropouts) if spec.strategy != "optuna" else [
        Point(m, spec.lambda_range[0], None) for m in spec.modes]
    check_objective_points(points, settings["regularization"], spec.modes)
    if workers > 1 and ray is None and not isinstance(objective, str) and objective is not None:
        try:
            pickle.dumps(function)
        except (pickle.PicklingError, AttributeError, TypeError):
            raise UserError(f"--workers {workers}: the objective {name} cannot be sent to worker processes (define "
                            "it at the top level of an importable module)") from None
    record = {"version": RECORD_VERSION, "objective": name, "spec": spec.to_dict(), "base": settings,
              "data_fingerprint": None}
    if stored is not None:
        store.check_same(stored, record)
    else:
        _check_folder(store, record, join, overwrite)
    if spec.strategy == "optuna":
        from decaylab.sweep.optuna_search import open_storage, storage_url

        url = storage_url(spec.storage, store.root)
        if spec.storage is not None or store.is_sweep():
            open_storage(url)
    # An objective given by name is imported by name wherever a trial runs (a FILE.py module cannot be pickled to a
    # worker process by reference); a function object travels as itself.
    carried = None if isinstance(objective, str) or objective is None else function
    ctx = ObjectiveContext(str(store.root.resolve()), settings, spec.modes, "", folds, objective=carried, name=name,
                           seed=settings["seed"], epochs=settings["epochs"], examples=settings["examples"],
                           params=settings["params"], regularization=settings["regularization"])
    try:
        if join:
            with _connected(ray):
                return _run_objective(spec, ctx, store, record, points, workers, join, resume is not None, final,
                                      quiet, started, beat, ray)
        with FolderLock(store.root):
            if stored is None:
                _check_folder(store, record, join, overwrite)
                if overwrite:
                    store.clear()
            with _connected(ray):
                return _run_objective(spec, ctx, store, record, points, workers, join, resume is not None, final,
                                      quiet, started, beat, ray)
    except WriteError as exc:
        go_on = (f"continue with `decaylab sweep --resume {store.root}`" if store.is_sweep()
                 else "start the sweep again")
        raise WriteError(exc.detail, f"{go_on} {exc.when}", exc.full) from exc.__cause__


def _run_objective(spec: SweepSpec, ctx: Any, store: SweepStore, record: dict[str, Any], points: list[Point],
                   workers: int, join: bool, resuming: bool, final: bool, quiet: bool,
                   started: float, heartbeat: int | None = None, ray: RayBackend | None = None) -> SweepResult:
    from decaylab.sweep.cv import run_cv
    from decaylab.sweep.grid import run_grid
    from decaylab.sweep.halving import run_halving
    from decaylab.sweep.objective import run_objective_final
    from decaylab.sweep.optuna_search import run_optuna, storage_url

    say = _say_to_stderr(quiet)
    store.root.mkdir(parents=True, exist_ok=True)
    if not store.is_sweep():
        store.write_record(record)
    clock = None if join else SweepClock(store, started)
    say(f"sweep {store.root}: {spec.strategy} over objective {ctx.name}")
    book = TrialBook(store)
    extra: dict[str, Any] = {}
    seeds = [ctx.seed + i for i in range(spec.seeds)] if spec.seeds else None
    runner: TrialRunner = ray.runner if ray is not None else run_trials
    if spec.strategy == "grid":
        rows = table_rows = run_grid(ctx, points, book, workers, say, runner, seeds)
    elif spec.strategy == "cv":
        rows = table_rows = run_cv(ctx, points, book, workers, say, runner, seeds)
    elif spec.strategy == "halving":
        table_rows, extra["halving"] = run_halving(ctx, points, book, workers, say, ctx.epochs, spec.eta,
                                                   spec.metric, spec.min_epochs, runner)
        rows = book.all()
    else:
        settings = {"storage": storage_url(spec.storage, store.root), "study": spec.study, "trials": spec.trials,
                    "metric": spec.metric, "pruner": spec.pruner, "seed": None if join else ctx.seed,
                    "zero": spec.zero, "modes": spec.modes, "dropouts": spec.dropouts, "base_dropout": None,
                    "lo": spec.lambda_range[0], "hi": spec.lambda_range[1], "heartbeat": heartbeat}
        rows = table_rows = run_optuna(ctx, settings, workers, say, leader=not join, resume=resuming,
                                       verbose=not quiet, backend=ray)
        store.write_rows(rows)
        extra["optuna"] = {"storage": settings["storage"], "study": settings["study"],
                           "complete": sum(r["status"] == "done" for r in rows),
                           "pruned": sum(r["status"] == "pruned" for r in rows)}
    table = build_table(table_rows, spec.metric)
    chosen_row = choose(table, spec.rule, spec.metric)
    chosen = {"lambda": chosen_row["lambda"], "mode": chosen_row["mode"], "dropout": chosen_row["dropout"],
              "rule": spec.rule, "metric": spec.metric, "mean": chosen_row["mean"], "se": chosen_row["se"]}
    point = Point(chosen["mode"], chosen["lambda"], chosen["dropout"])
    final_info = None
    if final and not join:
        final_info = run_objective_final(store, ctx, point, _objective_reusable(spec, table_rows, point, ctx), say)
    compute_s = compute_seconds(rows) + ((final_info or {}).get("train_wall_s") or 0.0)
    summary = {"strategy": spec.strategy, "objective": ctx.name, "chosen": chosen, "table": table,
               "final": final_info, "compute_s": compute_s,
               "wall_s": clock.stop() if clock else time.perf_counter() - started, "trials": len(rows),
               "spec": spec.to_dict(), "engine": "objective", **({"backend": "ray"} if ray is not None else {}),
               **extra}
    if not join:
        store.write_summary(summary)
    return SweepResult(store.root, table, {**chosen_row, **chosen}, final_info, rows, summary)


def _objective_reusable(spec: SweepSpec, rows: list[dict[str, Any]], point: Point, ctx: Any) -> str | None:
    """The trial that trained exactly the final configuration (all training examples, the full budget)."""
    if spec.strategy == "cv":
        return None
    matches = [r for r in rows if (r["mode"], r["lambda"], r["dropout"]) == (point.mode, point.lam, point.dropout)
               and r["status"] == "done" and (r.get("budget") is None or ctx.epochs is None
                                               or r["budget"] >= ctx.epochs)
               and r.get("seed") in (None, ctx.seed)]
    if not matches:
        return None
    return min(matches, key=lambda r: r["best_val_loss"])["trial"]
