"""The stacked engine: K configurations that differ only in regularization, dropout and seed, as one stacked model.

The engine of `decaylab sweep --vectorized`, driven by the one training loop (loop.py), for every architecture
with a stacked form (`models.STACKED_MODELS`: the RNN, the Transformer, the decoder LM). Every replica sees the
batches a single run of its config sees (same data order, same schedule) and follows its independent run's
trajectory to float rounding:
- forward/backward: the architecture's stacked model (batched GEMMs over the replica dimension);
- one optimizer (Adam or SGD, `weight_decay=0`, `regularization.optim.base_optimizer`) on the stacked tensors: both
  are elementwise, so replica k's slice gets exactly its own update;
- every decay rule per replica and per tensor through `ReplicaDecay` (the rule registry's kernels), in a single
  run's order: loss terms before clipping, clipping per replica, gradient terms after, decoupled decay before the
  update; a rule without a stacked kernel is refused by name;
- early stopping, epoch budgets and divergence per replica are the loop's: a replica that stops leaves the stack
  (its slices are dropped), so the others run faster and are unaffected;
- on a CPU, `ReplicaGroups` (replica_groups.py) splits a vectorized run's replicas into stacks of this engine
  that train side by side, one per core (`train.replica_groups`).
Each replica writes the ordinary run folder of a single run (config, meta, metrics.jsonl, best/last checkpoints
with a `Trainer`-format optimizer state), so `Trainer(resume=True)` can continue any of them, and a killed
vectorized run resumes from those folders.

Dropout: each replica draws from its own generator, so its masks do not depend on which replicas share the stack.
Where the stacked model makes a single model's very draws (`SEQUENTIAL_MASKS`: the Transformers, on the CPU),
that generator starts in the state the global generator has in the replica's sequential run after the model is
built, so the replica gets that run's masks bit for bit, and its checkpoint's `rng_torch` is that stream (a
`Trainer` resuming the folder goes on with the same masks). Otherwise (the RNN; a GPU) it is seeded from the run
seed and the replica's name: the masks agree with a sequential run's in distribution only.
"""

from __future__ import annotations

import copy
import threading
import weakref
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from decaylab.config import TIMESCALE_FIELDS, Config, config_to_dict
from decaylab.data.batching import Batch
from decaylab.data.prepare import encode_run_data, longest_source, resolve_timescale, total_steps
from decaylab.data.splits import Splits
from decaylab.data.tokenizer import save_tokenizer
from decaylab.device import autocast, resolve_device, seed_everything
from decaylab.errors import UserError
from decaylab.evaluation.metrics import corpus_losses, perplexity
from decaylab.files import atomic_write_jsonl, read_jsonl
from decaylab.models import STACKED_MODELS, build_model, build_stacked, count_parameters
from decaylab.regularization import RULES, Regularization, ReplicaDecay, UnsupportedRule
from decaylab.regularization.optim import base_optimizer
from decaylab.regularization.rules import RULE_FIELDS
from decaylab.runfolder.checkpoint import (
    MODEL_FILE,
    load_trainer_state,
    read_tensors,
    resolve_checkpoint,
    save_checkpoint,
)
from decaylab.runfolder.layout import RunPaths, build_meta, write_run_header
from decaylab.runfolder.lock import FolderLock
from decaylab.training.loop import RunState, TrainingLoop, fresh_progress
from decaylab.training.schedule import lr_multiplier
from decaylab.training.steady import SteadyView
from decaylab.training.trainer import bleu_sample, optimizer_kwargs

# Settings that may differ between replicas; everything else must be equal (same data, batches and schedule).
# The regularization fields are the registry's: the mode, decay scaling and λ schedule, every rule's strength, and
# the timescale τ that may stand for λ.
REPLICA_FIELDS = {"regularization": (*RULE_FIELDS, *dict.fromkeys(r.strength for r in RULES.values() if r.strength),
                                     *TIMESCALE_FIELDS),
                  "model": ("dropout",),
                  "": ("seed",)}  # "" is the top level; the data order (`data_seed`) stays shared


