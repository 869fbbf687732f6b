"""Hugging Face `transformers` with decaylab: a `Regularization` inside `Trainer`, decaylab metrics from a callback,
and λ chosen by `decaylab.sweep` for a `Trainer` (the `hf` extra: `pip install 'decaylab[hf]'`).

- `RegularizedTrainer(..., regularization=reg, run_dir=None)`: a `transformers.Trainer` whose optimizer and decay set
  are the Regularization's (`reg.optimizer(model, …)` with the Trainer's lr, betas and eps), with l2/l1 penalties
  added to the training loss and the decay audit recorded (`trainer.decay_audit`, and `audit.json` in `run_dir`).
- `DecaylabCallback(run_dir, reg)`: a `TrainerCallback` writing a decaylab run folder (config.yaml, meta.json,
  metrics.jsonl with train/val loss, decayed and other weight norms, penalty, per-step decay factor; best weights,
  audit.json) that `decaylab report` renders; with `trial=` it reports to a sweep's trial instead.
- `trainer_objective(build)`: turns `build(trial) -> Trainer keyword arguments` into an objective for
  `decaylab.sweep`, resumable from the Trainer's own checkpoints.
- `hf_config_model(path)`: a model built from a config JSON with random weights (nothing downloaded), for
  `decaylab audit --hf-config`.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import math
import platform
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

try:
    import transformers
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback
    from transformers.utils import logging as hf_logging
except ImportError as exc:  # the extra is missing: say how to get it, not a bare traceback
    raise ImportError("decaylab.integrations.transformers needs Hugging Face transformers: "
                      "pip install 'decaylab[hf]'") from exc

from decaylab.errors import DamagedFile, UserError
from decaylab.files import atomic_write_json, atomic_write_jsonl, atomic_write_text, read_jsonl
from decaylab.regularization import Regularization
from decaylab.regularization.rules import Acts, active_rules
from decaylab.runfolder.checkpoint import save_checkpoint
from decaylab.runfolder.layout import RunPaths, versions
from decaylab.sweep.objective import Trial, metrics_row

ADAM_FAMILY = ("adamw_torch", "adamw_torch_fused", "adamw_hf", "adamw_torch_xla", "adamw_torch_npu_fused")
CHECKPOINT_PREFIX = "checkpoint-"  # the Trainer's checkpoint folders: output_dir/checkpoint-<global step>


# -- the optimizer ----------------------------------------------------------------------------------------------


def optimizer_name(args: TrainingArguments, regularization: Regularization) -> str:
    """decaylab's optimizer for the Trainer's `optim`: the Adam family is `adamw` (`adam` for coupled decay, which
    AdamW cannot express), `sgd` is SGD (SGDW with decoupled decay); others are refused by name."""
    optim = str(getattr(args.optim, "value", args.optim))
    if optim in ADAM_FAMILY:
        return "adam" if regularization.mode == "coupled" else "adamw"
    if optim == "sgd":
        return "sgd"
    raise ValueError(f"TrainingArguments.optim={optim!r}: decaylab builds Adam/AdamW ({', '.join(ADAM_FAMILY)}) and "
                     "SGD (sgd); choose one of those, or build your own optimizer from reg.param_groups(model, lr)")


def optimizer_kwargs(args: TrainingArguments, name: str) -> dict[str, Any]:
    """The torch keywords the Trainer would give its optimizer: betas and eps (Adam), momentum (SGD `optim_args`)."""
    if name in ("adam", "adamw"):
        return {"betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon}
    extra: dict[str, Any] = {}
    for item in (args.optim_args or "").replace(" ", "").split(","):
        key, _, value = item.partition("=")
        if key in ("momentum", "dampening"):
            extra[key] = float(value)
        elif key == "nesterov":
            extra[key] = value.lower() == "true"
    return extra


def build_optimizer(model: nn.Module, args: TrainingArguments, regularization: Regularization,
                    total_steps: int | None = None) -> torch.optim.Optimizer:
    """`regularization.optimizer(model, …)` with the Trainer's optimizer, learning rate and keywords."""
    if args.weight_decay:
        raise ValueError(f"TrainingArguments.weight_decay={args.weight_decay!r} would be a second λ on top of the "
                         f"Regularization's ({regularization.mode}, weight_decay={regularization.weight_decay}): "
                         "leave it at 0 and set λ in the Regularization")
    name = optimizer_name(args, regularization)
    return regularization.optimizer(model, name, lr=args.learning_rate, total_steps=total_steps,
                                    **optimizer_kwargs(args, name))


