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

λ itself may follow a schedule of its own (`weight_decay_schedule`, WEIGHT_DECAY_SCHEDULES): λ_t = λ·ρ(t) for the
rules the optimizer applies (GRADIENT and DECOUPLED), t the number of optimizer steps already taken.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

# This module is data and imports no torch, so config validation and the CLI's help read it at no cost; the
# kernels are named here and looked up in kernels.py when a rule is applied.

OPTIMIZERS: tuple[str, ...] = ("sgd", "sgdw", "adam", "adamw")


@dataclass(frozen=True)
class DecaySet:
    """One value of `regularization.decay_set`: which parameters it decays, and whose convention it is."""

    name: str
    decays: str  # one line: what is decayed and what is not
    source: str  # the library function or text it follows ("" for decaylab's own)


# Which parameters are decayed; decay_set.py implements each (one decision function per name). decaylab's own sets
# first, then other libraries' conventions reproduced exactly (tests/test_decay_sets.py compares each with the
# library's own function where it can be installed).
DECAY_SET_RULES: dict[str, DecaySet] = {
    s.name: s
    for s in (
        DecaySet("all", "every trainable parameter", "the seed listing, fairseq, torch's default"),
        DecaySet("no_bias_norm", "all but biases and normalization parameters (by module type, class name and "
                 "name: `norm`, `ln_f`, ...)", ""),
        DecaySet("matrices", "parameters with ndim ≥ 2, embeddings included", "nanoGPT's rule (= `nanogpt`)"),
        DecaySet("matrices_no_embedding", "parameters with ndim ≥ 2 except embedding tables", ""),
        DecaySet("hf", "all but parameters of nn.LayerNorm modules and names matching bias, layernorm, rmsnorm, "
                 "`(?:^|\\.)norm(?:$|\\.)`, `_norm(?:$|\\.)` (lowercased); embeddings decayed",
                 "transformers `Trainer.get_decay_parameter_names` (5.x)"),
        DecaySet("timm", "all but ndim ≤ 1, names ending `.bias`, and names matching (fnmatch) the model's "
                 "`no_weight_decay()`", "timm `optim._param_groups.param_groups_weight_decay`"),
        DecaySet("nanogpt", "parameters with ndim ≥ 2 (token and position embeddings included)",
                 "nanoGPT `GPT.configure_optimizers`"),
        DecaySet("olmo2", "all but nn.Embedding weights: biases and norms decayed",
                 "OLMo `olmo/optim.py` `get_param_groups` with OLMo 2's decay_norm_and_bias=true, "
                 "decay_embeddings=false"),
        DecaySet("keras", "every trainable parameter", "Keras 3 optimizers (no `exclude_from_weight_decay` call)"),
    )
}
DECAY_SETS: tuple[str, ...] = tuple(DECAY_SET_RULES)


def decay_set_names(names: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Registered decay-set names from a comma-separated string or a list (order kept, repeats dropped).

    A ValueError names every unknown one and lists the registered ones.
    """
    items = names.split(",") if isinstance(names, str) else list(names)
    wanted = tuple(dict.fromkeys(str(n).strip().lower() for n in items if str(n).strip()))
    unknown = [n for n in wanted if n not in DECAY_SET_RULES]
    if unknown or not wanted:
        what = f"unknown decay set{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}" if unknown \
            else "no decay set named"
        raise ValueError(f"{what}; allowed values are {', '.join(DECAY_SETS)}")
    return wanted


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
    # "all": every decayed parameter; "normalized": only those that feed a normalization layer
    # (regularization/normalized.py), the others decayed with `outside`'s c_t
    scope: str = "all"
    outside: str = "lr"

    def torch_factor(self, lr: float, peak: float) -> float:
        """The factor f on λ such that torch's decay lr_t·(λ·f) is c_t·λ (at lr_t = `lr`)."""
        return self.coefficient(lr, peak) / lr if lr else 0.0  # at lr_t = 0 torch decays by 0·wd whatever f is


DECAY_SCALING_RULES: dict[str, DecayScaling] = {
    s.name: s
    for s in (
        DecayScaling("lr", "c_t = η_t (torch AdamW)", lambda lr, peak: lr, at_peak="η_max"),
        DecayScaling("schedule", "c_t = η_t/η_max (Loshchilov & Hutter)", lambda lr, peak: lr / peak, at_peak="1"),
        # AdamC / corrected decay (Defazio 2025), on every decayed parameter as timm's `adamc`
        DecayScaling("corrected", "c_t = η_t²/η_max (AdamC, Defazio 2025)", lambda lr, peak: lr * lr / peak,
                     varies=True, at_peak="η_max"),
        # the paper's scope: "layers followed by normalization" get the correction, every other one torch's η_t
        DecayScaling("corrected_normalized", "c_t = η_t²/η_max on parameters that feed a normalization layer, "
                     "η_t on the others (AdamC, the paper's scope)", lambda lr, peak: lr * lr / peak,
                     varies=True, at_peak="η_max", scope="normalized"),
    )
}
DECAY_SCALINGS: tuple[str, ...] = tuple(DECAY_SCALING_RULES)


@dataclass(frozen=True)
class WeightDecaySchedule:
    """How λ_t = λ·ρ(t) follows its own schedule, after an optional linear warm-up from λ/W to λ over W steps."""

    name: str
    formula: str
    shape: Callable[[float], float]  # progress p ∈ [0, 1] through the steps after the warm-up -> ρ

    def multiplier(self, step: int, total_steps: int | None, warmup_steps: int = 0) -> float:
        """ρ at optimizer step `step` (steps already taken), as the lr schedule's warm-up and progress count."""
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if total_steps is None:  # only a constant schedule needs no length (checked where the optimizer is built)
            return self.shape(0.0)
        return self.shape(min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))


