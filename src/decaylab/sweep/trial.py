"""Train one trial (a point, optionally a fold, optionally up to an epoch budget) into its run folder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from decaylab.config import Config, build_config
from decaylab.errors import DamagedFile
from decaylab.files import read_jsonl
from decaylab.runfolder.checkpoint import load_trainer_state
from decaylab.runfolder.layout import RunPaths
from decaylab.runfolder.lock import FolderLock
from decaylab.sweep.folds import fold_splits
from decaylab.sweep.points import Point, trial_config
from decaylab.sweep.shared import load_shared
from decaylab.sweep.store import SweepStore
from decaylab.training import Trainer, TrainingDiverged

# Statuses of a finished trials.jsonl row; anything else (or no row) means the trial still has work to do.
FINISHED = ("done", "pruned", "diverged")


class StopTrial(Exception):
    """Raised from a trial's monitor to end training at this evaluation (everything up to it is on disk)."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


@dataclass(frozen=True)
class TrialJob:
    """One unit of work: train `point` (on `fold`, with `seed`, up to epoch `budget`) into trials/`key`."""

    key: str
    point: Point
    fold: int | None = None
    budget: float | None = None  # stop at the first evaluation at or past this epoch (halving rungs)
    rung: int | None = None
    seed: int | None = None  # a seed repeat (None: the base config's seed)


# Called with a trial's metric rows after each evaluation; raises StopTrial to end it (Optuna's pruner).
Monitor = Callable[[list[dict[str, Any]]], None]


@dataclass(frozen=True)
class TrialContext:
    """What a worker process needs to run any job of one sweep (plain data, so it pickles for spawn)."""

    root: str
    base: dict[str, Any]
    modes: list[str]
    fingerprint: str
    folds: list[list[int]] | None = None

    def base_config(self) -> Config:
        """The sweep's resolved base configuration."""
        return build_config(self.base, origin=f"{self.root}/sweep.yaml")

    @property
    def threads(self) -> int | None:
        """`train.threads` of the base config: each worker process's share of the cores, if set."""
        return self.base["train"].get("threads")

    def train(self, job: TrialJob, monitor: Monitor | None = None) -> dict[str, Any]:
        """Train (or continue) one job of this sweep and return its trials.jsonl row (decaylab's own trainer; an
        objective's context, sweep/objective.py, calls the user's function instead)."""
        return train_trial(self, job, monitor)


def train_trial(ctx: TrialContext, job: TrialJob, monitor: Monitor | None = None) -> dict[str, Any]:
    """Train (or continue) one trial and return its trials.jsonl row; a finished trial is not retrained.

    The trial's folder is owned throughout (runfolder/lock.py), whichever process (a `--workers` process, a
    `--join` worker on another machine) runs it: what it reads from the folder is what it trains on.
    """
    run = SweepStore(Path(ctx.root)).run_dir(job.key)
    try:
        with FolderLock(run):
            return _train_trial(ctx, job, monitor)
    except DamagedFile as exc:
        if run.resolve() not in exc.path.resolve().parents:
            raise
        raise exc.saying(f"the sweep cannot continue this trial: remove {run} and `decaylab sweep --resume "
                         f"{ctx.root}` trains it again") from None


def _train_trial(ctx: TrialContext, job: TrialJob, monitor: Monitor | None = None) -> dict[str, Any]:
    store = SweepStore(Path(ctx.root))
    base = ctx.base_config()
    shared = load_shared(store.shared, base, ctx.fingerprint)
    splits = shared.splits
    if job.fold is not None:
        assert ctx.folds is not None
        splits = fold_splits(splits, ctx.folds[job.fold], job.fold, len(ctx.folds))
    cfg = trial_config(base, job.point, ctx.modes, job.seed)
    run = store.run_dir(job.key)
    paths = RunPaths(run)
    history = checkpointed_history(paths)

    def on_evaluate(row: dict[str, Any]) -> None:
        history.append(row)
        if monitor is not None:
            monitor(history)
        if job.budget is not None and row["epoch"] >= job.budget - 1e-9:
            raise StopTrial("done")

    status = "done"
    if not _reached(history, job.budget, paths):
        trainer = Trainer(cfg, run, splits=splits, tokenizer=shared.tokenizer, resume=True, quiet=True,
                          init_weights=shared.init_for(job.seed), on_evaluate=on_evaluate)
        try:
            trainer.fit()
        except StopTrial as stop:
            status = stop.status
        except TrainingDiverged:
            status = "diverged"
        history = [row for row in read_jsonl(paths.metrics) if row["step"] <= checkpoint_step(paths)]
    return trial_row(job, history, status, run.relative_to(store.root))


def checkpoint_step(paths: RunPaths) -> int:
    """The step of `checkpoints/last` (0 when there is none yet)."""
    if not (paths.last.exists() or paths.last.with_name("last.old").exists()):
        return 0
    return int(load_trainer_state(paths.last)["progress"]["step"])


def checkpointed_history(paths: RunPaths) -> list[dict[str, Any]]:
    """Metric rows the last checkpoint covers (a kill between writing metrics and the checkpoint adds none)."""
    step = checkpoint_step(paths)
    return [row for row in read_jsonl(paths.metrics) if row["step"] <= step] if step else []


def _reached(history: list[dict[str, Any]], budget: float | None, paths: RunPaths) -> bool:
    """True when the checkpoint already covers the epoch budget, or the run stopped early."""
    if budget is None or not history:
        return False
    progress = load_trainer_state(paths.last)["progress"]
    return history[-1]["epoch"] >= budget - 1e-9 or bool(progress.get("stopped_early"))


def trial_row(job: TrialJob, history: list[dict[str, Any]], status: str, run: Path) -> dict[str, Any]:
    """The trials.jsonl line: the metrics of the best-val-loss evaluation (the checkpoint a final model keeps)."""
    row: dict[str, Any] = {"trial": job.key, **job.point.to_dict(), "fold": job.fold, "seed": job.seed,
                           "rung": job.rung,
                           "budget": job.budget, "epochs": None, "best_epoch": None, "best_val_loss": None,
                           "val_ppl": None, "bleu": None, "chrf": None, "gap": None, "train_loss": None, "wall_s": 0.0,
                           "status": status, "run": str(run)}
    if history:
        best = min(history, key=lambda r: r["val_loss"])
        row.update(epochs=history[-1]["epoch"], best_epoch=best["epoch"], best_val_loss=best["val_loss"],
                   val_ppl=best["val_ppl"], bleu=best.get("bleu"), chrf=best.get("chrf"), gap=best["gap"],
                   train_loss=best.get("train_eval_loss"), wall_s=history[-1]["wall_s"])
    return row
