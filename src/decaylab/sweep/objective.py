"""Sweeps over a user's training function (an *objective*): the `Trial` it is given, and one trial into its folder.

An objective is any function `fn(trial)` that trains a model however it likes (its own `nn.Module` and loop, a
Hugging Face `Trainer`, …). The sweep calls it once per trial with a `Trial`: the point's `Regularization`, the
seed, the fold's indices under CV, the epoch budget under successive halving. The objective reports each
evaluation through `trial.report(...)`, which writes the trial's `metrics.jsonl` (the same rows a built-in run
writes, so `decaylab report` draws them), checkpoints what it watches, and stops the trial when Optuna prunes it
or a halving rung's budget is reached. Everything around it (the plan, trials.jsonl, resume, selection, the final
model, summary.json) is the sweep's, exactly as for decaylab's own models (api.py).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import platform
import random
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import yaml
from torch import nn

from decaylab.device import seed_everything
from decaylab.errors import DamagedFile, UserError
from decaylab.evaluation.metrics import perplexity
from decaylab.files import atomic_write_json, atomic_write_jsonl, atomic_write_text, read_json_object, read_jsonl
from decaylab.regularization import Regularization
from decaylab.regularization.rules import OPTIMIZERS
from decaylab.runfolder.checkpoint import load_model_weights, load_trainer_state, model_tensors, save_checkpoint
from decaylab.runfolder.layout import RunPaths, versions
from decaylab.runfolder.lock import LOCK_FILE, FolderLock
from decaylab.sweep.points import Point, apply_point
from decaylab.sweep.store import SweepStore
from decaylab.sweep.trial import Monitor, StopTrial, TrialContext, TrialJob, checkpoint_step, trial_row

T = TypeVar("T")
Objective = Callable[["Trial"], Any]

OUTCOME_FILE = "trial.json"  # written when the objective returned by itself: nothing is left to continue
AUDIT_FILE = "audit.json"  # the decay audit of the model the objective trained (the report reads it)
FINAL_KEY = "final"


# -- naming and loading objectives -------------------------------------------------------------------------


def objective_name(fn: Objective) -> str:
    """`module:qualname` of a function, the name sweep.yaml records and `--resume` imports it by."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not callable(fn) or not module or not qualname:
        raise UserError(f"objective: must be a function taking a Trial (got {type(fn).__name__})")
    return f"{module}:{qualname}"


def load_objective(name: str) -> Objective:
    """The function `module:function` (or `path/to/file.py:function`) names; anything wrong is one line."""
    module_name, sep, attr = name.rpartition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"--objective {name!r}: expected MODULE:FUNCTION, e.g. mypkg.train:objective or "
                        "train.py:objective")
    if module_name.endswith(".py"):
        module = _module_from_file(Path(module_name), name)
    else:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # `decaylab` started as a console script does not look in the working folder, as `python -m` does
            if exc.name != module_name.split(".")[0] or os.getcwd() in sys.path:
                raise UserError(f"--objective {name}: cannot import {module_name} ({exc})") from None
            sys.path.insert(0, os.getcwd())
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as again:
                raise UserError(f"--objective {name}: cannot import {module_name} ({again})") from None
    found: Any = module
    for part in attr.split("."):
        found = getattr(found, part, None)
        if found is None:
            hint = "" if module_name != "__main__" else (
                " (a function of a script run as __main__ is found again only by that script: resume from it with "
                "objective=fn, or give the objective as FILE.py:FUNCTION)")
            raise UserError(f"--objective {name}: {module_name} has no {attr!r}{hint}")
    if not callable(found):
        raise UserError(f"--objective {name}: {attr} is a {type(found).__name__}, not a function")
    return found


def _module_from_file(path: Path, name: str) -> Any:
    if not path.is_file():
        raise UserError(f"--objective {name}: {path} does not exist")
    module_name = f"decaylab_objective_{path.stem}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def base_regularization(regularization: Regularization | dict[str, Any] | None) -> dict[str, Any]:
    """The settings every point starts from (decay set, exclude, multipliers, decay scaling, l1), checked."""
    if regularization is None:
        return Regularization(mode="none", weight_decay=0.0).describe()
    if isinstance(regularization, Regularization):
        return regularization.describe()
    try:
        return Regularization(**dict(regularization)).describe()
    except (TypeError, ValueError) as exc:
        raise UserError(f"regularization: {exc}") from None