# The conventions of training/schedule.py's lr multiplier (the same warm-up, progress and shapes), so a λ schedule
# and an lr schedule of the same name have the same shape; optax's `add_decayed_weights(weight_decay=schedule)`
# is the semantic reference (the schedule is evaluated at the count of updates already applied).
WEIGHT_DECAY_SCHEDULES: dict[str, WeightDecaySchedule] = {
    s.name: s
    for s in (
        WeightDecaySchedule("constant", "λ_t = λ", lambda p: 1.0),
        WeightDecaySchedule("linear", "λ_t = λ·(1 − p), linear to zero at the end of the run", lambda p: 1.0 - p),
        WeightDecaySchedule("cosine", "λ_t = λ·½(1 + cos πp), cosine to zero at the end of the run",
                            lambda p: 0.5 * (1.0 + math.cos(math.pi * p))),
    )
}
WEIGHT_DECAY_SCHEDULE_NAMES: tuple[str, ...] = tuple(WEIGHT_DECAY_SCHEDULES)


def schedule_is_constant(settings: Mapping[str, Any]) -> bool:
    """True when λ_t = λ at every step under a regularization section (constant, no warm-up)."""
    return (settings.get("weight_decay_schedule", "constant") == "constant"
            and not settings.get("weight_decay_warmup_steps", 0))


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
    # What a DECOUPLED rule's kernel reads of the coming optimizer step, besides the weights: None (nothing: torch's
    # group weight_decay realizes it in a single model), "update" (the sign of the update u_t the step will take:
    # cautious decay), "second_moment" (Adam's mean v̂_t over every trainable parameter: SWD). A rule that reads
    # one is applied by its `replica_kernel` in both engines: a step pre-hook (optim.py) in the single model,
    # ReplicaDecay in the stack.
    reads: str | None = None
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

    @property
    def schedulable(self) -> bool:
        """True when λ may follow `weight_decay_schedule`: the optimizer applies the rule (gradient or decoupled)."""
        return self.decays and self.acts in (Acts.GRADIENT, Acts.DECOUPLED)

    def torch_weight_decay(self, lam: float, decay_scaling: str, peak_lr: float, lr: float | None = None) -> float:
        """The torch param-group `weight_decay` that realizes effective λ under this rule at lr_t = `lr` (the peak
        when None)."""
        if self.acts is Acts.GRADIENT:
            return lam
        if self.acts is Acts.DECOUPLED and self.reads is None:
            # torch decays by lr_t·wd; with wd = λ·c_t/lr_t that is c_t·λ
            return lam * DECAY_SCALING_RULES[decay_scaling].torch_factor(peak_lr if lr is None else lr, peak_lr)
        return 0.0  # nowhere: nothing; loss terms live in the loss; a rule that reads the step: its kernel

    def decay_factor(self, lam: float, decay_scaling: str, lr: float, peak_lr: float,
                     denominator: float = 1.0) -> float:
        """The per-step multiplicative decay 1 − c_t·λ/d of a DECOUPLED rule (1 for every other rule); d is SWD's
        √mean v̂ + ε (1 for every other rule), and for cautious decay the factor holds where the mask is on."""
        if self.acts is not Acts.DECOUPLED:
            return 1.0
        return 1.0 - DECAY_SCALING_RULES[decay_scaling].coefficient(lr, peak_lr) * lam / denominator


@functools.cache
def _kernel(name: str) -> Callable[..., Any]:
    return getattr(importlib.import_module(".kernels", __package__), name)