def shared_settings(config: Config) -> dict[str, Any]:
    """The config without the per-replica fields: replicas of one stack must agree on all of it."""
    raw = config_to_dict(config)
    raw["data_seed"] = config.order_seed
    for section, keys in REPLICA_FIELDS.items():
        for key in keys:
            (raw[section] if section else raw).pop(key, None)
    return raw


def check_stack(configs: list[Config]) -> None:
    """Refuse configs that cannot train as one stack: an architecture without a stacked form, an adaptive output,
    replicas that differ in more than the per-replica fields, a rule without a stacked kernel."""
    if configs[0].model.arch not in STACKED_MODELS:
        raise UserError(f"the stacked engine has no stacked form of model.arch {configs[0].model.arch!r} (it "
                        f"trains {', '.join(map(repr, STACKED_MODELS))}); train it without --vectorized")
    if configs[0].model.output != "full":
        raise UserError(f"the stacked model has the full softmax only (model.output is {configs[0].model.output!r})")
    reference = shared_settings(configs[0])
    for cfg in configs[1:]:
        if shared_settings(cfg) != reference:
            raise ValueError("replicas of one stack may differ only in " + ", ".join(
                f"{s}.{k}" if s else k for s, keys in REPLICA_FIELDS.items() for k in keys)
                + " (a different seed needs a shared data_seed)")
    try:  # a rule the stack cannot run is refused by name, before anything is written
        ReplicaDecay.check([c.regularization.rule_settings() for c in configs])
    except UnsupportedRule as exc:
        raise UserError(f"regularization: {exc}") from None