def objective_points(lambdas: list[float], modes: list[str], dropouts: list[float] | None) -> list[Point]:
    """The grid's points; dropout is part of a point only when it is swept (the objective owns its own)."""
    points = []
    for dropout in dropouts if dropouts is not None else [None]:
        if 0.0 in lambdas:
            points.append(Point("none", 0.0, dropout))
        for mode in modes:
            points.extend(Point(mode, lam, dropout) for lam in lambdas if lam > 0)
    return points


def check_objective_points(points: list[Point], regularization: dict[str, Any], modes: list[str]) -> None:
    """Every point's Regularization can be built (a contradiction is one line before anything is written)."""
    for point in points:
        try:
            Regularization(**apply_point(dict(regularization), point, modes))
        except ValueError as exc:
            raise UserError(f"--mode {point.mode}: {exc}") from None


# -- the context every trial of one objective sweep shares -------------------------------------------------


@dataclass(frozen=True)
class ObjectiveContext(TrialContext):
    """A TrialContext whose jobs call a user's function (plain data plus the function, so it pickles for spawn)."""

    objective: Objective | None = None  # None: imported by `name` where it runs (a resumed sweep, a worker)
    name: str = ""
    seed: int = 0
    epochs: int | None = None
    examples: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    regularization: dict[str, Any] = field(default_factory=dict)

    @property
    def threads(self) -> int | None:
        """An objective sets its own threads; workers split the cores evenly."""
        return None

    def function(self) -> Objective:
        """The objective itself."""
        return self.objective if self.objective is not None else load_objective(self.name)

    def train(self, job: TrialJob, monitor: Monitor | None = None) -> dict[str, Any]:
        """Run (or continue) the objective for one job and return its trials.jsonl row."""
        return train_objective_trial(self, job, monitor)


# -- the Trial an objective receives ---------------------------------------------------------------------------


