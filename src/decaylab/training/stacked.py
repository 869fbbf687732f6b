"""Train K configurations that differ only in regularization and dropout at once, as one stacked model.

The engine of `decaylab sweep --vectorized`. Every replica sees the batches a single run of its config sees
(same seed, same bucket order, same schedule) and follows its independent run's trajectory to float rounding:
- forward/backward: `StackedSeq2Seq` (batched GEMMs over the replica dimension);
- one optimizer (Adam or SGD, `weight_decay=0`) on the stacked tensors: both are elementwise, so replica k's
  slice gets exactly its own update;
- regularization per replica and per tensor, in the order a single run applies it: `l2` (λ·m·w) and `l1`
  (λ₁·m·sign w) join the gradient before clipping (they are loss terms), `coupled` (λ·m·w) after clipping
  (torch Adam/SGD add it inside the step), `decoupled` multiplies w by 1 − c_t·λ·m before the step (AdamW's
  and SGDW's order);
- gradient clipping per replica (the norm over that replica's slices of every gradient);
- early stopping, epoch budgets and divergence per replica: a replica that stops leaves the stack (its slices
  are dropped), so the others run faster and are unaffected.
Each replica writes the ordinary run folder of a single run (config, meta, metrics.jsonl, best/last checkpoints
with a `Trainer`-format optimizer state), so `Trainer(resume=True)` can continue any of them, and a killed
vectorized run resumes from those folders.
"""

from __future__ import annotations

import copy
import math
import os
import signal
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from decaylab.config import Config, config_to_dict
from decaylab.data.batching import collate
from decaylab.data.splits import Splits
from decaylab.errors import UserError
from decaylab.evaluation.metrics import autocast, corpus_losses, perplexity
from decaylab.files import atomic_write_jsonl, read_jsonl
from decaylab.models import build_model, count_parameters
from decaylab.models.stacked_rnn import StackedSeq2Seq
from decaylab.regularization import Regularization
from decaylab.regularization.optim import _get_fused_kernels_supported_devices
from decaylab.training.checkpoint import load_trainer_state, resolve_checkpoint, save_checkpoint
from decaylab.training.run_files import RunPaths, build_meta, write_run_header
from decaylab.training.schedule import lr_multiplier
from decaylab.training.trainer import (
    KILL_ENV,
    bleu_sample,
    encode_run_data,
    epoch_groups,
    optimizer_kwargs,
    resolve_device,
    seed_everything,
    total_steps,
)

# Settings that may differ between replicas; everything else must be equal (same data, batches and schedule).
REPLICA_FIELDS = {"regularization": ("mode", "weight_decay", "l1", "decay_scaling"), "model": ("dropout",),
                  "": ("seed",)}  # "" is the top level; the data order (`data_seed`) stays shared


def shared_settings(config: Config) -> dict[str, Any]:
    """The config without the per-replica fields: replicas of one stack must agree on all of it."""
    raw = config_to_dict(config)
    raw["data_seed"] = config.order_seed
    for section, keys in REPLICA_FIELDS.items():
        for key in keys:
            (raw[section] if section else raw).pop(key, None)
    return raw


