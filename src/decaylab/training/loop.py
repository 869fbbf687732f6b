"""The one training loop: batches -> engine step -> evaluate -> metrics row -> best/last checkpoints -> stop rules.

The loop owns everything a run's bookkeeping needs, once: the data order, the evaluation cadence, the metrics row
(with the steady-state diagnostics of steady.py), `checkpoints/best` and `checkpoints/last`, early stopping, epoch
budgets, divergence, fault injection and progress.
An engine owns how a step is computed and how its model is built: `SingleEngine` (trainer.py) trains one model,
`StackedEngine` (stacked.py) K replicas as one stacked model; each run it trains has a `RunState` here, and the loop
treats one model as K = 1. Under data parallelism (distributed.py) every rank runs this loop in lock-step on its
`Shard` of each global batch; rank 0 alone writes.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch

from decaylab.config import Config
from decaylab.data.batching import Batch
from decaylab.data.prepare import Encoded, epoch_groups
from decaylab.errors import UserError, WriteError
from decaylab.files import atomic_write_jsonl
from decaylab.runfolder.checkpoint import intact_checkpoints
from decaylab.runfolder.layout import RunPaths
from decaylab.training.progress import StepProgress
from decaylab.training.steady import SteadyProbe, SteadyView

# Fault injection for the resume tests: SIGKILL this process right after the given optimizer step.
KILL_ENV = "DECAYLAB_KILL_AFTER_STEP"


def fresh_progress() -> dict[str, Any]:
    """The `progress` record of a run that has not taken a step (saved in every `trainer_state.pt`)."""
    return {"step": 0, "epoch": 0, "batch": 0, "best_val_loss": math.inf, "best_step": -1, "bad_evals": 0,
            "wall_s": 0.0, "stopped_early": False}


@dataclass(eq=False)
class RunState:
    """One run's bookkeeping in the loop: its folder, progress, metrics history and fate."""

    name: str
    config: Config
    paths: RunPaths
    budget: float | None = None  # stop at this many epochs (a successive-halving rung); None: the config's
    progress: dict[str, Any] = field(default_factory=fresh_progress)
    history: list[dict[str, Any]] = field(default_factory=list)
    status: str | None = None  # None while training; done | diverged
    # Called with each metrics row after it is written and checkpointed; an exception it raises (a sweep pruning
    # the trial) ends training with everything up to that evaluation on disk.
    on_evaluate: Callable[[dict[str, Any]], None] | None = None
    # (step, loss, "training" | "validation") where a loss became non-finite
    diverged_at: tuple[int, float, str] | None = None
    loss_sum: float = 0.0  # token-weighted training loss since the last evaluation

    @property
    def reg(self) -> dict[str, Any]:
        """Its regularization section as `Regularization` arguments (λ resolved)."""
        return self.config.regularization.rule_settings()


def divergence_message(run: RunState) -> str:
    """What a diverged run stopped on and which of its checkpoints are good (one line)."""
    step, value, which = run.diverged_at or (run.progress["step"], math.nan, "training")
    loss = "loss" if which == "training" else "validation loss"
    progress = run.progress
    if progress["best_step"] >= 0:
        kept = (f"the last good checkpoint is in {run.paths.last} (step {progress['step']}) and the best in "
                f"{run.paths.best} (step {progress['best_step']}, val loss {progress['best_val_loss']:.4f})")
    else:
        kept = "no evaluation had a finite validation loss, so no checkpoint was kept"
    return (f"step {step}: the {loss} became {value} (lower train.lr, set train.clip_norm, or check the data); "
            f"stopped, {kept}")


def write_failed(root: Path, exc: WriteError) -> WriteError:
    """A failed write in run folder `root` (a full disk) as one line: what was being written, which checkpoint
    is intact, and how to go on."""
    intact = intact_checkpoints(root)
    if intact.startswith("checkpoints/last"):
        hint = f"continue with `decaylab train --resume {root}` {exc.when}"
    else:
        hint = f"start the run again {exc.when}"
    return WriteError(f"{exc.detail}; {intact}", hint, exc.full)