class Trial:
    """One trial of an objective sweep: what to train with, and where to report.

    `regularization` is the point's `Regularization` (build the optimizer with `trial.optimizer(model, …)` or
    `trial.regularization.optimizer(…)`, and add `trial.regularization.penalty(model)` to the loss); `seed` has
    already seeded Python, NumPy and torch when the objective is called, so every λ starts from the same initial
    weights; `fold`, `train_indices` and `valid_indices` say which training examples to train on and score (CV);
    `budget` is the epoch at which a halving rung stops the trial; `params` the sweep's `--param` values; `final` is
    True for the final model, the only one that may `report_test`.
    """

    def __init__(self, ctx: ObjectiveContext, job: TrialJob, path: Path, final: bool = False,
                 monitor: Monitor | None = None) -> None:
        point = job.point
        self.key = FINAL_KEY if final else job.key
        self.mode = point.mode
        self.weight_decay = point.lam  # λ of the point's rule (λ₁ for l1)
        self.dropout = point.dropout  # None unless the sweep sweeps dropout
        self.regularization = Regularization(**apply_point(dict(ctx.regularization), point, ctx.modes))
        self.seed = job.seed if job.seed is not None else ctx.seed
        self.fold = job.fold
        self.folds = len(ctx.folds) if ctx.folds is not None else None
        self.epochs = ctx.epochs
        self.budget = job.budget
        self.params = dict(ctx.params)
        self.final = final
        self.path = Path(path)
        self.history: list[dict[str, Any]] = []
        self.stopped: str | None = None  # done (budget) | pruned | diverged, once the trial must stop
        self._examples = ctx.examples
        self._held_out = ctx.folds[job.fold] if ctx.folds is not None and job.fold is not None else None
        self._paths = RunPaths(self.path)
        self._monitor = monitor
        self._model: nn.Module | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._others: list[Any] = []
        self._checkpoints = False  # whether reports checkpoint the watched objects
        self._optimizer_name: str | None = None
        self._lr: float | None = None
        self._started = time.perf_counter()
        self._earlier_s = 0.0  # training seconds of earlier invocations (a resumed trial)
        self._best = math.inf
        self._began = False  # restore() was called, or the first report started the trial over

    # -- data -----------------------------------------------------------------------------------------------

    @property
    def train_indices(self) -> list[int] | None:
        """Indices of the training examples to train on: all but the held-out fold under CV (None: the sweep was
        not given `examples`, so train on all of yours)."""
        if self._examples is None:
            return None
        held = set(self._held_out or ())
        return [i for i in range(self._examples) if i not in held]

    @property
    def valid_indices(self) -> list[int] | None:
        """Indices of the held-out fold to score on under CV; None otherwise (score on your validation set)."""
        return list(self._held_out) if self._held_out is not None else None

    def split(self, examples: Sequence[T]) -> tuple[list[T], list[T] | None]:
        """(examples to train on, held-out fold or None) of your training examples, by the indices above."""
        if self._examples is not None and len(examples) != self._examples:
            raise ValueError(f"trial.split: the sweep was told examples={self._examples}, got {len(examples)}")
        train = self.train_indices
        valid = self.valid_indices
        return ([examples[i] for i in train] if train is not None else list(examples),
                [examples[i] for i in valid] if valid is not None else None)

    # -- what the trial checkpoints -------------------------------------------------------------------------

    def optimizer(self, model: nn.Module, name: str = "adamw", lr: float = 1e-3, total_steps: int | None = None,
                  **kwargs: Any) -> torch.optim.Optimizer:
        """The point's optimizer for `model` (`Regularization.optimizer`), watched with the model (see `watch`)."""
        optimizer = self.regularization.optimizer(model, name, lr=lr, total_steps=total_steps, **kwargs)
        self._optimizer_name, self._lr = name, lr
        self.watch(model, optimizer)
        return optimizer

    def watch(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *others: Any,
              checkpoint: bool = True) -> None:
        """Checkpoint the model's weights, the optimizer's and each other object's `state_dict` at every report
        (restored by `restore()`); the model's norms, penalty, best weights and decay audit go into the trial's
        files too. `checkpoint=False`: only the latter (a framework that checkpoints on its own)."""
        for obj in others:
            if not (hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")):
                raise TypeError(f"trial.watch: {type(obj).__name__} has no state_dict()/load_state_dict()")
        self._model, self._optimizer, self._others = model, optimizer, list(others)
        self._checkpoints = checkpoint

    def load_best(self, model: nn.Module) -> None:
        """Load the weights of the best report so far (`checkpoints/best`, saved for a watched model) into `model`:
        the weights a final model is scored with."""
        load_model_weights(self._paths.best, model)

    def restore(self) -> dict[str, Any] | None:
        """Continue from the trial's last checkpoint: load it into the watched objects and the random generators
        and return {"step", "epoch", "state"} (your `state` from `report`/`save_checkpoint`); None to start afresh.

        Call it after `trial.optimizer(...)`/`trial.watch(...)` and before training. A trial that does not call it
        starts over at its first report (its earlier rows are dropped).
        """
        self._began = True
        paths = self._paths
        if not (paths.last.exists() or paths.last.with_name("last.old").exists()):
            self._set_history([])
            return None
        try:
            state = load_trainer_state(paths.last)
            if self._model is not None and self._checkpoints:
                load_model_weights(paths.last, self._model)
        except DamagedFile as exc:
            raise exc.saying(f"the trial cannot continue from it: remove {self.path} and the sweep's --resume "
                             "trains it again") from None
        if self._checkpoints:
            if self._optimizer is not None and state["optimizer"]:
                self._optimizer.load_state_dict(state["optimizer"])
            for obj, saved in zip(self._others, state.get("watched") or [], strict=False):
                obj.load_state_dict(saved)
        torch.set_rng_state(state["rng_torch"])
        if "rng_python" in state:
            random.setstate(_as_tuple(state["rng_python"]))
        if "rng_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        progress = state["progress"]
        self._earlier_s = float(progress.get("wall_s", 0.0))
        self._best = float(progress.get("best_val_loss", math.inf))
        self._set_history([row for row in read_jsonl(paths.metrics) if row["step"] <= progress["step"]])
        return {"step": progress["step"], "epoch": progress.get("epoch", 0), "state": state.get("state") or {}}

    def save_checkpoint(self, state: dict[str, Any] | None = None, step: int | None = None) -> None:
        """Write `checkpoints/last`: the watched objects, the random generators and `state` (tensors and plain
        values), as of `step` (default: the last reported one); a resume keeps the metric rows up to it."""
        if step is None:
            step = self.history[-1]["step"] if self.history else 0
        covered = [row for row in self.history if row["step"] <= step]
        progress = {"step": int(step), "epoch": covered[-1]["epoch"] if covered else 0, "wall_s": self._wall(),
                    "best_val_loss": self._best, "stopped_early": False}
        watched = self._checkpoints
        trainer_state: dict[str, Any] = {
            "optimizer": self._optimizer.state_dict() if watched and self._optimizer is not None else {},
            "scheduler": {}, "progress": progress, "rng_torch": torch.get_rng_state(),
            "rng_python": random.getstate(), "watched": [obj.state_dict() for obj in self._others] if watched else [],
            "state": state or {}}
        if torch.cuda.is_available():
            trainer_state["rng_cuda"] = torch.cuda.get_rng_state_all()
        tensors = model_tensors(self._model) if watched and self._model is not None else {}
        save_checkpoint(self._paths.last, tensors, trainer_state)

    # -- reporting ------------------------------------------------------------------------------------------

    def report(self, step: int, val_loss: float, train_loss: float | None = None, *, epoch: float | None = None,
               state: dict[str, Any] | None = None, raise_stop: bool = True, **extra: Any) -> bool:
        """Record one evaluation: a metrics.jsonl row (with the watched model's norms, penalty and decay factor),
        `checkpoints/best` when the validation loss improved, `checkpoints/last` (see `save_checkpoint`).

        `epoch` defaults to the number of reports so far (one report per epoch). Returns False while the trial
        goes on. When it must stop (its halving budget is reached, Optuna prunes it, the loss is not finite) it
        raises `StopTrial`, which the objective must let through, or with `raise_stop=False` returns True (and
        `trial.stopped` says why) so that a framework's loop can end on its own (the Hugging Face callback).
        """
        if self.stopped is not None:
            return self._stop(raise_stop)
        if not self._began:  # the objective did not restore(): this trial starts over
            self._began = True
            self._set_history([])
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"trial.report: step must be an integer >= 0 (got {step!r})")
        if self.history and step <= self.history[-1]["step"]:
            raise ValueError(f"trial.report: step {step} is not after the last reported step "
                             f"{self.history[-1]['step']}")
        val = float(val_loss)
        if not math.isfinite(val):  # nothing of it is written: best and last keep the last finite state
            self.stopped = "diverged"
            return self._stop(raise_stop)
        row = self._row(step, val, train_loss, epoch, extra)
        self.history.append(row)
        atomic_write_jsonl(self._paths.metrics, self.history)
        if val < self._best:
            self._best = val
            if self._model is not None:
                save_checkpoint(self._paths.best, self._model, None)
        if self._checkpoints or state is not None:
            self.save_checkpoint(state, step)
        if self.budget is not None and row["epoch"] >= self.budget - 1e-9:
            self.stopped = "done"
        elif self._monitor is not None:
            try:
                self._monitor(self.history)
            except StopTrial as stop:
                self.stopped = stop.status
        return self._stop(raise_stop) if self.stopped is not None else False

    def report_test(self, **metrics: Any) -> None:
        """The final model's test metrics (e.g. loss=…, bleu=…), written to eval.json and summary.json."""
        if not self.final:
            raise ValueError("trial.report_test: only the final model is scored on the test split (trial.final is "
                             "False); score the trials on their validation data")
        result = {key: (float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value)
                  for key, value in metrics.items()}
        if "loss" in result and "ppl" not in result and isinstance(result["loss"], float):
            result["ppl"] = perplexity(result["loss"])
        atomic_write_json(self._paths.eval, {"test": {"split": "test", **result}})

    def _row(self, step: int, val: float, train_loss: float | None, epoch: float | None,
             extra: dict[str, Any]) -> dict[str, Any]:
        return metrics_row(self.regularization, self._model, self._optimizer, step, val, train_loss,
                           float(epoch) if epoch is not None else float(len(self.history) + 1), extra, self._wall())

    def _stop(self, raise_stop: bool) -> bool:
        if raise_stop:
            raise StopTrial(self.stopped or "done")
        return True

    def _wall(self) -> float:
        return self._earlier_s + time.perf_counter() - self._started

    def _set_history(self, rows: list[dict[str, Any]]) -> None:
        self.history = rows
        self._best = min((row["val_loss"] for row in rows), default=math.inf)
        atomic_write_jsonl(self._paths.metrics, rows)

    def audit(self, model: nn.Module | None) -> dict[str, Any]:
        """The decay audit of `model` (or the watched one) under this trial's regularization, as a dict."""
        model = model if model is not None else self._model
        if model is None:
            return {"error": "audit unavailable: the objective neither watched nor returned its model"}
        steps = self.history[-1]["step"] if self.history else None
        epoch = self.history[-1]["epoch"] if self.history else None
        per_epoch = round(steps / epoch) if steps and epoch else None
        try:
            return self.regularization.audit(
                model, lr=self._lr, steps=steps or None, steps_per_epoch=per_epoch or None,
                optimizer_name=self._optimizer_name if self._optimizer_name in OPTIMIZERS else None).to_dict()
        except ValueError as exc:
            return {"error": f"audit unavailable: {exc}"}