def _penalized(regularization: Regularization) -> bool:
    """True when a rule of the regularization lives in the loss (l2, l1)."""
    return any(rule.acts is Acts.LOSS for rule, _ in active_rules(regularization.describe()))


class RegularizedTrainer(Trainer):
    """A `transformers.Trainer` regularized by decaylab: its optimizer and decay set are the Regularization's.

    `TrainingArguments.weight_decay` must stay 0 (λ is the Regularization's); `optim` picks Adam/AdamW or SGD;
    l2 and l1 penalties are added to the training loss (not to the evaluation loss). With `run_dir`, a
    `DecaylabCallback` writes a decaylab run folder there.
    """

    def __init__(self, *args: Any, regularization: Regularization, run_dir: str | Path | None = None,
                 **kwargs: Any) -> None:
        if not isinstance(regularization, Regularization):
            raise TypeError(f"regularization: expected a decaylab Regularization (got {type(regularization).__name__})")
        super().__init__(*args, **kwargs)
        if self.args.weight_decay:
            build_optimizer(nn.Linear(1, 1), self.args, regularization)  # refuses the second λ, in one line
        self.regularization = regularization
        self.decay_audit: dict[str, Any] | None = None
        self._total_steps: int | None = None
        self._penalty = _penalized(regularization)
        if run_dir is not None:
            callback = DecaylabCallback(run_dir, regularization)
            callback.audit_from = self  # the run folder records the audit of the optimizer this Trainer built
            self.add_callback(callback)

    def create_optimizer_and_scheduler(self, num_training_steps: int) -> None:
        """As the Trainer's, with the run's length known to a λ schedule."""
        self._total_steps = num_training_steps
        super().create_optimizer_and_scheduler(num_training_steps)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The Regularization's optimizer in place of the Trainer's (its decay set replaces
        `get_decay_parameter_names`); the decay audit is recorded in `decay_audit`."""
        model = self.model if model is None else model
        if self.optimizer is None:
            steps = self._total_steps or (self.state.max_steps if self.state.max_steps > 0 else None)
            self.optimizer = build_optimizer(model, self.args, self.regularization, steps)
            name = optimizer_name(self.args, self.regularization)
            self.decay_audit = self.regularization.audit(model, lr=self.args.learning_rate, optimizer_name=name,
                                                         steps=steps).to_dict()
        return self.optimizer

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        """The Trainer's loss, plus the l2/l1 penalty while training (scaled like the loss under accumulation)."""
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        if not (self._penalty and model.training):
            return result
        penalty = self.regularization.penalty(self.accelerator.unwrap_model(model))
        scaled = self.loss_is_scaled_for_ga if self.loss_is_scaled_for_ga is not None else (
            (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None)
        if scaled:  # the Trainer will not divide this loss by the accumulation steps: the penalty counts once a step
            penalty = penalty / self.current_gradient_accumulation_steps
        if return_outputs:
            loss, outputs = result
            return loss + penalty, outputs
        return result + penalty


# -- decaylab metrics from a Trainer -----------------------------------------------------------------------------


class _RunFolder:
    """A decaylab run folder written from a Trainer's evaluations (what a sweep's Trial does for an objective)."""

    def __init__(self, root: Path, regularization: Regularization) -> None:
        self.paths = RunPaths(Path(root))
        self.regularization = regularization
        self.history: list[dict[str, Any]] = []
        self.model: nn.Module | None = None
        self.optimizer: Any = None
        self.best = math.inf
        self.started = time.perf_counter()
        self.earlier_s = 0.0

    def start(self, args: TrainingArguments, state: Any, model: nn.Module, optimizer: Any,
              audit: dict[str, Any] | None) -> None:
        self.model, self.optimizer = model, optimizer
        self.paths.root.mkdir(parents=True, exist_ok=True)
        config = {"trainer": f"transformers.Trainer ({type(model).__name__})", "seed": args.seed,
                  "regularization": self.regularization.describe(),
                  "args": {k: _plain(getattr(args, k)) for k in ("learning_rate", "num_train_epochs", "max_steps",
                                                                  "per_device_train_batch_size", "optim",
                                                                  "lr_scheduler_type", "warmup_steps",
                                                                  "gradient_accumulation_steps", "output_dir")},
                  "model": getattr(getattr(model, "config", None), "to_dict", dict)()}
        atomic_write_text(self.paths.config, yaml.safe_dump(_plain(config), sort_keys=False, allow_unicode=True))
        try:  # a resumed Trainer: the rows after its checkpoint's step are redone
            earlier = [row for row in read_jsonl(self.paths.metrics) if row["step"] <= state.global_step]
        except DamagedFile:
            earlier = []
        self.history = earlier if state.global_step else []
        self.best = min((row["val_loss"] for row in self.history), default=math.inf)
        self.earlier_s = self.history[-1]["wall_s"] if self.history else 0.0
        atomic_write_jsonl(self.paths.metrics, self.history)
        if not self.paths.meta.is_file():
            atomic_write_json(self.paths.meta, {
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": sys.argv, "seed": args.seed,
                "trainer": "transformers.Trainer", "versions": {**versions(), "transformers": transformers.__version__},
                "data": {"origin": "transformers.Trainer datasets", "fingerprint": None, "sizes": {}},
                "host": {"node": platform.node(), "machine": platform.machine(), "system": platform.system(),
                         "cpu_threads": torch.get_num_threads()},
                "parameters": sum(p.numel() for p in model.parameters())})
        audit = audit if audit is not None else _audit(self.regularization, model, args)
        atomic_write_json(self.paths.root / "audit.json", audit)

    def report(self, step: int, val_loss: float, train_loss: float | None = None, *, epoch: float | None = None,
               raise_stop: bool = False, **extra: Any) -> bool:
        val = float(val_loss)
        if not math.isfinite(val):
            return False  # nothing is written, as a built-in run writes nothing of a non-finite evaluation
        wall = self.earlier_s + time.perf_counter() - self.started
        row = metrics_row(self.regularization, self.model, self.optimizer, step, val, train_loss,
                          float(epoch) if epoch is not None else float(len(self.history) + 1), extra, wall)
        self.history.append(row)
        atomic_write_jsonl(self.paths.metrics, self.history)
        if val < self.best and self.model is not None:
            self.best = val
            save_checkpoint(self.paths.best, self.model, None)
        return False


def _audit(regularization: Regularization, model: nn.Module, args: TrainingArguments) -> dict[str, Any]:
    try:
        name = optimizer_name(args, regularization)
    except ValueError:
        name = None
    return regularization.audit(model, lr=args.learning_rate, optimizer_name=name).to_dict()


def _plain(value: Any) -> Any:
    """A YAML-safe copy (enums as their values, paths and other objects as text)."""
    if isinstance(value, enum.Enum):  # the Trainer's options are str enums, which YAML cannot write as such
        return _plain(value.value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(getattr(value, "value", value))


# Trainer metrics that say how fast, not how good: left out of the rows.
_SPEED = ("runtime", "samples_per_second", "steps_per_second", "epoch")


class DecaylabCallback(TrainerCallback):
    """Writes decaylab metrics at each evaluation: into a run folder (`run_dir`) that `decaylab report` renders, or
    into a sweep's `trial` (then it also records the Trainer's checkpoints for resume and stops the Trainer when
    the trial must stop).

    Each row: the training loss the Trainer logged since the last evaluation, `eval_loss` as the validation loss,
    the decayed and other weight norms and the penalty under the Regularization's decay set, the per-step decay
    factor and lr of the optimizer, and the evaluation's other `eval_*` numbers. Evaluations without `eval_loss`
    (e.g. `trainer.evaluate(test, metric_key_prefix="test")`) are not rows.
    """

    def __init__(self, run_dir: str | Path | None = None, regularization: Regularization | None = None, *,
                 trial: Trial | None = None) -> None:
        if (run_dir is None) == (trial is None):
            raise ValueError("DecaylabCallback: give either run_dir (a run folder to write) or trial (a sweep's)")
        if trial is None and regularization is None:
            raise ValueError("DecaylabCallback: give the Regularization whose decay set the norms are taken over")
        self.trial = trial
        self.regularization = trial.regularization if trial is not None else regularization
        self.folder = _RunFolder(Path(run_dir), self.regularization) if run_dir is not None else None
        self.audit_from: Any = None  # a RegularizedTrainer whose decay_audit the run folder records
        self._losses: list[float] = []

    def on_train_begin(self, args: TrainingArguments, state: Any, control: Any, model: nn.Module | None = None,
                       optimizer: Any = None, **kwargs: Any) -> None:
        """Start the run folder (or watch the model in the trial)."""
        self._losses = []
        if self.trial is not None:
            self.trial.watch(model, optimizer, checkpoint=False)  # the Trainer checkpoints for itself
        elif self.folder is not None and model is not None:
            self.folder.start(args, state, model, optimizer, getattr(self.audit_from, "decay_audit", None))

    def on_log(self, args: TrainingArguments, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> None:
        """Collect the training loss the Trainer logs (the row's train_loss is their mean since the last one)."""
        if logs and isinstance(logs.get("loss"), (int, float)):
            self._losses.append(float(logs["loss"]))

    def on_evaluate(self, args: TrainingArguments, state: Any, control: Any, metrics: dict[str, Any] | None = None,
                    **kwargs: Any) -> None:
        """One row per evaluation of the validation set; stops the Trainer when the trial must stop."""
        if not metrics or "eval_loss" not in metrics:
            return
        train_loss = sum(self._losses) / len(self._losses) if self._losses else None
        self._losses = []
        extra = {key[len("eval_"):]: value for key, value in metrics.items()
                 if key.startswith("eval_") and key != "eval_loss" and key[len("eval_"):] not in _SPEED
                 and isinstance(value, (int, float)) and not isinstance(value, bool)}
        sink = self.trial if self.trial is not None else self.folder
        assert sink is not None
        stop = sink.report(step=int(state.global_step), val_loss=float(metrics["eval_loss"]), train_loss=train_loss,
                           epoch=float(state.epoch) if state.epoch is not None else None, raise_stop=False, **extra)
        if stop:  # save where it stops, so a halving survivor continues from here
            control.should_training_stop = True
            control.should_save = True

    def on_save(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        """A trial records the Trainer's new checkpoint as its own (and drops the older ones)."""
        if self.trial is None:
            return
        name = f"{CHECKPOINT_PREFIX}{state.global_step}"
        output = Path(args.output_dir)
        if not (output / name).is_dir():
            return
        self.trial.save_checkpoint({"hf_checkpoint": name}, step=int(state.global_step))
        for old in output.glob(f"{CHECKPOINT_PREFIX}*"):
            if old.name != name and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)


# -- an objective for decaylab.sweep ------------------------------------------------------------------------------


def trial_arguments(args: TrainingArguments, trial: Trial) -> TrainingArguments:
    """The user's TrainingArguments as a sweep's trial runs them: its folder and seed, evaluation (and checkpoints,
    and loss logging) at the same cadence, `epochs` from the sweep, no second λ, no reporting to other trackers."""
    strategy = str(getattr(args.eval_strategy, "value", args.eval_strategy))
    if strategy == "no":
        strategy = "epoch"
    changes: dict[str, Any] = {
        "output_dir": str(trial.path / "hf"), "seed": trial.seed, "eval_strategy": strategy,
        "save_strategy": strategy, "logging_strategy": strategy, "save_total_limit": None,
        "load_best_model_at_end": False, "report_to": "none", "disable_tqdm": True, "weight_decay": 0.0}
    if strategy == "steps":
        changes.update(save_steps=args.eval_steps, logging_steps=args.eval_steps)
    if trial.epochs is not None:
        changes.update(num_train_epochs=trial.epochs, max_steps=-1)
    return dataclasses.replace(args, **changes)


def trainer_objective(build: Callable[[Trial], dict[str, Any]]) -> Callable[[Trial], nn.Module]:
    """An objective for `decaylab.sweep` from `build(trial)`, which returns the `Trainer` keyword arguments
    (`model`, `args`, `train_dataset`, `eval_dataset`, `data_collator`, …; optionally `test_dataset`, scored once
    by the final model). Use it as a decorator on a module-level function so a resume can import it by name.

    Each trial trains a `RegularizedTrainer` with the trial's Regularization and seed, reports every evaluation
    (its `eval_loss` is the sweep's validation loss), and continues after a kill from the Trainer's last checkpoint.
    """

    @functools.wraps(build)
    def objective(trial: Trial) -> nn.Module:
        spec = dict(build(trial))
        test = spec.pop("test_dataset", None)
        if "args" not in spec or "model" not in spec:
            raise UserError(f"{build.__qualname__}: must return the Trainer's keyword arguments with at least "
                            "`model` and `args`")
        args = trial_arguments(spec.pop("args"), trial)
        trainer = RegularizedTrainer(args=args, regularization=trial.regularization, **spec)
        trainer.add_callback(DecaylabCallback(trial=trial))
        trainer.remove_callback(PrinterCallback)  # the sweep prints one line per trial
        resumed = trial.restore()
        checkpoint = (resumed or {}).get("state", {}).get("hf_checkpoint")
        path = Path(args.output_dir) / checkpoint if checkpoint else None
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # the checkpoint writer's bars, once per evaluation
        try:
            trainer.train(resume_from_checkpoint=str(path) if path is not None and path.is_dir() else None)
            if trial.final and test is not None:
                model = trainer.model
                if (trial.path / "checkpoints" / "best").exists():
                    trial.load_best(model)  # scored as the built-in final model is: at its best evaluation
                metrics = trainer.evaluate(test, metric_key_prefix="test")
                trial.report_test(**{key[len("test_"):]: value for key, value in metrics.items()
                                     if key.startswith("test_") and key[len("test_"):] not in _SPEED})
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        return trainer.model

    return objective


# -- a model from a config, for the audit ---------------------------------------------------------------------------


def trainer_decay_names(model: nn.Module) -> list[str]:
    """The parameter names `transformers.Trainer` decays by default (its own `get_decay_parameter_names`)."""
    # The method reads only its argument (get_parameter_names(model, [nn.LayerNorm], patterns)): called unbound,
    # without building a Trainer (which would need TrainingArguments and a device)
    return list(Trainer.get_decay_parameter_names(None, model))


def hf_config_model(path: str | Path) -> nn.Module:
    """The model a Hugging Face config JSON describes, with random weights and nothing downloaded: a causal LM, a
    sequence-to-sequence LM or the bare model, whichever class the config's `model_type` has (built on the meta
    device, so a large architecture costs no memory; the decay decisions need names and shapes only)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--hf-config {path}: file not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"--hf-config {path}: not a JSON config ({exc})") from None
    if not isinstance(raw, dict) or "model_type" not in raw:
        raise UserError(f"--hf-config {path}: a model config needs a 'model_type' (e.g. \"gpt2\", \"t5\")")
    settings = {k: v for k, v in raw.items() if k != "model_type"}
    try:
        config = AutoConfig.for_model(raw["model_type"], **settings)
    except (ValueError, KeyError) as exc:
        raise UserError(f"--hf-config {path}: {exc}") from None
    for auto in (AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModel):
        try:
            with torch.device("meta"):
                return auto.from_config(config)
        except ValueError:  # this config has no model of that kind
            continue
    raise UserError(f"--hf-config {path}: transformers has no model for model_type {raw['model_type']!r}")