@dataclass(frozen=True)
class Shard:
    """Which share of every global batch this process trains: data-parallel rank `rank` of `world` (1 of 1 alone)."""

    rank: int = 0
    world: int = 1

    @property
    def writes(self) -> bool:
        """Whether this process writes the run folder (rank 0 only: the others never touch it)."""
        return self.rank == 0

    def cut(self, data: Encoded, group: list[int]) -> Batch:
        """This rank's share of the global batch `group`, counting the global batch's target tokens.

        Strided (`group[rank::world]`), so each rank gets examples from the whole length range of a bucket and about
        the same padding. The share's `n_tokens` stays the global batch's: the step divides its token sum by it,
        so the ranks' gradients average (with DDP's ×world) to the one-process gradient of the global batch.
        """
        if self.world == 1:
            return data.batch(group)
        return replace(data.batch(group[self.rank :: self.world]), n_tokens=data.target_tokens(group))


class Engine(Protocol):
    """How steps are computed for the runs the loop trains (one model, or K stacked replicas)."""

    config: Config  # the settings every run of the engine shares (data, batches, schedule, train section)
    device: torch.device
    train_data: Encoded
    total_steps: int
    active: list[RunState]  # the runs still training, in the engine's order
    # True for an engine of one run (the Trainer): it reports the detailed evaluation line and raises its own
    # error on divergence; an engine of several runs (a stack, even one left with one replica) names its runs
    one_run: bool

    def train_step(self, batch: Batch) -> torch.Tensor:
        """One optimizer step of every active run: [K, 2] (task loss, task loss + penalty) on the device."""
        ...

    def evaluate_runs(self) -> list[dict[str, float]]:
        """Each active run's evaluation fields (val loss, gap, norms, penalty, decay factor, …)."""
        ...

    def lr(self) -> float:
        """The learning rate of the step just taken."""
        ...

    def save(self, k: int, run: RunState, best: bool) -> None:
        """Write active run k's `checkpoints/best` (weights) or `checkpoints/last` (weights + trainer state)."""
        ...

    def drop(self, runs: list[RunState]) -> None:
        """Take stopped runs out of the engine (the others go on unaffected)."""
        ...

    def steady_view(self) -> SteadyView:
        """The active runs' parameters, decay and lr as the steady-state diagnostics read them (steady.py)."""
        ...


class Cancelled(Exception):
    """The loop stopped before a step because its `cancel` event was set (runs side by side: another failed)."""