def metrics_row(regularization: Regularization, model: nn.Module | None, optimizer: torch.optim.Optimizer | None,
                step: int, val_loss: float, train_loss: float | None, epoch: float, extra: dict[str, Any],
                wall_s: float) -> dict[str, Any]:
    """One metrics.jsonl row of a model trained outside decaylab's trainer, with the fields a built-in run's row has
    (loss, perplexity, gap; the model's decayed/other/all weight norms and penalty; the optimizer's lr, per-step
    decay factor and λ_t), so the report reads both alike."""
    train = float(train_loss) if train_loss is not None else None
    reference = extra.get("train_eval_loss", train)
    row: dict[str, Any] = {"step": step, "epoch": epoch, "train_loss": train, "val_loss": val_loss,
                           "val_ppl": perplexity(val_loss),
                           "gap": val_loss - float(reference) if reference is not None else None}
    if model is not None:
        with torch.no_grad():
            row["penalty"] = float(regularization.penalty(model))
        row.update(regularization.norms(model))
    if optimizer is not None:
        row["lr"] = float(optimizer.param_groups[0]["lr"])
        try:
            row["decay_factor"] = regularization.decay_factor(optimizer)
            row["weight_decay_t"] = regularization.weight_decay_now(optimizer)
        except (ValueError, KeyError):  # an optimizer the Regularization did not build: no decay to read
            pass
    for key, value in extra.items():
        row[key] = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    row["wall_s"] = wall_s
    return row


