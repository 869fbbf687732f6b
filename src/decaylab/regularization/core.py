"""The Regularization object: one validated description of how a run regularizes, and its hooks."""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn

from . import penalty as _penalty
from .audit import AuditReport, build_audit
from .decay_set import DECAY_SETS, DecayPlan, build_plan
from .optim import OPTIMIZERS, build_optimizer, build_param_groups
from .validate import (
    DECAY_SCALINGS,
    MODES,
    check_bool,
    check_choice,
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


class Regularization:
    """How a run regularizes: mode (none | l2 | coupled | decoupled), λ, λ_1, decay set and multipliers."""

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
    ) -> None:
        self.mode = check_choice("mode", mode, MODES)
        self.weight_decay = check_nonneg("weight_decay", weight_decay)
        self.decay_set = check_choice("decay_set", decay_set, DECAY_SETS)
        self.l1 = check_nonneg("l1", l1)
        self.decay_scaling = check_choice("decay_scaling", decay_scaling, DECAY_SCALINGS)
        if self.decay_scaling == "schedule" and self.mode != "decoupled":
            raise ValueError(
                f"decay_scaling='schedule' is only meaningful with mode='decoupled' (got mode={self.mode!r}); "
                "allowed for this mode: decay_scaling='lr'"
            )
        self.exclude = check_patterns("exclude", exclude)
        self.multipliers = check_multipliers("multipliers", multipliers)
        self.allow_double = check_bool("allow_double", allow_double)
        self._cache: weakref.WeakKeyDictionary[nn.Module, _Cached] = weakref.WeakKeyDictionary()

    # -- description ---------------------------------------------------------------------------

    @property
    def regularizes(self) -> bool:
        """True when the mode itself applies λ (l2, coupled or decoupled with λ > 0)."""
        return self.mode in ("l2", "coupled", "decoupled") and self.weight_decay > 0

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

    def param_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        """Torch param groups (one per distinct effective λ plus no-decay) with this mode's weight_decay."""
        lr = check_positive("lr", lr)
        return build_param_groups(
            self.plan(model),
            mode=self.mode,
            weight_decay=self.weight_decay,
            decay_scaling=self.decay_scaling,
            lr=lr,
        )

    def optimizer(
        self, model: nn.Module, name: str = "adamw", lr: float = 1e-3, **kwargs: Any
    ) -> torch.optim.Optimizer:
        """A torch optimizer (sgd, sgdw, adam, adamw) applying this mode's decay; kwargs go to torch."""
        check_choice("optimizer name", name, OPTIMIZERS)
        return build_optimizer(
            self.param_groups(model, lr),
            name,
            mode=self.mode,
            regularizes=self.regularizes,
            allow_double=self.allow_double,
            lr=lr,
            kwargs=kwargs,
        )

    # -- training-step hooks -------------------------------------------------------------------

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """The loss terms (λ/2)Σ m‖w‖² (mode l2) + λ_1 Σ m‖w‖₁ over the decay set; 0-dim zero if none."""
        l2 = self.weight_decay if self.mode == "l2" else 0.0
        if l2 == 0.0 and self.l1 == 0.0:
            ref = next(model.parameters(), None)
            return torch.zeros(
                (), dtype=ref.dtype if ref is not None else None, device=ref.device if ref is not None else None
            )
        c = self._cached(model)
        return _penalty.penalty(c.decay_tensors, c.decay_mult, l2=l2, l1=self.l1)

    def norms(self, model: nn.Module) -> dict[str, float]:
        """L2 norms: decay_norm (decay set), nodecay_norm (every other parameter), weight_norm (all)."""
        c = self._cached(model)
        return _penalty.norms(c.all_tensors, c.decay_mask)

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
        lam = self.weight_decay
        if self.mode == "decoupled":
            if self.decay_scaling == "schedule":
                peak = group.get("peak_lr", group.get("initial_lr"))
                if peak is None:
                    raise ValueError(
                        "decay_scaling='schedule' needs the peak lr: build the optimizer with "
                        "reg.optimizer() or reg.param_groups(), whose groups carry 'peak_lr'"
                    )
                return 1.0 - lr / float(peak) * lam
            return 1.0 - lr * lam
        if equivalent and self.mode in ("l2", "coupled"):
            return 1.0 - lr * lam
        return 1.0

    # -- audit ---------------------------------------------------------------------------------

    def audit(
        self,
        model: nn.Module,
        lr: float | None = None,
        steps: int | None = None,
        steps_per_epoch: int | None = None,
        optimizer_name: str | None = None,
        optimizer_weight_decay: float = 0.0,
    ) -> AuditReport:
        """Every parameter with shape, decision and effective λ / λ_1, a summary and pitfall warnings."""
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
        )