# Typical λ per decay scaling (AdamW's convention for η_t-scaled ones, a per-step fraction for `schedule`)
_DECOUPLED_RANGE = {"lr": (1e-4, 1.0), "schedule": (1e-6, 1e-2), "corrected": (1e-4, 1.0),
                    "corrected_normalized": (1e-4, 1.0)}
_SWD_RANGE = {"lr": (1e-6, 1e-2), "corrected": (1e-6, 1e-2), "corrected_normalized": (1e-6, 1e-2)}

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
             usual_range=_DECOUPLED_RANGE,
             replica_kernel="decoupled_decay_", timescale=True),
        # Chen et al. 2025 (arXiv 2510.12402), Algorithm 1: decay only where the update and the weight agree in
        # sign. Not timm's `caution` (Liang et al. 2024), which masks the update and leaves the decay alone.
        Rule("cautious", Acts.DECOUPLED, "weight_decay", True,
             "w ← w − c_t·λ·m·𝟙[u ⊙ w ≥ 0] ⊙ w before the update u (cautious weight decay, Chen et al. 2025)",
             "cautious (decay where u·w ≥ 0)", "#ff7f0e",
             usual_range=_DECOUPLED_RANGE,
             replica_kernel="cautious_decay_", reads="update"),
        # Xie et al., NeurIPS 2023 (arXiv 2011.11152), AdamS: the decoupled step divided by √mean(v̂_t) + ε, the
        # mean over every trainable parameter's bias-corrected second moment (the paper's and pytorch-optimizer's).
        Rule("swd", Acts.DECOUPLED, "weight_decay", True,
             "w ← w − c_t·λ·m·w/(√mean(v̂_t) + ε) before the update (stable weight decay, AdamS)",
             "SWD (AdamS: decay ÷ √mean v̂)", "#8c564b", optimizers=("adam", "adamw"),
             optimizer_hint="stable weight decay divides the decay by Adam's second moment v̂, which SGD does not "
                            "keep; use mode='decoupled' (SGDW) or mode='cautious' with SGD",
             usual_range=_SWD_RANGE,
             replica_kernel="stable_decay_", reads="second_moment"),
        Rule("l1", Acts.LOSS, "l1", False, "loss += λ₁·Σ m‖w‖₁ (with any mode)", "l1 (penalty)", "#9467bd",
             penalty="l1_penalty", replica_kernel="add_l1_gradient_",
             replica_penalty="replica_l1_penalty"),
    )
}
# The regularization fields that pick a run's rules and their per-step coefficients (the rest, decay set and
# multipliers, pick the parameters): what the replicas of one stack may differ in, besides each rule's strength.
RULE_FIELDS: tuple[str, ...] = ("mode", "decay_scaling", "weight_decay_schedule", "weight_decay_warmup_steps")
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


def check_settings(settings: Mapping[str, Any], optimizer: str | None = None) -> None:
    """Raise ValueError (one line: the fields, why, what to use) for a combination that means nothing."""
    rule = get_rule(settings["mode"])
    scaling = settings.get("decay_scaling", "lr")
    if scaling != "lr" and rule.acts is not Acts.DECOUPLED:
        decoupled = ", ".join(repr(m) for m in MODES if RULES[m].acts is Acts.DECOUPLED)
        raise ValueError(
            f"decay_scaling={scaling!r} is only meaningful with a decoupled mode ({decoupled}; "
            f"got mode={rule.name!r}); allowed for this mode: decay_scaling='lr'"
        )
    if not schedule_is_constant(settings) and rule.decays and not rule.schedulable:
        schedulable = ", ".join(repr(m) for m in MODES if RULES[m].schedulable)
        warmup = settings.get("weight_decay_warmup_steps", 0)
        with_warmup = f" with weight_decay_warmup_steps={warmup}" if warmup else ""
        raise ValueError(
            f"weight_decay_schedule={settings.get('weight_decay_schedule', 'constant')!r}{with_warmup} cannot "
            f"schedule mode={rule.name!r}: its term "
            f"lives in the loss, outside the optimizer step that follows the schedule; use one of {schedulable} "
            "(mode='coupled' is l2's trajectory)"
        )
    if optimizer is not None:
        check_optimizer(rule, optimizer)


def fit_to_mode(settings: dict[str, Any]) -> dict[str, Any]:
    """`settings` with the per-step fields a mode has no use for set to their defaults (a sweep's other modes)."""
    rule = RULES[settings["mode"]]
    if rule.acts is not Acts.DECOUPLED:
        settings["decay_scaling"] = "lr"  # a decay scaling only exists for decoupled decay
    if not rule.schedulable:
        settings.update(weight_decay_schedule="constant", weight_decay_warmup_steps=0)
    return settings