def _as_tuple(value: Any) -> Any:
    """random.setstate wants the tuples getstate gave (a checkpoint may hand back lists)."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


# -- one trial into its run folder ---------------------------------------------------------------------------


def train_objective_trial(ctx: ObjectiveContext, job: TrialJob, monitor: Monitor | None = None,
                          folder: Path | None = None) -> dict[str, Any]:
    """Run (or continue) the objective for one job in its folder (`folder`: the final model) and return its row.

    The folder is owned throughout (runfolder/lock.py), like a built-in trial's.
    """
    run = folder if folder is not None else SweepStore(Path(ctx.root)).run_dir(job.key)
    with FolderLock(run):
        return _train(ctx, job, monitor, run, final=folder is not None)


def _train(ctx: ObjectiveContext, job: TrialJob, monitor: Monitor | None, run: Path, final: bool) -> dict[str, Any]:
    store = SweepStore(Path(ctx.root))
    paths = RunPaths(run)
    relative = run.relative_to(store.root)
    row_job = TrialJob(FINAL_KEY, job.point, seed=job.seed) if final else job
    outcome = _outcome(run)
    if outcome is not None:  # the objective returned by itself: a later rung or a resume has nothing to add
        return _trial_row(row_job, read_jsonl(paths.metrics), outcome["status"], relative)
    if job.budget is not None:
        history = _checkpointed(paths)
        if history and history[-1]["epoch"] >= job.budget - 1e-9:
            return _trial_row(row_job, history, "done", relative)
    trial = Trial(ctx, job, run, final=final, monitor=monitor)
    _write_header(ctx, trial, paths)
    seed_everything(trial.seed)
    status, returned, result = "done", False, None
    try:
        result = ctx.function()(trial)
        returned = trial.stopped is None
        status = trial.stopped or "done"
    except StopTrial as stop:
        status = stop.status
    if not trial.history and status == "done":
        raise UserError(f"objective {ctx.name}: returned without calling trial.report(step=…, val_loss=…), so "
                        f"trial {trial.key} has nothing to compare")
    atomic_write_json(run / AUDIT_FILE, trial.audit(result if isinstance(result, nn.Module) else None))
    if returned:
        atomic_write_json(run / OUTCOME_FILE, {"status": status, "returned": True})
    return _trial_row(row_job, trial.history, status, relative)


def _outcome(run: Path) -> dict[str, Any] | None:
    try:
        return read_json_object(run / OUTCOME_FILE)
    except DamagedFile:
        return None  # written again when the trial ends


def _checkpointed(paths: RunPaths) -> list[dict[str, Any]]:
    step = checkpoint_step(paths)
    return [row for row in read_jsonl(paths.metrics) if row["step"] <= step] if step else []


def _trial_row(job: TrialJob, history: list[dict[str, Any]], status: str, run: Path) -> dict[str, Any]:
    """trial.trial_row; the training loss is the objective's own when it reports no eval-mode one."""
    row = trial_row(job, history, status, run)
    if history and row["train_loss"] is None:
        best = min(history, key=lambda r: r["val_loss"])
        row["train_loss"] = best.get("train_loss")
    return row


