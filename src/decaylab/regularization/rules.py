"""The registry of decay rules: every `regularization.mode` (and the l1 term), registered once, read by every caller.

A rule says where it acts in a training step, which optimizers it allows, which config field holds its λ, the
torch group `weight_decay` that realizes it inside a torch optimizer, and the functional kernels (kernels.py) that
apply it to a list of tensors with λ given per tensor as a float or a per-replica [K] tensor. Config validation,
the optimizer factory, the audit, both training engines, the sweep spec, the CLI help and the report read this
table; none keeps a list of mode names or coefficients of its own. An engine that cannot run a rule refuses it by
name (`Rule.replica_kernel is None`), never runs it as λ = 0.

Order of a step (DESIGN.md §3), which both engines follow: LOSS terms join the gradient (autograd of the penalty,
or their analytic gradient) -> gradient clipping -> GRADIENT terms (λ·w added to the clipped gradient, as torch
SGD/Adam `weight_decay`) -> DECOUPLED decay (w ← w − c_t·λ·w, AdamW's order) -> the optimizer's update.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

# This module is data and imports no torch, so config validation and the CLI's help read it at no cost; the
# kernels are named here and looked up in kernels.py when a rule is applied.

OPTIMIZERS: tuple[str, ...] = ("sgd", "sgdw", "adam", "adamw")
# Which parameters are decayed (decay_set.py): the seed's and fairseq's `all`, HF Trainer's `no_bias_norm`,
# nanoGPT's `matrices`, and `matrices_no_embedding`.
DECAY_SETS: tuple[str, ...] = ("all", "no_bias_norm", "matrices", "matrices_no_embedding")


class Acts(str, Enum):
    """Where in a training step a rule acts."""

    NOWHERE = "nowhere"
    LOSS = "loss"  # a term of the loss: its gradient joins the task gradient before clipping
    GRADIENT = "gradient"  # λ·w added to the clipped gradient inside the optimizer step
    DECOUPLED = "decoupled"  # w ← w − c_t·λ·w apart from the gradient, before the update


@dataclass(frozen=True)
class DecayScaling:
    """How a decoupled rule's per-step coefficient c_t follows the learning-rate schedule (w ← w − c_t·λ·w)."""

    name: str
    formula: str
    coefficient: Callable[[float, float], float]  # (lr_t, peak_lr) -> c_t
    varies: bool = False  # c_t / lr_t changes during the run: torch's group weight_decay is updated every step
    # c_t at the schedule's peak as text, for the timescale rule λ = 1/(c_peak·τ_iter) (timescale.py)
    at_peak: str = "c_peak"

    def torch_factor(self, lr: float, peak: float) -> float:
        """The factor f on λ such that torch's decay lr_t·(λ·f) is c_t·λ (at lr_t = `lr`)."""
        return self.coefficient(lr, peak) / lr


DECAY_SCALING_RULES: dict[str, DecayScaling] = {
    s.name: s
    for s in (
        DecayScaling("lr", "c_t = η_t (torch AdamW)", lambda lr, peak: lr, at_peak="η_max"),
        DecayScaling("schedule", "c_t = η_t/η_max (Loshchilov & Hutter)", lambda lr, peak: lr / peak, at_peak="1"),
        # AdamC / corrected decay (Defazio 2025), on every decayed parameter as timm's `adamc`
        DecayScaling("corrected", "c_t = η_t²/η_max (AdamC, Defazio 2025)", lambda lr, peak: lr * lr / peak,
                     varies=True, at_peak="η_max"),
    )
}
DECAY_SCALINGS: tuple[str, ...] = tuple(DECAY_SCALING_RULES)