def _parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def replica_seed(seed: int, name: str) -> int:
    """Seed of a replica's dropout generator: from the run seed and the replica's name, not its stack position."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


@dataclass(eq=False)
class Replica:
    """One configuration in the stack and its bookkeeping (kept when it leaves the stack)."""

    name: str
    config: Config
    paths: RunPaths
    budget: float | None
    groups: list[dict[str, Any]]  # its Trainer optimizer's param_groups (names, hyperparameters)
    generator: torch.Generator
    progress: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    status: str | None = None  # None while training; done | diverged
    loss_sum: float = 0.0

    @property
    def reg(self) -> dict[str, Any]:
        """Its regularization section."""
        return self.config.regularization.model_dump()


class StackedTrainer:
    """Trains `configs` into `run_dirs` as one stacked model; `fit()` returns each replica's final status."""

    def __init__(self, configs: list[Config], run_dirs: list[Path], *, splits: Splits, tokenizer: Tokenizer,
                 init_weights: dict[str, torch.Tensor] | list[dict[str, torch.Tensor]] | None = None,
                 budgets: list[float | None] | None = None,
                 names: list[str] | None = None, resume: bool = True, quiet: bool = True):
        if not configs or len(configs) != len(run_dirs):
            raise ValueError(f"{len(configs)} configs for {len(run_dirs)} run folders")
        if configs[0].model.arch != "rnn":
            raise UserError(f"the stacked model is the RNN's: it needs model.arch 'rnn' (model.arch is "
                            f"{configs[0].model.arch!r})")
        if configs[0].model.output != "full":
            raise UserError(f"the stacked model has the full softmax only (model.output is "
                            f"{configs[0].model.output!r})")
        reference = shared_settings(configs[0])
        for cfg in configs[1:]:
            if shared_settings(cfg) != reference:
                raise ValueError("replicas of one stack may differ only in " + ", ".join(
                    f"{s}.{k}" if s else k for s, keys in REPLICA_FIELDS.items() for k in keys)
                    + " (a different seed needs a shared data_seed)")
        base = self.base = configs[0]
        cfg = base.train
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        self.quiet = quiet
        self.splits, self.tokenizer = splits, tokenizer
        self.train_data, _, self.valid_eval, self.train_eval = encode_run_data(base, tokenizer, splits)

        if isinstance(init_weights, list) and len(init_weights) != len(configs):
            raise ValueError(f"{len(init_weights)} initial weight sets for {len(configs)} replicas")
        # Each replica starts where its independent run would: the given weights, else its own seed's draw.
        # Replicas that start alike share one model; the first replica's serves as the template (names, decay
        # plan, optimizer groups).
        models: dict[tuple[str, int], torch.nn.Module] = {}
        starts = []
        for i, config in enumerate(configs):
            given = init_weights[i] if isinstance(init_weights, list) else init_weights
            key = ("given", id(given)) if given is not None else ("seed", config.seed)
            if key not in models:
                models[key] = self._draw(config.seed, given)
            starts.append(key)
        self.template = models[starts[0]]
        self.names = [name for name, _ in self.template.named_parameters()]
        self.n_params = count_parameters(self.template)
        names = names or [Path(d).name for d in run_dirs]
        budgets = budgets or [None] * len(configs)
        self.replicas = [self._replica(c, Path(d), n, b) for c, d, n, b in zip(configs, run_dirs, names, budgets,
                                                                                strict=True)]
        initial = {key: _parameters(model) for key, model in models.items()}
        self.initial = {replica.name: initial[key] for replica, key in zip(self.replicas, starts, strict=True)}
        plan = Regularization(**self.replicas[0].reg).plan(self.template)
        self.multiplier = {info.name: (info.multiplier if info.decayed else 0.0) for info in plan.params}
        self.total_steps = total_steps(base, self.train_data)

        weights, states, sched_state, lr = self._start(resume)
        self.active = [r for r in self.replicas if r.status is None]
        self.params: dict[str, torch.Tensor] = {}
        if self.active:
            self.params = {name: torch.stack([weights[r.name][name] for r in self.active]).to(self.device)
                           .requires_grad_(True) for name in self.names}
            self._build(states, sched_state, lr)

    # -- setup ---------------------------------------------------------------------------------------
    def _draw(self, seed: int, weights: dict[str, torch.Tensor] | None) -> torch.nn.Module:
        """A `Seq2Seq` as a single run with `seed` builds it (then loaded with `weights`, if given)."""
        seed_everything(seed)
        model = build_model(self.base.model, self.tokenizer.get_vocab_size())
        if weights is not None:
            model.load_state_dict(weights, strict=False)
        return model

    def _replica(self, config: Config, run_dir: Path, name: str, budget: float | None) -> Replica:
        try:
            reg = Regularization(**config.regularization.model_dump())
            optimizer = reg.optimizer(self.template, config.train.optimizer, lr=config.train.lr,
                                      **optimizer_kwargs(config))
        except ValueError as exc:
            raise UserError(f"regularization: {exc}") from None
        generator = torch.Generator(device=self.device)
        generator.manual_seed(replica_seed(config.seed, name))
        return Replica(name, config, RunPaths(run_dir), budget, optimizer.state_dict()["param_groups"], generator)

    def _start(self, resume: bool):
        """Fresh replicas start from the template; a replica with a checkpoint continues from it."""
        weights: dict[str, dict[str, torch.Tensor]] = {}
        states: dict[str, dict[str, dict[str, torch.Tensor]]] = {}  # replica -> parameter -> optimizer slots
        sched_state, lr, step = None, None, None
        for replica in self.replicas:
            paths = replica.paths
            paths.root.mkdir(parents=True, exist_ok=True)
            has_checkpoint = paths.last.exists() or paths.last.with_name("last.old").exists()
            if resume and has_checkpoint:
                folder = resolve_checkpoint(paths.last)
                state = load_trainer_state(folder)
                saved = load_file(str(folder / "model.safetensors"))
                weights[replica.name] = {n: saved[n] for n in self.names}
                replica.progress = state["progress"]
                replica.history = [r for r in read_jsonl(paths.metrics) if r["step"] <= replica.progress["step"]]
                if "rng_replica" in state:
                    replica.generator.set_state(state["rng_replica"].to(replica.generator.get_state().device))
                if replica.progress["stopped_early"] or replica.progress["step"] >= self.total_steps or (
                        replica.budget is not None and replica.history
                        and replica.history[-1]["epoch"] >= replica.budget - 1e-9):
                    replica.status = "done"
                    continue
                if step is not None and replica.progress["step"] != step:
                    raise ValueError(f"{paths.root}: at step {replica.progress['step']}, the others at {step}; "
                                     "a stack resumes replicas that stopped at the same step")
                step = replica.progress["step"]
                states[replica.name] = _optimizer_state_by_name(state["optimizer"])
                sched_state, lr = state["scheduler"], state["optimizer"]["param_groups"][0]["lr"]
            else:
                weights[replica.name] = self.initial[replica.name]
                replica.progress = {"step": 0, "epoch": 0, "batch": 0, "best_val_loss": math.inf, "best_step": -1,
                                    "bad_evals": 0, "wall_s": 0.0, "stopped_early": False}
                write_run_header(paths, replica.config, self._meta(replica))
                self.tokenizer.save(str(paths.tokenizer))
                atomic_write_jsonl(paths.metrics, [])
                if step not in (None, 0):
                    raise ValueError(f"{paths.root}: a fresh replica cannot join a stack resumed at step {step}")
                step = 0
                states[replica.name] = {}
        active = [r.name for r in self.replicas if r.status is None]
        stacked: dict[str, dict[str, torch.Tensor]] | None = None
        if step and active:
            stacked = {}
            for name in self.names:
                per = [states[r].get(name) for r in active]
                if all(per):
                    stacked[name] = {key: _stack_slot([slots[key] for slots in per], self.device) for key in per[0]}
        return weights, stacked, sched_state, lr

    def _meta(self, replica: Replica) -> dict[str, Any]:
        meta = build_meta(replica.config, self.splits.fingerprint, self.splits.sizes(), self.splits.origin,
                          self.device, self.n_params)
        meta["engine"] = {"name": "vectorized", "replicas": [r.name for r in self.replicas]}
        return meta

    def _build(self, states: dict[str, dict[str, torch.Tensor]] | None, sched_state: dict[str, Any] | None,
               lr: float | None) -> None:
        """The stacked model, optimizer, schedule and per-replica coefficients for the active replicas."""
        cfg = self.base.train
        params = list(self.params.values())
        if cfg.optimizer in ("adam", "adamw"):
            fused = all(p.device.type in set(_get_fused_kernels_supported_devices()) for p in params)
            self.optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=0.0,
                                              **({"fused": True} if fused else {"foreach": True}))
        else:
            self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                                             weight_decay=0.0, foreach=True)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_multiplier(cfg.schedule, cfg.warmup_steps, self.total_steps))
        if states:
            for name, state in states.items():
                self.optimizer.state[self.params[name]] = state
        if sched_state is not None:
            self.scheduler.load_state_dict({**sched_state, **{k: v[:1] for k, v in sched_state.items()
                                                             if isinstance(v, list)}})
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        self.model = StackedSeq2Seq(self.base.model, self.params, [r.config.model.dropout for r in self.active],
                                    [r.generator for r in self.active])

        regs = [r.reg for r in self.active]
        coefficients = {
            "l2": [g["weight_decay"] if g["mode"] == "l2" else 0.0 for g in regs],
            "l1": [g["l1"] for g in regs],
            "coupled": [g["weight_decay"] if g["mode"] == "coupled" else 0.0 for g in regs],
            "decoupled": [g["weight_decay"] if g["mode"] == "decoupled" else 0.0 for g in regs],
            "by_schedule": [1.0 if g["decay_scaling"] == "schedule" else 0.0 for g in regs],
        }
        for name, values in coefficients.items():
            setattr(self, name, torch.tensor(values, dtype=torch.float32, device=self.device))
        # which terms any replica uses, decided once here, not tested on the device every step (a GPU sync each)
        self.uses = {name: any(values) for name, values in coefficients.items()}
        self.has_penalty = self.uses["l2"] or self.uses["l1"]
        # per decayed tensor, each term in use as λ·m per replica, shaped to broadcast over the tensor
        self.decay_terms = [
            (p, {term: self._shape(getattr(self, term) * self.multiplier[name], p)
                 for term in ("l2", "l1", "coupled", "decoupled") if self.uses[term]})
            for name, p in self.params.items() if self.multiplier[name]]

    def _drop(self, leaving: list[Replica]) -> None:
        """Take stopped replicas out of the stack (their slices of parameters, gradients and state)."""
        keep = [i for i, r in enumerate(self.active) if r not in leaving]
        self.active = [self.active[i] for i in keep]
        if not self.active:
            return
        index = torch.tensor(keep, device=self.device)
        params, states = {}, {}
        for name, p in self.params.items():
            q = p.detach().index_select(0, index).clone().requires_grad_(True)
            if p.grad is not None:
                q.grad = p.grad.index_select(0, index)
            params[name] = q
            old = self.optimizer.state.get(p, {})
            states[name] = {k: _slice(v, index) for k, v in old.items()}
        lr = self.optimizer.param_groups[0]["lr"]
        sched_state = self.scheduler.state_dict()
        self.params = params
        self._build({n: s for n, s in states.items() if s}, sched_state, lr)

    @torch.no_grad()
    def penalties(self) -> torch.Tensor:
        """Each active replica's loss-side penalty (λ/2)Σ m‖w‖² (mode l2) + λ₁Σ m‖w‖₁ [K], as reg.penalty."""
        total = torch.zeros(len(self.active), device=self.device)
        for name, p in self.params.items():
            m = self.multiplier[name]
            if m:
                flat = p.float().flatten(1)
                total += m * (0.5 * self.l2 * flat.square().sum(1) + self.l1 * flat.abs().sum(1))
        return total

    # -- one step ------------------------------------------------------------------------------------
    def _shape(self, values: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return values.view(-1, *([1] * (p.dim() - 1)))

    def _train_step(self, batch) -> list[float]:
        """One step of every active replica; returns each one's mean task loss (NaN marks a diverged one)."""
        cfg = self.base.train
        with autocast(self.device, cfg.precision):
            task = self.model(batch.src, batch.src_len, batch.tgt_in, batch.tgt_out,
                              label_smoothing=cfg.label_smoothing, target_index=batch.target_index) / batch.n_tokens
        # as the Trainer: a replica whose loss with its penalty overflows has diverged too (one host sync for both)
        losses = task.detach().float()
        if self.has_penalty:
            values, totals = torch.stack([losses, losses + self.penalties()]).tolist()
        else:
            values = totals = losses.tolist()
        finite = [i for i, (v, t) in enumerate(zip(values, totals, strict=True))
                  if math.isfinite(v) and math.isfinite(t)]
        for p in self.params.values():
            p.grad = None
        if not finite:
            self._diverge(list(self.active))
            return []
        (task if len(finite) == len(values) else task[finite]).sum().backward()
        if len(finite) < len(values):
            self._diverge([r for i, r in enumerate(self.active) if i not in finite])
            values = [values[i] for i in finite]
        self._regularize_and_step()
        return values

    def _diverge(self, diverged: list[Replica]) -> None:
        for replica in diverged:
            replica.status = "diverged"
            step = replica.progress["step"] + 1
            self._say(f"{replica.name}: step {step}: the loss became non-finite; stopped, the last good checkpoint "
                      f"is in {replica.paths.last}")
        self._drop(diverged)

    @torch.no_grad()
    def _regularize_and_step(self) -> None:
        cfg = self.base.train
        for p, coef in self.decay_terms:  # loss terms: part of the gradient that is clipped
            if "l2" in coef:
                p.grad.addcmul_(p, coef["l2"])
            if "l1" in coef:
                p.grad.addcmul_(torch.sign(p), coef["l1"])
        if cfg.clip_norm:
            norms = torch.stack([p.grad.flatten(1).norm(dim=1) for p in self.params.values()])
            total = norms.norm(dim=0)
            clip = torch.clamp(cfg.clip_norm / (total + 1e-6), max=1.0)
            for p in self.params.values():
                p.grad.mul_(self._shape(clip, p))
        for p, coef in self.decay_terms:
            if "coupled" in coef:
                p.grad.addcmul_(p, coef["coupled"])
        if self.uses["decoupled"]:
            lr = self.optimizer.param_groups[0]["lr"]
            scale = lr * (1.0 - self.by_schedule) + (lr / cfg.lr) * self.by_schedule  # c_t per replica
            for p, coef in self.decay_terms:
                p.mul_(1.0 - self._shape(scale, p) * coef["decoupled"])
        self.optimizer.step()
        self.scheduler.step()

    # -- evaluation ----------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> list[dict[str, float]]:
        """Each active replica's evaluation row fields (as `Trainer.evaluate`)."""
        precision = self.base.train.precision
        val = corpus_losses(self.model, self.valid_eval, self.device, precision=precision).tolist()
        train = corpus_losses(self.model, self.train_eval, self.device, precision=precision).tolist()
        zero = torch.zeros(len(self.active), device=self.device)
        sq = {n: p.float().flatten(1).square().sum(1) for n, p in self.params.items()}
        decayed = [n for n in self.names if self.multiplier[n]]
        decay_sq = sum((sq[n] for n in decayed), zero)
        rest_sq = sum((sq[n] for n in self.names if not self.multiplier[n]), zero)
        penalty = self.penalties().tolist()
        norms = torch.stack([decay_sq, rest_sq]).sqrt().tolist()
        total = (decay_sq + rest_sq).sqrt().tolist()
        lr = self.optimizer.param_groups[0]["lr"]
        rows = []
        for k, replica in enumerate(self.active):
            reg = replica.reg
            factor = 1.0
            if reg["mode"] == "decoupled":
                factor = 1.0 - (lr / self.base.train.lr if reg["decay_scaling"] == "schedule" else lr) * \
                    reg["weight_decay"]
            row = {"val_loss": val[k], "val_ppl": perplexity(val[k]), "train_eval_loss": train[k],
                   "gap": val[k] - train[k], "penalty": penalty[k], "decay_factor": factor,
                   "decay_norm": norms[0][k], "nodecay_norm": norms[1][k], "weight_norm": total[k]}
            if self.base.train.bleu_examples:
                row.update(bleu_sample(self.replica_model(k), self.tokenizer,
                                       self.splits.valid[: self.base.train.bleu_examples], self.device))
            rows.append(row)
        return rows

    def replica_tensors(self, k: int) -> dict[str, torch.Tensor]:
        """Active replica k's weights under `Seq2Seq`'s names (tied weights once), on the CPU."""
        return {name: p[k].detach().contiguous().cpu() for name, p in self.params.items()}

    def replica_model(self, k: int) -> torch.nn.Module:
        """A `Seq2Seq` holding active replica k's weights (for decoding)."""
        model = build_model(self.active[k].config.model, self.tokenizer.get_vocab_size())
        model.load_state_dict(self.replica_tensors(k), strict=False)
        return model.to(self.device).eval()

    def _trainer_state(self, k: int, replica: Replica) -> dict[str, Any]:
        """Replica k's `checkpoints/last/trainer_state.pt` in the format `Trainer._restore` reads."""
        lr = self.optimizer.param_groups[0]["lr"]
        groups = copy.deepcopy(replica.groups)
        state: dict[int, dict[str, torch.Tensor]] = {}
        for group in groups:
            group.update(lr=lr, initial_lr=self.base.train.lr)
            for index, name in zip(group["params"], group["param_names"], strict=True):
                slots = self.optimizer.state.get(self.params[name], {})
                if slots:
                    state[index] = {key: _slice(v, torch.tensor([k], device=self.device), one=True)
                                    for key, v in slots.items()}
        scheduler = {key: (value * len(groups) if isinstance(value, list) and len(value) == 1 else value)
                     for key, value in self.scheduler.state_dict().items()}
        result = {"optimizer": {"state": state, "param_groups": groups}, "scheduler": scheduler,
                  "progress": dict(replica.progress), "rng_torch": torch.get_rng_state(),
                  "rng_replica": replica.generator.get_state().cpu()}
        if torch.cuda.is_available():
            result["rng_cuda"] = torch.cuda.get_rng_state_all()
        return result

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self) -> list[Replica]:
        """Train every active replica to the end of its schedule, budget or patience; returns all replicas."""
        cfg = self.base.train
        if not self.active:
            return self.replicas
        kill_after = int(os.environ.get(KILL_ENV, "0") or 0)
        lead = self.active[0].progress
        step, epoch, batch_index = lead["step"], lead["epoch"], lead["batch"]
        starts = {r.name: time.perf_counter() - r.progress["wall_s"] for r in self.active}
        tok_sum, window = 0, time.perf_counter()
        while self.active and epoch < cfg.epochs and step < self.total_steps:
            groups = epoch_groups(self.base, self.train_data, epoch)
            data = self.train_data
            for index in range(batch_index, len(groups)):
                batch = collate([data.sources[i] for i in groups[index]],
                                [data.targets[i] for i in groups[index]]).to(self.device)
                values = self._train_step(batch)
                if not self.active:
                    break
                for replica, value in zip(self.active, values, strict=True):
                    replica.loss_sum += value * batch.n_tokens
                tok_sum += batch.n_tokens
                step += 1
                batch_index = index + 1
                if kill_after and step == kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)
                end_of_epoch = batch_index == len(groups)
                if end_of_epoch:
                    epoch, batch_index = epoch + 1, 0
                due = (cfg.eval_every and step % cfg.eval_every == 0) or (not cfg.eval_every and end_of_epoch)
                last = step >= self.total_steps or (end_of_epoch and epoch >= cfg.epochs)
                if due or last:
                    position = {"step": step, "epoch": epoch, "batch": batch_index,
                                "fraction": batch_index / len(groups)}
                    self._evaluate_and_save(position, tok_sum, time.perf_counter() - window, starts, last)
                    tok_sum, window = 0, time.perf_counter()
                if not self.active or step >= self.total_steps:
                    break
        for replica in self.active:
            replica.status = "done"
        return self.replicas

    def _evaluate_and_save(self, position: dict[str, Any], tokens: int, elapsed: float, starts: dict[str, float],
                           last: bool) -> None:
        cfg = self.base.train
        fields = self.evaluate()
        lr = self.optimizer.param_groups[0]["lr"]
        leaving = []
        for k, (replica, extra) in enumerate(zip(self.active, fields, strict=True)):
            progress = replica.progress
            progress.update(step=position["step"], epoch=position["epoch"], batch=position["batch"])
            row = {"step": position["step"], "epoch": round(position["epoch"] + position["fraction"], 4),
                   "train_loss": replica.loss_sum / max(1, tokens), "lr": lr,
                   "tokens_per_s": tokens / max(elapsed, 1e-9), **extra}
            progress["wall_s"] = time.perf_counter() - starts[replica.name]
            row["wall_s"] = progress["wall_s"]
            replica.history.append(row)
            replica.loss_sum = 0.0
            improved = row["val_loss"] < progress["best_val_loss"]
            tensors = self.replica_tensors(k)
            if improved:
                progress.update(best_val_loss=row["val_loss"], best_step=row["step"], bad_evals=0)
                save_checkpoint(replica.paths.best, tensors, None)
            else:
                progress["bad_evals"] += 1
            if cfg.patience and progress["bad_evals"] >= cfg.patience:
                progress["stopped_early"] = True
            atomic_write_jsonl(replica.paths.metrics, replica.history)
            save_checkpoint(replica.paths.last, tensors, self._trainer_state(k, replica))
            budget_reached = replica.budget is not None and row["epoch"] >= replica.budget - 1e-9
            if progress["stopped_early"] or budget_reached or last:
                replica.status = "done"
                leaving.append(replica)
        self._say(f"step {position['step']}: val loss " + " ".join(
            f"{r.name}={r.history[-1]['val_loss']:.4f}" for r in self.active))
        if leaving and not last:
            self._drop(leaving)
        elif last:
            self.active = []

    def _say(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)


def _stack_slot(values: list[Any], device: torch.device) -> Any:
    """The replicas' entries of one optimizer slot stacked (a shared scalar such as Adam's step kept once)."""
    first = values[0]
    if not isinstance(first, torch.Tensor):
        return first
    return (torch.stack(values) if first.dim() else first).to(device)


def _slice(value: Any, index: torch.Tensor, one: bool = False) -> Any:
    """Rows `index` of a per-replica optimizer state entry; shared scalars (Adam's step) and non-tensors as is.

    With `one`, the single row as an unstacked CPU tensor (a replica's own state, in the Trainer's format).
    """
    if not isinstance(value, torch.Tensor):
        return value
    out = value.detach().clone() if value.dim() == 0 else value.detach().index_select(0, index)
    if not one:
        return out
    return (out if value.dim() == 0 else out[0]).cpu()


def _optimizer_state_by_name(optimizer_state: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    """A Trainer-format optimizer state keyed by parameter name instead of index."""
    by_name = {}
    for group in optimizer_state["param_groups"]:
        for index, name in zip(group["params"], group["param_names"], strict=True):
            if index in optimizer_state["state"]:
                by_name[name] = optimizer_state["state"][index]
    return by_name