class TrainingLoop:
    """Trains the engine's active runs to the end of their schedule, budget or patience (or until `cancel` is set:
    `Cancelled` is raised before the next step; what the last evaluation wrote stays, and a resume continues)."""

    def __init__(self, engine: Engine, quiet: bool = False, shard: Shard | None = None,
                 cancel: threading.Event | None = None, bar: bool = True) -> None:
        self.engine = engine
        self.cancel = cancel
        self.bar = bar  # a progress bar on a terminal (else evaluation lines only)
        self.shard = shard or Shard()
        self.quiet = quiet or not self.shard.writes  # rank 0 alone speaks for a data-parallel run
        self.progress_bar: StepProgress | None = None
        self.writing: RunState | None = None  # the run whose metrics and checkpoints are being written
        self.steady = SteadyProbe()  # the steady-state diagnostics of the step before each evaluation

    def fit(self) -> None:
        """Run the loop; each run's `status`, `progress` and `history` hold the outcome."""
        engine = self.engine
        if not engine.active:
            return
        lead = engine.active[0].progress
        self.progress_bar = StepProgress(engine.total_steps, lead["step"], self.quiet, bar=self.bar)
        writers = {run.name: self._tensorboard(run) for run in engine.active
                   if run.config.train.tensorboard and self.shard.writes}
        try:
            with self.progress_bar:
                self._steps(writers)
        except WriteError as exc:  # a full disk: name the run, which checkpoint is intact and how to go on
            if self.writing is None:
                raise
            raise write_failed(self.writing.paths.root, exc) from exc.__cause__
        finally:
            self.progress_bar = None
            for writer in writers.values():
                writer.close()
        for run in engine.active:
            run.status = "done"

    def _steps(self, writers: dict[str, Any]) -> None:
        engine, cfg = self.engine, self.engine.config.train
        kill_after = int(os.environ.get(KILL_ENV, "0") or 0)
        lead = engine.active[0].progress
        step, epoch, batch_index = lead["step"], lead["epoch"], lead["batch"]
        starts = {r.name: time.perf_counter() - r.progress["wall_s"] for r in engine.active}
        window = {"tokens": 0, "start": time.perf_counter()}
        # A step's losses are read back (and checked) after the next step has been queued: on a GPU, reading them
        # at once would leave the device idle while the host queues the next step. A non-finite loss therefore
        # stops its run one step later, still before anything is evaluated or written.
        pending: tuple[int, torch.Tensor, int, list[RunState]] | None = None
        while engine.active and epoch < cfg.epochs and step < engine.total_steps:
            groups = epoch_groups(engine.config, engine.train_data, epoch)
            data = engine.train_data
            for index in range(batch_index, len(groups)):
                if self.cancel is not None and self.cancel.is_set():
                    raise Cancelled
                batch = self.shard.cut(data, groups[index]).to(engine.device)
                runs = list(engine.active)
                # whether this step ends with an evaluation, known before it is taken: only then does the
                # steady-state probe copy the pre-step weights it compares the step's result with
                end_of_epoch = index + 1 == len(groups)
                due = (cfg.eval_every and (step + 1) % cfg.eval_every == 0) or (not cfg.eval_every and end_of_epoch)
                last = step + 1 >= engine.total_steps or (end_of_epoch and epoch + 1 >= cfg.epochs)
                if due or last:
                    self.steady.before_step(engine.steady_view())
                losses = engine.train_step(batch)
                if pending is not None:
                    self._settle(*pending, window)
                pending = (step, losses, batch.n_tokens, runs)
                step += 1
                batch_index = index + 1
                if kill_after and step == kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)
                if end_of_epoch:
                    epoch, batch_index = epoch + 1, 0
                if due or last or not engine.active:
                    self._settle(*pending, window)
                    pending = None
                    if engine.active:
                        position = {"step": step, "epoch": epoch, "batch": batch_index,
                                    "fraction": batch_index / len(groups)}
                        self._evaluate_and_save(position, window, starts, last, writers)
                    window.update(tokens=0, start=time.perf_counter())
                if not engine.active or step >= engine.total_steps:
                    break
        if pending is not None:
            self._settle(*pending, window)

    def _settle(self, step: int, losses: torch.Tensor, n_tokens: int, runs: list[RunState],
                window: dict[str, Any]) -> None:
        """Read back a step's losses (one host sync): a run whose loss is not finite diverged; count the others."""
        values = losses.tolist()
        diverged = []
        for run, (value, total) in zip(runs, values, strict=True):
            if run.status is not None:  # left the engine since the step was queued
                continue
            if not (math.isfinite(value) and math.isfinite(total)):
                run.status, run.diverged_at = "diverged", (step + 1, total, "training")
                diverged.append(run)
                if not self.engine.one_run:  # the Trainer raises its own error (TrainingDiverged)
                    self._say(f"{run.name}: {divergence_message(run)}")
            else:
                run.loss_sum += value * n_tokens
        if diverged:
            self.engine.drop(diverged)
        window["tokens"] += n_tokens
        if self.progress_bar is not None and values:
            self.progress_bar.step(values[0][0])

    def _evaluate_and_save(self, position: dict[str, Any], window: dict[str, Any], starts: dict[str, float],
                           last: bool, writers: dict[str, Any]) -> None:
        engine, cfg = self.engine, self.engine.config.train
        elapsed = time.perf_counter() - window["start"]  # the training window only, not the evaluation
        fields = engine.evaluate_runs()
        steady = self.steady.measure(engine.steady_view())  # the diagnostics of the step just taken, per run
        lr = engine.lr()
        leaving, callbacks, diverged = [], [], []
        for k, (run, extra) in enumerate(zip(list(engine.active), fields, strict=True)):
            if not math.isfinite(extra["val_loss"]):
                # a model whose validation loss is not finite has diverged too: nothing of this evaluation is
                # written, so `best` and `last` keep the last state whose validation loss was finite
                run.status, run.diverged_at = "diverged", (position["step"], extra["val_loss"], "validation")
                diverged.append(run)
                if not engine.one_run:
                    self._say(f"{run.name}: {divergence_message(run)}")
                continue
            self.writing = run
            progress = run.progress
            progress.update(step=position["step"], epoch=position["epoch"], batch=position["batch"])
            row = {"step": position["step"], "epoch": round(position["epoch"] + position["fraction"], 4),
                   "train_loss": run.loss_sum / max(1, window["tokens"]), "lr": lr,
                   "tokens_per_s": window["tokens"] / max(elapsed, 1e-9), **extra, **steady[k]}
            progress["wall_s"] = time.perf_counter() - starts[run.name]
            row["wall_s"] = progress["wall_s"]
            run.history.append(row)
            run.loss_sum = 0.0
            improved = row["val_loss"] < progress["best_val_loss"]
            if improved:
                progress.update(best_val_loss=row["val_loss"], best_step=row["step"], bad_evals=0)
                engine.save(k, run, best=True)
            else:
                progress["bad_evals"] += 1
            if cfg.patience and progress["bad_evals"] >= cfg.patience:
                progress["stopped_early"] = True
            if self.shard.writes:
                atomic_write_jsonl(run.paths.metrics, run.history)
            engine.save(k, run, best=False)
            self._report(run, row, improved, writers.get(run.name))
            if progress["stopped_early"]:
                self._say(f"{self._prefix(run)}early stopping: no val-loss improvement in {cfg.patience} evaluations")
            budget_reached = run.budget is not None and row["epoch"] >= run.budget - 1e-9
            if progress["stopped_early"] or budget_reached or last:
                run.status = "done"
                leaving.append(run)
            if run.on_evaluate is not None:
                callbacks.append((run.on_evaluate, row))
        if not engine.one_run:
            self._say(f"step {position['step']}: val loss " + " ".join(
                f"{r.name}={r.history[-1]['val_loss']:.4f}" for r in engine.active if r not in diverged))
        if leaving or diverged:
            engine.drop(leaving + diverged)
        self.writing = None
        for callback, row in callbacks:
            callback(row)

    def _prefix(self, run: RunState) -> str:
        return "" if self.engine.one_run else f"{run.name}: "

    def _report(self, run: RunState, row: dict[str, Any], improved: bool, writer: Any) -> None:
        if writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "step":
                    writer.add_scalar(key, value, row["step"])
        if not self.engine.one_run:
            return  # a stack reports one line for all its runs
        extra = f" bleu {row['bleu']:.2f}" if "bleu" in row else ""
        self._say(f"step {row['step']:>6} ep {row['epoch']:6.2f} | train {row['train_loss']:.4f} "
                  f"| val {row['val_loss']:.4f} ppl {row['val_ppl']:.2f}{extra} | gap {row['gap']:+.4f} "
                  f"| |w_decay| {row['decay_norm']:.2f} | {row['tokens_per_s']:.0f} tok/s" + (" *" if improved else ""))

    def _tensorboard(self, run: RunState) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("train.tensorboard: needs the tensorboard package "
                            "(pip install 'decaylab[tensorboard]')") from None
        return SummaryWriter(str(run.paths.root / "tensorboard"))

    def _say(self, message: str) -> None:
        if self.progress_bar is not None:
            self.progress_bar.say(message)
        elif not self.quiet:
            print(message, file=sys.stderr, flush=True)