@dataclass(frozen=True)
class Rule:
    """One decay rule: its semantics, the optimizers it allows and its kernels."""

    name: str
    acts: Acts
    strength: str | None  # the config field that holds its λ (None: the rule has no strength)
    is_mode: bool  # a value of `regularization.mode`; False: a term that combines with any mode (l1)
    formula: str  # one line, for help texts, docs and the report
    label: str  # the report's legend
    color: str  # the report's colour
    optimizers: tuple[str, ...] = OPTIMIZERS
    optimizer_hint: str = ""  # why an optimizer outside `optimizers` is refused, and what to use instead
    usual_range: Mapping[str, tuple[float, float]] | None = None  # per decay scaling ("" when it has none)
    # Kernels, by their name in kernels.py:
    # `penalty`: the loss term λ·Σ m·φ(w) of a LOSS rule (differentiable; the single-model engine backpropagates it);
    # `replica_kernel`: the stacked engine's: LOSS / GRADIENT rules add c·∂φ/∂w to the gradients, DECOUPLED rules
    # multiply the weights by 1 − c_t·c; c per tensor is λ·m, a float or a [K] tensor shaped to broadcast.
    # None: the stacked engine refuses the rule by name;
    # `replica_penalty`: the per-replica value Σ c·φ(w) of a LOSS rule over stacked tensors ([K]), for the metrics.
    penalty: str | None = None
    replica_kernel: str | None = None
    replica_penalty: str | None = None
    # λ has an EMA timescale τ_iter = 1/(c_t·λ) (`regularization.tau_epochs`, timescale.py): a step multiplies the
    # decayed weights by 1 − c_t·λ (a DECOUPLED rule; a GRADIENT rule only under plain SGD without momentum).
    # False (the default, so a new rule is refused until someone shows it has one): τ is refused with the reason.
    timescale: bool = False

    def kernel(self, kind: str) -> Callable[..., Any]:
        """The kernel function registered as `kind` (penalty, replica_kernel, replica_penalty)."""
        name = getattr(self, kind)
        if name is None:
            raise ValueError(f"rule {self.name!r} has no {kind} kernel")
        return _kernel(name)

    @property
    def decays(self) -> bool:
        """True when the rule has a strength that shrinks weights (every rule but `none`)."""
        return self.strength is not None

    def strength_in(self, settings: Mapping[str, Any]) -> float:
        """This rule's λ under `settings` (a regularization section: mode, weight_decay, l1); 0 when inactive."""
        if self.strength is None or (self.is_mode and settings["mode"] != self.name):
            return 0.0
        return float(settings[self.strength])

    def torch_weight_decay(self, lam: float, decay_scaling: str, peak_lr: float, lr: float | None = None) -> float:
        """The torch param-group `weight_decay` that realizes effective λ under this rule at lr_t = `lr` (the peak
        when None)."""
        if self.acts is Acts.GRADIENT:
            return lam
        if self.acts is Acts.DECOUPLED:
            # torch decays by lr_t·wd; with wd = λ·c_t/lr_t that is c_t·λ
            return lam * DECAY_SCALING_RULES[decay_scaling].torch_factor(peak_lr if lr is None else lr, peak_lr)
        return 0.0  # nowhere: nothing; loss terms live in the loss

    def decay_factor(self, lam: float, decay_scaling: str, lr: float, peak_lr: float) -> float:
        """The per-step multiplicative decay 1 − c_t·λ of a DECOUPLED rule (1 for every other rule)."""
        if self.acts is not Acts.DECOUPLED:
            return 1.0
        return 1.0 - DECAY_SCALING_RULES[decay_scaling].coefficient(lr, peak_lr) * lam


@functools.cache
def _kernel(name: str) -> Callable[..., Any]:
    return getattr(importlib.import_module(".kernels", __package__), name)


RULES: dict[str, Rule] = {
    r.name: r
    for r in (
        Rule("none", Acts.NOWHERE, None, True, "no decay", "none", "#222222"),
        Rule("l2", Acts.LOSS, "weight_decay", True, "loss += (λ/2)·Σ m‖w‖²", "l2 (penalty)", "#2ca02c",
             usual_range={"": (1e-5, 1e-1)}, penalty="l2_penalty",
             replica_kernel="add_l2_gradient_", replica_penalty="replica_l2_penalty"),
        Rule("coupled", Acts.GRADIENT, "weight_decay", True, "grad += λ·m·w after clipping (torch SGD/Adam)",
             "coupled (λw in the gradient)", "#d62728", optimizers=("sgd", "adam"),
             optimizer_hint="that optimizer applies weight decay decoupled from the gradient; use "
                            "mode='decoupled' with it, or optimizer 'sgd'/'adam' for coupled decay",
             usual_range={"": (1e-5, 1e-1)}, replica_kernel="add_l2_gradient_", timescale=True),
        Rule("decoupled", Acts.DECOUPLED, "weight_decay", True, "w ← w − c_t·λ·m·w before the update (AdamW)",
             "decoupled (AdamW-style)", "#1f77b4",
             usual_range={"lr": (1e-4, 1.0), "schedule": (1e-6, 1e-2), "corrected": (1e-4, 1.0)},
             replica_kernel="decoupled_decay_", timescale=True),
        Rule("l1", Acts.LOSS, "l1", False, "loss += λ₁·Σ m‖w‖₁ (with any mode)", "l1 (penalty)", "#9467bd",
             penalty="l1_penalty", replica_kernel="add_l1_gradient_",
             replica_penalty="replica_l1_penalty"),
    )
}
# The values of `regularization.mode`, and the rules a sweep can vary (each λ in its own field).
MODES: tuple[str, ...] = tuple(name for name, r in RULES.items() if r.is_mode)
SWEEPABLE: tuple[str, ...] = tuple(name for name, r in RULES.items() if r.decays)
# Modes whose λ is `weight_decay` (the modes a sweep of weight decay can take as its default).
DECAY_MODES: tuple[str, ...] = tuple(name for name in MODES if RULES[name].strength == "weight_decay")


def get_rule(name: str) -> Rule:
    """The registered rule `name`; a ValueError lists the registered ones."""
    rule = RULES.get(name)
    if rule is None:
        raise ValueError(f"{name!r} is not a registered decay rule; allowed values are {', '.join(RULES)}")
    return rule


def active_rules(settings: Mapping[str, Any]) -> list[tuple[Rule, float]]:
    """The rules with λ > 0 under a regularization section (mode, weight_decay, l1), each with its λ."""
    return [(r, r.strength_in(settings)) for r in RULES.values() if r.strength_in(settings) > 0]


def check_optimizer(rule: Rule, optimizer: str) -> None:
    """Raise ValueError when `rule` cannot be realized with `optimizer` (e.g. coupled decay with AdamW)."""
    if optimizer not in rule.optimizers:
        raise ValueError(
            f"mode={rule.name!r} with optimizer {optimizer!r} is contradictory: {rule.optimizer_hint} "
            f"(allowed optimizers for {rule.name!r}: {', '.join(rule.optimizers)})"
        )
