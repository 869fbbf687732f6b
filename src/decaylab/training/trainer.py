"""One model's training: batch -> loss (+ penalty) -> clip -> step (+ decay); the loop (loop.py) does the rest."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from decaylab.config import Config
from decaylab.data.batching import Batch
from decaylab.data.prepare import encode_run_data, epoch_groups, longest_source, resolve_timescale, total_steps
from decaylab.data.splits import Splits, load_splits
from decaylab.data.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer
from decaylab.device import autocast, resolve_device, seed_everything
from decaylab.errors import DamagedFile, UserError, WriteError
from decaylab.evaluation.metrics import corpus_loss, perplexity
from decaylab.files import atomic_write_jsonl, load_jsonl
from decaylab.models import build_model, count_parameters
from decaylab.regularization import Regularization
from decaylab.runfolder.checkpoint import load_model_weights, load_trainer_state, save_checkpoint
from decaylab.runfolder.layout import RunPaths, build_meta, load_run_config, start_new_run, write_run_header
from decaylab.runfolder.load import other_checkpoint
from decaylab.runfolder.lock import FolderLock, folder_problem
from decaylab.training.loop import RunState, Shard, TrainingLoop, divergence_message, write_failed
from decaylab.training.schedule import lr_multiplier
from decaylab.training.steady import SteadyView

log = logging.getLogger(__name__)


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def optimizer_kwargs(config: Config) -> dict[str, Any]:
    """The torch optimizer keywords of `train.optimizer` beyond lr (momentum for SGD, betas/eps for Adam)."""
    cfg = config.train
    if cfg.optimizer == "sgd":
        return {"momentum": cfg.momentum, "nesterov": cfg.nesterov}
    return {"betas": cfg.betas, "eps": cfg.eps}


@dataclass
class TrainResult:
    """What a finished run reports: its folder, its best evaluation and its metric history."""

    run_dir: Path
    best_val_loss: float
    best_step: int
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False

    @property
    def best(self) -> dict[str, Any]:
        """The metrics row with the lowest validation loss."""
        return min(self.history, key=lambda row: row["val_loss"])


class Trainer:
    """Trains one configuration into one run folder; `fit()` resumes when the folder holds a checkpoint.

    The single-model engine of the training loop (loop.py): it builds the model, optimizer and schedule and
    computes a step; the loop does the run's bookkeeping.

    The Trainer owns its folder (runfolder/lock.py) from construction to the end of `fit()`: another process that
    trains into it is refused. A new run (`resume=False`) in a folder that holds one removes the old run's files
    first (`overwrite=True`) or is refused (`overwrite=False`, what `decaylab train` does without --overwrite).
    """

    # The share of each batch this process trains; a data-parallel rank (distributed.py) sets its own, and one whose
    # `writes` is False never touches the run folder (no lock, no files): rank 0 owns and writes it.
    shard: Shard = Shard()

    def __init__(self, config: Config, run_dir: Path, *, splits: Splits | None = None,
                 tokenizer: Tokenizer | None = None, resume: bool = False, quiet: bool = False,
                 init_weights: dict[str, torch.Tensor] | None = None,
                 on_evaluate: Callable[[dict[str, Any]], None] | None = None, overwrite: bool = True):
        self.config = config
        self.paths = RunPaths(Path(run_dir))
        self.quiet = quiet
        self.resume = resume
        cfg = config.train
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        self.splits = splits if splits is not None else load_splits(config.data)
        # creates the folder; released by fit() (or when dropped)
        self.owner = FolderLock(self.paths.root).acquire() if self.shard.writes else None
        if self.owner is not None:
            weakref.finalize(self, self.owner.release)
        try:
            self._build(tokenizer, init_weights, on_evaluate, overwrite)
        except BaseException:
            if self.owner is not None:
                self.owner.release()  # a Trainer that could not be built owns nothing
            raise

    def _build(self, tokenizer: Tokenizer | None, init_weights: dict[str, torch.Tensor] | None,
               on_evaluate: Callable[[dict[str, Any]], None] | None, overwrite: bool) -> None:
        """Everything after the folder is owned: the old run's files, tokenizer, data, model, optimizer, schedule."""
        config, cfg, resume = self.config, self.config.train, self.resume
        if not resume and self.shard.writes:
            start_new_run(self.paths, overwrite)
        if tokenizer is None and resume and self._has_checkpoint():
            # the checkpoint's vocabulary is this file's: never train a new tokenizer for it
            tokenizer = self.tokenizer = self._run_tokenizer()
        else:
            if tokenizer is None:
                texts = [p.source for p in self.splits.train] + [p.target for p in self.splits.train]
                tokenizer = train_tokenizer(texts, config.tokenizer)
            self.tokenizer = tokenizer
            try:
                if self.shard.writes:
                    save_tokenizer(tokenizer, self.paths.tokenizer)
            except WriteError as exc:
                raise write_failed(self.paths.root, exc) from exc.__cause__
        self.train_data, self.valid_data, self.valid_eval, self.train_eval = encode_run_data(
            config, tokenizer, self.splits)
        # λ from `regularization.tau_epochs` needs this run's steps per epoch; the resolved config (τ, λ and how)
        # is the one the run writes and trains with
        config = self.config = resolve_timescale(config, self.train_data)

        seed_everything(config.seed)
        vocab = tokenizer.get_vocab_size()
        self.model = build_model(config.model, vocab).to(self.device)
        if init_weights is not None:
            self.model.load_state_dict(init_weights, strict=False)
        if config.model.output == "adaptive" and torch.equal(self.model.output_rank.cpu(), torch.arange(vocab)):
            # This run's frequency order, set after the initial weights (a sweep's shared fresh ones carry the
            # identity; trained weights keep the order they were trained with).
            targets = torch.tensor([t for target in self.train_data.targets for t in target], dtype=torch.long)
            self.model.set_output_order(torch.bincount(targets, minlength=vocab))
        # Training steps go through `self.forward`; checkpoints and evaluation use the plain module, whose
        # state dict has the same names either way (a compiled wrapper would prefix them with `_orig_mod.`).
        self.forward = compile_model(self.model, self.device) if cfg.compile else self.model
        self.total_steps = total_steps(config, self.train_data)
        try:
            self.reg = Regularization(**config.regularization.rule_settings())
            self.optimizer = self.reg.optimizer(self.model, cfg.optimizer, lr=cfg.lr, total_steps=self.total_steps,
                                                example=self._example, **optimizer_kwargs(config))
        except ValueError as exc:
            raise UserError(f"regularization: {exc}") from None
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_multiplier(cfg.schedule, cfg.warmup_steps, self.total_steps))
        self.n_params = count_parameters(self.model)
        # the one run this engine trains, as the loop sees it
        self.run = RunState(self.paths.root.name, config, self.paths, on_evaluate=on_evaluate)
        self.active: list[RunState] = [self.run]
        self.one_run = True

    def _example(self) -> torch.Tensor:
        """One forward pass on the first training batch (what a scoped decay scaling traces to find its scope)."""
        group = self._epoch_groups(0)[0]
        return self.model.loss(self.train_data.batch(group).to(self.device))

    def _epoch_groups(self, epoch: int) -> list[list[int]]:
        """Example indices per batch for `epoch` (the order depends only on seed and epoch)."""
        return epoch_groups(self.config, self.train_data, epoch)

    # -- state ---------------------------------------------------------------------------------------
    def _state(self, progress: dict[str, Any]) -> dict[str, Any]:
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "progress": progress,
            # Only torch's generator is drawn from during training (dropout); batch order is seeded per epoch.
            "rng_torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        return state

    def _has_checkpoint(self) -> bool:
        return self.paths.last.exists() or self.paths.last.with_name("last.old").exists()

    def _run_tokenizer(self) -> Tokenizer:
        """The run's own tokenizer.json, which its checkpoints were trained with (missing or damaged: an error)."""
        path = self.paths.tokenizer
        if not path.exists():
            raise UserError(f"{path}: missing; {self.paths.last} was trained with it and a tokenizer trained again "
                            "could have another vocabulary, so the run cannot resume: restore tokenizer.json from a "
                            "copy of the run, or start a new run")
        try:
            return load_tokenizer(path)
        except DamagedFile as exc:
            raise exc.saying(f"{self.paths.last} was trained with it, so the run cannot resume: restore "
                             "tokenizer.json from a copy of the run, or start a new run") from None

    def _restore(self) -> dict[str, Any]:
        """Load `checkpoints/last` into the model, optimizer, schedule and RNG; returns its trainer state."""
        try:
            load_model_weights(self.paths.last, self.model)
            state = load_trainer_state(self.paths.last)
        except DamagedFile as exc:
            raise exc.saying(f"cannot resume from it; {other_checkpoint(self.paths.root, 'last', option='')}"
                             ) from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_torch"])
        if "rng_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        return state

    # -- evaluation ----------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Validation and eval-mode training loss, perplexity, gap, norms, decay factor and λ_t."""
        precision = self.config.train.precision
        val_loss = corpus_loss(self.model, self.valid_eval, self.device, precision=precision)
        train_eval_loss = corpus_loss(self.model, self.train_eval, self.device, precision=precision)
        with torch.no_grad():
            penalty = float(self.reg.penalty(self.model))
        row = {"val_loss": val_loss, "val_ppl": perplexity(val_loss), "train_eval_loss": train_eval_loss,
               "gap": val_loss - train_eval_loss, "penalty": penalty,
               "decay_factor": self.reg.decay_factor(self.optimizer),
               "weight_decay_t": self.reg.weight_decay_now(self.optimizer)}
        row.update(self.reg.norms(self.model))
        if self.config.train.bleu_examples:
            row.update(self.bleu_sample())
        return row

    def bleu_sample(self) -> dict[str, float]:
        """Greedy BLEU/chrF on the first `train.bleu_examples` validation pairs."""
        return bleu_sample(self.model, self.tokenizer, self.splits.valid[: self.config.train.bleu_examples],
                           self.device)

    # -- the engine the loop calls (training/loop.py): one run, K = 1 ----------------------------------
    def train_step(self, batch: Batch) -> torch.Tensor:
        """One optimizer step: [[task loss, task loss + penalty]] on the device."""
        return self._train_step(batch).unsqueeze(0)

    def evaluate_runs(self) -> list[dict[str, float]]:
        """The run's evaluation fields, as a list of one."""
        return [self.evaluate()]

    def lr(self) -> float:
        """The learning rate of the step just taken."""
        return self.optimizer.param_groups[0]["lr"]

    def save(self, k: int, run: RunState, best: bool) -> None:
        """`checkpoints/best` (weights) or `checkpoints/last` (weights + optimizer, schedule, progress, RNG)."""
        if best:
            save_checkpoint(self.paths.best, self.model, None)
        else:
            save_checkpoint(self.paths.last, self.model, self._state(run.progress))

    def drop(self, runs: list[RunState]) -> None:
        """The run stopped (done or diverged): nothing is left to train."""
        self.active = [r for r in self.active if r not in runs]

    def steady_view(self) -> SteadyView:
        """The model's parameters, decay multipliers and the coming step's lr and decay (training/steady.py)."""
        plan = self.reg.plan(self.model)
        return SteadyView(self.active, {i.name: i.param for i in plan.params},
                          {i.name: i.multiplier if i.decayed else 0.0 for i in plan.params}, self.model, self.lr(),
                          lambda: [self.reg.decay_factor(self.optimizer)], stacked=False)

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train until the epochs, max_steps or patience run out; returns the best evaluation."""
        if self.owner is None:  # a data-parallel rank other than 0 owns nothing
            return self._fit()
        with self.owner:  # held since __init__; let go when training ends, however it ends
            return self._fit()

    def _prepare_run(self, run: RunState) -> dict[str, Any] | None:
        """Resume `run` from `checkpoints/last` (its trainer state returned), or start it: config, meta and an
        empty metrics file written (None returned)."""
        if self.resume and (self.paths.last.exists() or self.paths.last.with_name("last.old").exists()):
            state = self._restore()
            run.progress = state["progress"]
            run.history = self._checkpointed_history(run.progress["step"])
            if not self.quiet:
                print(f"resuming {self.paths.root} at step {run.progress['step']} (epoch {run.progress['epoch']})",
                      file=sys.stderr, flush=True)
            return state
        meta = build_meta(self.config, self.splits.fingerprint, self.splits.sizes(), self.splits.origin,
                          self.device, self.n_params)
        meta["data"]["max_source_tokens"] = longest_source(self.train_data)  # generation's input limit
        if self.shard.world > 1:
            meta["data_parallel"] = {"ranks": self.shard.world}  # the same steps as one process; the speed differs
        try:
            write_run_header(self.paths, self.config, meta)
            atomic_write_jsonl(self.paths.metrics, [])
        except WriteError as exc:
            raise write_failed(self.paths.root, exc) from exc.__cause__
        return None

    def _fit(self) -> TrainResult:
        run = self.run
        self._prepare_run(run)
        done = run.progress["stopped_early"] or run.progress["step"] >= self.total_steps
        self.active = [] if done else [run]
        self.model.train()
        TrainingLoop(self, quiet=self.quiet, shard=self.shard).fit()
        if run.status == "diverged":
            raise TrainingDiverged(divergence_message(run))
        progress = run.progress
        return TrainResult(self.paths.root, progress["best_val_loss"], progress["best_step"], run.history,
                           progress["stopped_early"])

    def _checkpointed_history(self, step: int) -> list[dict[str, Any]]:
        """The metrics rows up to the resumed checkpoint's step; a partial last line (a write cut off by a kill or
        a full disk) is dropped, said, and the file rewritten without it."""
        path = self.paths.metrics
        still = ("the run cannot resume with it (a cut-off write leaves only the last line partial); the checkpoints "
                 "are not affected: generate and evaluate still work")
        try:
            content = load_jsonl(path)
        except DamagedFile as exc:
            raise exc.saying(still) from None
        if any(not isinstance(row.get("step"), int) for row in content.rows):
            raise DamagedFile(path, "a row has no integer 'step'", still)
        history = [row for row in content.rows if row["step"] <= step]
        if content.partial_line is not None:
            lost = (f"; the rows after step {history[-1]['step'] if history else 0} up to the checkpoint's step "
                    f"{step} are lost" if not history or history[-1]["step"] < step else "")
            log.warning("%s:%d: dropped a partial last line (a write was cut off); resuming with the %d complete "
                        "rows up to step %d%s", path, content.partial_line, len(history), step, lost)
            try:
                atomic_write_jsonl(path, history)
            except WriteError as exc:
                raise write_failed(self.paths.root, exc) from exc.__cause__
        return history

    def _train_step(self, batch: Batch) -> torch.Tensor:
        """One optimizer step; returns [mean task loss per target token, that plus the penalty] on the device."""
        cfg = self.config.train
        with autocast(self.device, cfg.precision):
            try:
                task = self.forward(batch.src, batch.src_len, batch.tgt_in, batch.tgt_out,
                                    label_smoothing=cfg.label_smoothing, target_index=batch.target_index
                                    ) / batch.n_tokens
            except Exception as exc:
                if cfg.compile and type(exc).__module__.startswith(("torch._dynamo", "torch._inductor")):
                    first = (str(exc).strip().splitlines() or [""])[0]
                    raise UserError(f"train.compile: torch.compile failed on this machine ({type(exc).__name__}: "
                                    f"{first[:300]}); train without it (train.compile=false)") from exc
                raise
        penalty = self.reg.penalty(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        losses = self._backward(task, penalty)
        if cfg.clip_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_norm, foreach=True)
        self.optimizer.step()
        self.scheduler.step()
        return losses

    def _backward(self, task: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
        """Gradients of task loss + penalty; returns [task loss, task loss + penalty] (a data-parallel rank
        overrides it: its task loss is one share of the global batch's)."""
        loss = task + penalty
        loss.backward()
        return torch.stack([task.detach().float(), loss.detach().float()])


def bleu_sample(model: torch.nn.Module, tokenizer: Tokenizer, pairs: list, device: torch.device) -> dict[str, float]:
    """Greedy-decoding BLEU/chrF of `model` on `pairs` (the per-evaluation sample of `train.bleu_examples`)."""
    from decaylab.evaluation.metrics import text_metrics
    from decaylab.generation import translate

    hyps = translate(model, tokenizer, [p.source for p in pairs], method="greedy", device=device)
    scores = text_metrics(hyps, [p.target for p in pairs])
    return {"bleu": scores.bleu, "chrf": scores.chrf}


def compile_model(model: torch.nn.Module, device: torch.device) -> Callable[..., torch.Tensor]:
    """torch.compile'd model for `train.compile`, or a UserError saying why it cannot work here."""
    if not hasattr(torch, "compile"):
        raise UserError(f"train.compile: this torch ({torch.__version__}) has no torch.compile; set "
                        "train.compile=false")
    if device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX") or "g++", "c++", "clang++")):
        # inductor writes C++ for CPU kernels; without a compiler the first step would fail deep in torch
        raise UserError("train.compile: torch.compile on the CPU needs a C++ compiler (g++ or clang++) on PATH; "
                        "install one or set train.compile=false")
    if hasattr(model, "token_loss"):
        # The non-pad selection has a data-dependent size: traced, the rest of the forward would recompile for
        # every batch (seen on torch 2.13). The fused loss after it gains nothing from tracing, so it stays eager.
        model.token_loss = torch.compiler.disable(model.token_loss)
    # dynamic=True: length-bucketed batches change shape every step; static shapes would recompile each time.
    return torch.compile(model, dynamic=True)


def resume_run(run_dir: Path, quiet: bool = False) -> TrainResult:
    """Continue a run from its `checkpoints/last` with its saved config, owning the folder throughout."""
    problem = folder_problem(Path(run_dir))
    if problem is not None:
        raise UserError(problem)
    load_run_config(run_dir)  # not a run folder: refused before anything (the lock file) is written into it
    with FolderLock(Path(run_dir)):
        config = load_run_config(run_dir)  # read again as its owner (a new run may have replaced it meanwhile)
        paths = RunPaths(Path(run_dir))
        if not (paths.last.exists() or paths.last.with_name("last.old").exists()):
            raise UserError(f"{run_dir}: no checkpoints/last to resume from")
        return Trainer(config, run_dir, resume=True, quiet=quiet).fit()