def _write_header(ctx: ObjectiveContext, trial: Trial, paths: RunPaths) -> None:
    """config.yaml (what this trial trains with) and meta.json (provenance), as a built-in run writes them."""
    config = {"objective": ctx.name, "trial": trial.key, "seed": trial.seed, "fold": trial.fold,
              "folds": trial.folds, "epochs": trial.epochs, "budget": trial.budget, "dropout": trial.dropout,
              "params": trial.params, "regularization": trial.regularization.describe()}
    atomic_write_text(paths.config, yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    if paths.meta.is_file():
        return
    train, valid = trial.train_indices, trial.valid_indices
    where = f", fold {trial.fold + 1} of {trial.folds} held out" if trial.fold is not None and trial.folds else ""
    sizes = {"train": len(train)} if train is not None else {}
    if valid is not None:
        sizes["valid"] = len(valid)
    atomic_write_json(paths.meta, {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": sys.argv, "seed": trial.seed,
        "objective": ctx.name, "versions": versions(),
        "data": {"origin": f"objective {ctx.name}{where}", "fingerprint": None, "sizes": sizes},
        "host": {"node": platform.node(), "machine": platform.machine(), "system": platform.system(),
                 "cpu_threads": torch.get_num_threads()}})


# -- the final model -----------------------------------------------------------------------------------------


def run_objective_final(store: SweepStore, ctx: ObjectiveContext, point: Point, reuse: str | None,
                        say: Callable[[str], None]) -> dict[str, Any]:
    """The chosen point trained on all training examples into `final/` (a copy of trial `reuse` when that trial
    already is this run: the objective then continues from its checkpoint, trains nothing, and reports the test)."""
    final = store.final
    outcome = _outcome(final)
    if outcome is None:
        source = store.run_dir(reuse) if reuse else None
        if source is not None and not final.exists() and (source / "config.yaml").is_file():
            staging = final.with_name("final.new")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(source, staging, ignore=shutil.ignore_patterns(LOCK_FILE, OUTCOME_FILE))
            (staging / ".reused").write_text(reuse + "\n", encoding="utf-8")
            staging.rename(final)  # a kill leaves final.new, never half a final/
        reused = (final / ".reused").is_file()
        say(f"final: {'continuing trial ' + str(reuse) if reused else 'training ' + point.key} on all training "
            f"examples in {final}")
        train_objective_trial(ctx, TrialJob(FINAL_KEY, point), folder=final)
    reused_trial = (final / ".reused").read_text(encoding="utf-8").strip() if (final / ".reused").is_file() else None
    try:
        test = (read_json_object(final / "eval.json") or {}).get("test")
    except DamagedFile as exc:
        raise exc.saying("it holds the final model's test metrics: remove it and resume the sweep") from None
    if test is None:
        say("final: the objective reported no test metrics (trial.report_test) ")
    history = read_jsonl(RunPaths(final).metrics)
    wall = history[-1]["wall_s"] if history else 0.0
    if reused_trial is not None:  # the copied trial's seconds are counted with the trials already
        earlier = read_jsonl(store.run_dir(reused_trial) / "metrics.jsonl")
        wall = max(0.0, wall - (earlier[-1]["wall_s"] if earlier else 0.0))
    return {"run": str(final.relative_to(store.root)), "reused_trial": reused_trial, "test": test,
            "train_wall_s": wall}
