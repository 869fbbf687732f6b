"""The Regularization object: one validated description of how a run regularizes, and its hooks."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from . import kernels
from .audit import AuditReport, build_audit
from .decay_set import DecayPlan, build_plan
from .normalized import params_feeding_norms
from .optim import build_optimizer, build_param_groups, swd_denominator, weight_decay_now
from .rules import (
    DECAY_SCALING_RULES,
    DECAY_SCALINGS,
    DECAY_SETS,
    MODES,
    OPTIMIZERS,
    RULES,
    WEIGHT_DECAY_SCHEDULE_NAMES,
    Acts,
    active_rules,
    check_settings,
    schedule_is_constant,
)
from .validate import (
    check_bool,
    check_choice,
    check_count,
    check_multipliers,
    check_nonneg,
    check_patterns,
    check_positive,
)


class _Cached:
    """Per-model state reused every step: the plan and the flat tensor lists the hooks need."""

    def __init__(self, plan: DecayPlan, n_params: int) -> None:
        self.plan = plan
        self.n_params = n_params
        decayed = plan.decayed
        self.decay_tensors = [i.param for i in decayed]
        mults = [i.multiplier for i in decayed]
        # None when every multiplier is 1: the penalty then skips one multiply
        self.decay_mult = None if all(m == 1.0 for m in mults) else torch.tensor(mults)
        self.all_tensors = [i.param for i in plan.params]
        self.decay_mask = torch.tensor([i.decayed for i in plan.params], dtype=torch.bool)
        self.feeds_norm: frozenset[str] | None = None  # found by the first scoped optimizer build


class Regularization:
    """How a run regularizes: a mode of the rule registry (rules.MODES), λ, λ_1, decay set and multipliers."""

    def __init__(
        self,
        mode: str = "decoupled",
        weight_decay: float = 0.01,
        decay_set: str = "no_bias_norm",
        l1: float = 0.0,
        decay_scaling: str = "lr",
        exclude: list[str] | tuple[str, ...] | str | None = None,
        multipliers: dict[str, float] | None = None,
        allow_double: bool = False,
        weight_decay_schedule: str = "constant",
        weight_decay_warmup_steps: int = 0,
    ) -> None:
        self.mode = check_choice("mode", mode, MODES)
        self.weight_decay = check_nonneg("weight_decay", weight_decay)
        self.decay_set = check_choice("decay_set", decay_set, DECAY_SETS)
        self.l1 = check_nonneg("l1", l1)
        self.decay_scaling = check_choice("decay_scaling", decay_scaling, DECAY_SCALINGS)
        self.weight_decay_schedule = check_choice("weight_decay_schedule", weight_decay_schedule,
                                                  WEIGHT_DECAY_SCHEDULE_NAMES)
        self.weight_decay_warmup_steps = check_count("weight_decay_warmup_steps", weight_decay_warmup_steps)
        check_settings(self._settings)
        self.exclude = check_patterns("exclude", exclude)
        self.multipliers = check_multipliers("multipliers", multipliers)
        self.allow_double = check_bool("allow_double", allow_double)
        self._cache: weakref.WeakKeyDictionary[nn.Module, _Cached] = weakref.WeakKeyDictionary()

    # -- description ---------------------------------------------------------------------------

    @property
    def regularizes(self) -> bool:
        """True when the mode itself applies λ (any mode but none, with λ > 0)."""
        return any(rule.is_mode for rule, _ in self._active)

    def describe(self) -> dict[str, Any]:
        """The constructor arguments, JSON-serialisable; Regularization(**reg.describe()) rebuilds it."""
        return {
            "mode": self.mode,
            "weight_decay": self.weight_decay,
            "decay_set": self.decay_set,
            "l1": self.l1,
            "decay_scaling": self.decay_scaling,
            "exclude": list(self.exclude),
            "multipliers": dict(self.multipliers),
            "allow_double": self.allow_double,
            "weight_decay_schedule": self.weight_decay_schedule,
            "weight_decay_warmup_steps": self.weight_decay_warmup_steps,
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.describe().items())
        return f"Regularization({args})"

    def __getstate__(self) -> dict[str, Any]:
        # the per-model cache holds weak references and live tensors: rebuild it after unpickling
        state = self.__dict__.copy()
        del state["_cache"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cache = weakref.WeakKeyDictionary()

    @property
    def _settings(self) -> dict[str, Any]:
        """The fields the registry reads (mode, strengths, decay scaling, λ schedule)."""
        return {"mode": self.mode, "weight_decay": self.weight_decay, "l1": self.l1,
                "decay_scaling": self.decay_scaling, "weight_decay_schedule": self.weight_decay_schedule,
                "weight_decay_warmup_steps": self.weight_decay_warmup_steps}

    @property
    def _mode_strength(self) -> float:
        """The λ of the mode's rule, from the config field the registry names for it (0 for mode none)."""
        return RULES[self.mode].strength_in(self._settings)

    @property
    def _active(self) -> list:
        """The registered rules with λ > 0 under these settings, each with its λ."""
        return active_rules(self._settings)

    # -- decay set -----------------------------------------------------------------------------

    def plan(self, model: nn.Module) -> DecayPlan:
        """The decay decision for every unique parameter of `model` (cached per model)."""
        return self._cached(model).plan

    def invalidate(self, model: nn.Module | None = None) -> None:
        """Forget the cached decay set of `model` (or of all models), e.g. after (un)freezing layers."""
        if model is None:
            self._cache.clear()
        else:
            self._cache.pop(model, None)

    def _cached(self, model: nn.Module) -> _Cached:
        # the parameter count catches added/removed modules; requires_grad flips need invalidate()
        n = sum(1 for _ in model.parameters())
        entry = self._cache.get(model)
        if entry is None or entry.n_params != n:
            plan = build_plan(model, self.decay_set, self.exclude, self.multipliers)
            entry = self._cache[model] = _Cached(plan, n)
        return entry

    # -- optimizer -----------------------------------------------------------------------------

    def param_groups(self, model: nn.Module, lr: float, example: Callable[[], Any] | None = None
                     ) -> list[dict[str, Any]]:
        """Torch param groups (one per distinct effective λ plus no-decay) with this mode's weight_decay.

        `example`: one forward pass of `model`, needed by decay_scaling='corrected_normalized' (see `scope`).
        """
        rule = RULES[self.mode]
        if self._mode_strength:
            # torch's constant group weight_decay cannot express these: a caller's optimizer would silently not
            # decay (cautious, swd) or keep λ constant (a schedule)
            what = (f"mode={self.mode!r}" if rule.reads else
                    "" if schedule_is_constant(self._settings) or not rule.schedulable else
                    f"weight_decay_schedule={self.weight_decay_schedule!r} (warm-up "
                    f"{self.weight_decay_warmup_steps} steps)")
            if what:
                raise ValueError(f"{what} is applied by decaylab's step pre-hook, which a caller's optimizer lacks; "
                                 "build the optimizer with reg.optimizer(model, name, lr, total_steps=N)")
        return self._groups(model, lr, None, example)

    def scope(self, model: nn.Module, example: Callable[[], Any] | None = None) -> frozenset[str] | None:
        """The parameters the decay scaling covers when it has a scope (corrected_normalized: those feeding a
        normalization layer, found by running `example()`, one forward pass of `model`); None when it covers all.
        """
        if DECAY_SCALING_RULES[self.decay_scaling].scope == "all":
            return None
        cached = self._cached(model)
        if cached.feeds_norm is None:
            if example is None:
                example = _dummy_forward(model, self.decay_scaling)
            cached.feeds_norm = params_feeding_norms(model, example)
        return cached.feeds_norm

    def _groups(self, model: nn.Module, lr: float, total_steps: int | None,
                example: Callable[[], Any] | None = None) -> list[dict[str, Any]]:
        lr = check_positive("lr", lr)
        if (self.weight_decay_schedule != "constant" and total_steps is None and self._mode_strength
                and RULES[self.mode].schedulable):
            raise ValueError(
                f"weight_decay_schedule={self.weight_decay_schedule!r} needs the run's length: pass "
                "reg.optimizer(..., total_steps=N)"
            )
        schedule = {"weight_decay_schedule": self.weight_decay_schedule,
                    "weight_decay_warmup_steps": self.weight_decay_warmup_steps, "total_steps": total_steps}
        return build_param_groups(
            self.plan(model),
            mode=self.mode,
            weight_decay=self._mode_strength,
            decay_scaling=self.decay_scaling,
            lr=lr,
            schedule=schedule,
            in_scope=self.scope(model, example) if RULES[self.mode].acts is Acts.DECOUPLED else None,
        )

    def optimizer(
        self, model: nn.Module, name: str = "adamw", lr: float = 1e-3, total_steps: int | None = None,
        example: Callable[[], Any] | None = None, **kwargs: Any
    ) -> torch.optim.Optimizer:
        """A torch optimizer (sgd, sgdw, adam, adamw) applying this mode's decay; kwargs go to torch.

        `total_steps` (the run's optimizer steps) is needed by a `weight_decay_schedule` other than constant.
        `example` (one forward pass of `model`) by decay_scaling='corrected_normalized', to find its scope.
        """
        check_choice("optimizer name", name, OPTIMIZERS)
        if total_steps is not None:
            total_steps = check_count("total_steps", total_steps, minimum=1)
        return build_optimizer(
            self._groups(model, lr, total_steps, example),
            name,
            mode=self.mode,
            regularizes=self.regularizes,
            allow_double=self.allow_double,
            lr=lr,
            kwargs=kwargs,
            trainable={n: p for n, p in model.named_parameters() if p.requires_grad},
        )

    # -- training-step hooks -------------------------------------------------------------------

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """The loss terms of the active LOSS rules over the decay set (l2: (λ/2)Σ m‖w‖², l1: λ_1 Σ m‖w‖₁)."""
        terms = [(rule, lam) for rule, lam in self._active if rule.acts is Acts.LOSS]
        if not terms:
            ref = next(model.parameters(), None)
            return torch.zeros(
                (), dtype=ref.dtype if ref is not None else None, device=ref.device if ref is not None else None
            )
        c = self._cached(model)
        return kernels.penalty(c.decay_tensors, c.decay_mult, terms)

    def norms(self, model: nn.Module) -> dict[str, float]:
        """L2 norms: decay_norm (decay set), nodecay_norm (every other parameter), weight_norm (all)."""
        c = self._cached(model)
        return kernels.norms(c.all_tensors, c.decay_mask)

    def decay_factor(self, optimizer: torch.optim.Optimizer, equivalent: bool = False) -> float:
        """Per-step multiplicative decay 1 − c_t·λ for the base λ at the optimizer's current lr.

        decoupled: the exact factor the optimizer applies (c_t = η_t for decay_scaling='lr',
        c_t = η_t/η_max for 'schedule'). none / l2 / coupled: 1.0, because their decay goes
        through the gradient rather than multiplying the weights; with equivalent=True, l2 and
        coupled report 1 − η_t·λ, the shrink that λ·w in the gradient causes under plain SGD
        without momentum (nominal only for Adam, whose denominator rescales it).
        """
        group = next((g for g in optimizer.param_groups if "peak_lr" in g), optimizer.param_groups[0])
        lr = float(group["lr"])
        rule = RULES[self.mode]
        lam = self.weight_decay_now(optimizer)
        if rule.acts is Acts.DECOUPLED:
            peak = group.get("peak_lr", group.get("initial_lr"))
            if peak is None:
                if self.decay_scaling != "lr":
                    raise ValueError(
                        f"decay_scaling={self.decay_scaling!r} needs the peak lr: build the optimizer with "
                        "reg.optimizer() or reg.param_groups(), whose groups carry 'peak_lr'"
                    )
                peak = lr
            # SWD: the denominator of the last step taken (1 before the first)
            denominator = float(swd_denominator(optimizer, coming=False)) if rule.reads == "second_moment" and (
                optimizer.state) else 1.0
            # a scoped scaling reports the factor of the parameters in its scope (the others decay as with 'lr')
            scaling = self.decay_scaling if DECAY_SCALING_RULES[self.decay_scaling].scope == "all" else "corrected"
            return rule.decay_factor(lam, scaling, lr, float(peak), denominator)
        if equivalent and rule.decays and rule.strength == "weight_decay":
            return 1.0 - lr * lam
        return 1.0

    def weight_decay_now(self, optimizer: torch.optim.Optimizer) -> float:
        """The mode's λ_t for the optimizer's next step: λ·ρ(t) under `weight_decay_schedule` (λ when constant)."""
        group = next((g for g in optimizer.param_groups if "peak_lr" in g and g["multiplier"] > 0), None)
        if group is None or not self._mode_strength:
            return self._mode_strength
        return weight_decay_now(group) / group["multiplier"]

    # -- audit ---------------------------------------------------------------------------------

    def audit(
        self,
        model: nn.Module,
        lr: float | None = None,
        steps: int | None = None,
        steps_per_epoch: int | None = None,
        optimizer_name: str | None = None,
        optimizer_weight_decay: float = 0.0,
        example: Callable[[], Any] | None = None,
    ) -> AuditReport:
        """Every parameter with shape, decision and effective λ / λ_1, a summary and pitfall warnings.

        `example` (one forward pass of `model`) lets a scoped decay scaling show which parameters it covers.
        """
        if lr is not None:
            lr = check_positive("lr", lr)
        if optimizer_name is not None:
            optimizer_name = check_choice("optimizer name", optimizer_name, OPTIMIZERS)
        for fld, v in (("steps", steps), ("steps_per_epoch", steps_per_epoch)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise ValueError(f"{fld}={v!r} is not valid; allowed values are integers > 0 or None")
        return build_audit(
            self.plan(model),
            mode=self.mode,
            weight_decay=self.weight_decay,
            l1=self.l1,
            decay_scaling=self.decay_scaling,
            optimizer_name=optimizer_name,
            lr=lr,
            steps=steps,
            steps_per_epoch=steps_per_epoch,
            optimizer_weight_decay=check_nonneg("optimizer_weight_decay", optimizer_weight_decay),
            weight_decay_schedule=self.weight_decay_schedule,
            weight_decay_warmup_steps=self.weight_decay_warmup_steps,
            in_scope=self.scope(model, example) if RULES[self.mode].acts is Acts.DECOUPLED else None,
        )


def _dummy_forward(model: nn.Module, decay_scaling: str) -> Callable[[], Any]:
    """A forward pass of a model that offers one (Hugging Face's `dummy_inputs`); otherwise a ValueError."""
    inputs = getattr(model, "dummy_inputs", None)
    if isinstance(inputs, dict):
        return lambda: model(**inputs)
    raise ValueError(f"decay_scaling={decay_scaling!r} decays the parameters that feed a normalization layer with "
                     "AdamC's c_t and the others with η_t; finding them takes one forward pass: pass "
                     "example=lambda: model(batch) (or model.loss(batch)) to reg.optimizer / reg.param_groups")