def _parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def replica_seed(seed: int, name: str) -> int:
    """Seed of a replica's dropout generator: from the run seed and the replica's name, not its stack position."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


@dataclass(eq=False)
class Replica(RunState):
    """One configuration in the stack: its loop bookkeeping plus what the stacked engine keeps for it."""

    groups: list[dict[str, Any]] = field(default_factory=list)  # its Trainer optimizer's param_groups
    generator: torch.Generator | None = None  # its dropout stream


class StackedTrainer:
    """Trains `configs` into `run_dirs` as one stacked model; `fit()` returns each replica's final status.

    `encoded`: the `encode_run_data` result of these configs on `splits` where the caller has it already (the
    stacks of one `ReplicaGroups` share it). `bar=False`: no progress bar, evaluation lines only (unless quiet).
    """

    def __init__(self, configs: list[Config], run_dirs: list[Path], *, splits: Splits, tokenizer: Tokenizer,
                 init_weights: dict[str, torch.Tensor] | list[dict[str, torch.Tensor]] | None = None,
                 budgets: list[float | None] | None = None,
                 names: list[str] | None = None, resume: bool = True, quiet: bool = True,
                 encoded: tuple | None = None, bar: bool = True):
        if not configs or len(configs) != len(run_dirs):
            raise ValueError(f"{len(configs)} configs for {len(run_dirs)} run folders")
        check_stack(configs)
        base = self.base = configs[0]
        cfg = base.train
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        self.quiet, self.bar = quiet, bar
        self.splits, self.tokenizer = splits, tokenizer
        # the replicas' dropout streams replay their sequential runs' (see the module docstring)
        self.sequential_masks = STACKED_MODELS[base.model.arch].SEQUENTIAL_MASKS and self.device.type == "cpu"
        self._streams: dict[int, torch.Tensor] = {}  # seed -> the global generator's state after the model's build
        self.encoded = encoded or encode_run_data(base, tokenizer, splits)
        self.train_data, _, self.valid_eval, self.train_eval = self.encoded
        # each replica's λ from its `regularization.tau_epochs` on the data the stack shares (as its Trainer would)
        configs = [resolve_timescale(config, self.train_data) for config in configs]
        base = self.base = configs[0]

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
        self.total_steps = total_steps(base, self.train_data)
        names = names or [Path(d).name for d in run_dirs]
        budgets = budgets or [None] * len(configs)
        self.replicas = [self._replica(c, Path(d), n, b) for c, d, n, b in zip(configs, run_dirs, names, budgets,
                                                                                strict=True)]
        initial = {key: _parameters(model) for key, model in models.items()}
        self.initial = {replica.name: initial[key] for replica, key in zip(self.replicas, starts, strict=True)}
        plan = Regularization(**self.replicas[0].reg).plan(self.template)
        self.multiplier = {info.name: (info.multiplier if info.decayed else 0.0) for info in plan.params}
        self.config = base  # what every replica shares (data, batches, schedule): the loop reads it
        self.one_run = False
        self._saved: tuple[tuple[int, int], dict[str, torch.Tensor]] | None = None

        # Each replica's folder is owned (as a Trainer owns its one) from here to the end of fit().
        self.owners = [FolderLock(replica.paths.root) for replica in self.replicas]
        for owner in self.owners:
            weakref.finalize(self, owner.release)
        try:
            for owner in self.owners:
                owner.acquire()
            weights, states, sched_state, lr = self._start(resume)
            self.active = [r for r in self.replicas if r.status is None]
            self.params: dict[str, torch.Tensor] = {}
            if self.active:
                self.params = {name: torch.stack([weights[r.name][name] for r in self.active]).to(self.device)
                               .requires_grad_(True) for name in self.names}
                self._build(states, sched_state, lr)
        except BaseException:
            for owner in self.owners:  # a stack that could not be built owns nothing
                owner.release()
            raise

    # -- setup ---------------------------------------------------------------------------------------
    def _draw(self, seed: int, weights: dict[str, torch.Tensor] | None) -> torch.nn.Module:
        """The model as a single run with `seed` builds it (then loaded with `weights`, if given)."""
        seed_everything(seed)
        model = build_model(self.base.model, self.tokenizer.get_vocab_size())
        self._streams.setdefault(seed, torch.get_rng_state())  # where that run's dropout draws start
        if weights is not None:
            model.load_state_dict(weights, strict=False)
        return model

    def _stream(self, seed: int) -> torch.Tensor:
        """The state of the global generator in a single run with `seed` once its model is built."""
        if seed not in self._streams:  # replicas that share given weights may still differ in seed
            self._draw(seed, None)
        return self._streams[seed]

    def _replica(self, config: Config, run_dir: Path, name: str, budget: float | None) -> Replica:
        try:
            reg = Regularization(**config.regularization.rule_settings())
            optimizer = reg.optimizer(self.template, config.train.optimizer, lr=config.train.lr,
                                      total_steps=self.total_steps, **optimizer_kwargs(config))
        except ValueError as exc:
            raise UserError(f"regularization: {exc}") from None
        generator = torch.Generator(device=self.device)
        if self.sequential_masks:
            generator.set_state(self._stream(config.seed))
        else:
            generator.manual_seed(replica_seed(config.seed, name))
        return Replica(name, config, RunPaths(run_dir), budget, groups=optimizer.state_dict()["param_groups"],
                       generator=generator)

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
                saved = read_tensors(folder / MODEL_FILE)
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
                replica.progress = fresh_progress()
                write_run_header(paths, replica.config, self._meta(replica))
                save_tokenizer(self.tokenizer, paths.tokenizer)
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
        meta["data"]["max_source_tokens"] = longest_source(self.train_data)  # generation's input limit
        return meta

    def _build(self, states: dict[str, dict[str, torch.Tensor]] | None, sched_state: dict[str, Any] | None,
               lr: float | None) -> None:
        """The stacked model, optimizer, schedule and per-replica coefficients for the active replicas."""
        cfg = self.base.train
        self.optimizer = base_optimizer(self.params, cfg.optimizer, lr=cfg.lr,
                                        kwargs=optimizer_kwargs(self.base))
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
        dropouts, generators = [r.config.model.dropout for r in self.active], [r.generator for r in self.active]
        self.model = build_stacked(self.base.model, self.params, dropouts, generators)

        # every replica's decay rules, from the registry
        self.decay = ReplicaDecay([r.reg for r in self.active], self.multiplier, self.params, cfg.lr, self.device,
                                  total_steps=self.total_steps)

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

    # -- one step ------------------------------------------------------------------------------------
    def _shape(self, values: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return values.view(-1, *([1] * (p.dim() - 1)))

    def train_step(self, batch: Batch) -> torch.Tensor:
        """One step of every active replica: [K, 2] (task loss, task loss + penalty) on the device."""
        cfg = self.base.train

        def task_loss(model) -> torch.Tensor:  # per replica; autocast is per thread, so it is entered here
            with autocast(self.device, cfg.precision):
                return model(batch.src, batch.src_len, batch.tgt_in, batch.tgt_out,
                             label_smoothing=cfg.label_smoothing, target_index=batch.target_index) / batch.n_tokens

        # a replica's non-finite loss reaches only its own slices (the sum's gradient is 1 for each replica, and
        # clipping, the rules and the optimizer act per replica); the loop takes it out of the stack
        for p in self.params.values():
            p.grad = None
        task = task_loss(self.model)
        task.sum().backward()
        losses = task.detach().float()
        # as the Trainer: a replica whose loss with its penalty overflows has diverged too (read back by the loop)
        totals = losses + self.decay.penalties() if self.decay.has_penalty else losses
        self._regularize_and_step()
        return torch.stack([losses, totals], dim=1)

    @torch.no_grad()
    def _regularize_and_step(self) -> None:
        cfg = self.base.train
        self.decay.add_loss_gradients_()  # loss terms: part of the gradient that is clipped
        if cfg.clip_norm:
            norms = torch.stack([p.grad.flatten(1).norm(dim=1) for p in self.params.values()])
            total = norms.norm(dim=0)
            clip = torch.clamp(cfg.clip_norm / (total + 1e-6), max=1.0)
            for p in self.params.values():
                p.grad.mul_(self._shape(clip, p))
        step = self.scheduler.last_epoch  # optimizer steps taken: the λ schedules' t
        self.decay.add_gradient_terms_(step)
        self.decay.decay_(self.optimizer.param_groups[0]["lr"], step, self.optimizer)
        self.optimizer.step()
        self.scheduler.step()

    # -- evaluation ----------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate_runs(self) -> list[dict[str, float]]:
        """Each active replica's evaluation row fields (as `Trainer.evaluate`)."""
        precision = self.base.train.precision

        def scores(data) -> list[float]:
            return corpus_losses(self.model, data, self.device, self.model.eval_batch_tokens(self.device),
                                 precision).tolist()

        val, train = scores(self.valid_eval), scores(self.train_eval)
        zero = torch.zeros(len(self.active), device=self.device)
        sq = {n: p.float().flatten(1).square().sum(1) for n, p in self.params.items()}
        decayed = [n for n in self.names if self.multiplier[n]]
        decay_sq = sum((sq[n] for n in decayed), zero)
        rest_sq = sum((sq[n] for n in self.names if not self.multiplier[n]), zero)
        penalty = self.decay.penalties().tolist()
        norms = torch.stack([decay_sq, rest_sq]).sqrt().tolist()
        total = (decay_sq + rest_sq).sqrt().tolist()
        lr = self.optimizer.param_groups[0]["lr"]
        rows = []
        step = self.scheduler.last_epoch
        factors = self.decay.decay_factors(lr, step, self.optimizer)
        lambdas = self.decay.weight_decays(step)
        for k, factor in enumerate(factors):
            row = {"val_loss": val[k], "val_ppl": perplexity(val[k]), "train_eval_loss": train[k],
                   "gap": val[k] - train[k], "penalty": penalty[k], "decay_factor": factor,
                   "weight_decay_t": lambdas[k],
                   "decay_norm": norms[0][k], "nodecay_norm": norms[1][k], "weight_norm": total[k]}
            if self.base.train.bleu_examples:
                row.update(bleu_sample(self.replica_model(k), self.tokenizer,
                                       self.splits.valid[: self.base.train.bleu_examples], self.device))
            rows.append(row)
        return rows

    def replica_tensors(self, k: int) -> dict[str, torch.Tensor]:
        """Active replica k's weights under the single model's names (tied weights once), on the CPU."""
        return {name: p[k].detach().contiguous().cpu() for name, p in self.params.items()}

    def replica_model(self, k: int) -> torch.nn.Module:
        """The single model holding active replica k's weights (for decoding)."""
        model = build_model(self.active[k].config.model, self.tokenizer.get_vocab_size())
        model.load_state_dict(self.replica_tensors(k), strict=False)
        return model.to(self.device).eval()

    def _trainer_state(self, k: int, replica: Replica) -> dict[str, Any]:
        """Replica k's `checkpoints/last/trainer_state.pt` in the format `Trainer._restore` reads."""
        lr = self.optimizer.param_groups[0]["lr"]
        groups = copy.deepcopy(replica.groups)
        state: dict[int, dict[str, torch.Tensor]] = {}
        for group in groups:
            # decay_step: the steps taken, which the Trainer's step hook counts (its λ schedule's t)
            group.update(lr=lr, initial_lr=self.base.train.lr, decay_step=self.scheduler.last_epoch)
            for index, name in zip(group["params"], group["param_names"], strict=True):
                slots = self.optimizer.state.get(self.params[name], {})
                if slots:
                    state[index] = {key: _slice(v, torch.tensor([k], device=self.device), one=True)
                                    for key, v in slots.items()}
        scheduler = {key: (value * len(groups) if isinstance(value, list) and len(value) == 1 else value)
                     for key, value in self.scheduler.state_dict().items()}
        # a Trainer resuming this folder restores `rng_torch`: the replica's own stream where it is the sequential
        # run's (the Trainer goes on with the same masks), else the process's
        rng_torch = replica.generator.get_state() if self.sequential_masks else torch.get_rng_state()
        result = {"optimizer": {"state": state, "param_groups": groups}, "scheduler": scheduler,
                  "progress": dict(replica.progress), "rng_torch": rng_torch,
                  "rng_replica": replica.generator.get_state().cpu()}
        if torch.cuda.is_available():
            result["rng_cuda"] = torch.cuda.get_rng_state_all()
        return result

    # -- the engine the loop calls (training/loop.py) ------------------------------------------------
    def lr(self) -> float:
        """The learning rate of the step just taken (shared by every replica)."""
        return self.optimizer.param_groups[0]["lr"]

    def save(self, k: int, run: RunState, best: bool) -> None:
        """Active replica k's `checkpoints/best` or `checkpoints/last` (a `Trainer`-format trainer state)."""
        key = (k, run.progress["step"])
        if self._saved is None or self._saved[0] != key:  # best and last of one evaluation share one copy
            self._saved = (key, self.replica_tensors(k))
        tensors = self._saved[1]
        if best:
            save_checkpoint(run.paths.best, tensors, None)
        else:
            save_checkpoint(run.paths.last, tensors, self._trainer_state(k, run))

    def drop(self, runs: list[RunState]) -> None:
        """Take stopped replicas out of the stack."""
        self._saved = None
        self._drop([r for r in runs if r in self.active])

    def steady_view(self) -> SteadyView:
        """The stacked parameters, decay multipliers and the coming step's lr and decay (training/steady.py)."""
        return SteadyView(self.active, self.params, self.multiplier, self.template, self.lr(),
                          lambda: self.decay.decay_factors(self.lr(), self.scheduler.last_epoch, self.optimizer))

    def fit(self, cancel: threading.Event | None = None) -> list[Replica]:
        """Train every active replica to the end of its schedule, budget or patience; returns all replicas.

        `cancel` set (by another thread) stops the training before its next step (`loop.Cancelled`)."""
        try:
            for owner in self.owners:
                owner.acquire()
            TrainingLoop(self, quiet=self.quiet, cancel=cancel, bar=self.bar).fit()
        finally:
            self.release()
        return self.replicas

    def release(self) -> None:
        """Give up the replicas' run folders (fit() does at its end; a stack never fitted may)."""
        for owner in self.owners:
            owner.release()


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
