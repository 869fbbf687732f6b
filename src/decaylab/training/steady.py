"""Steady-state diagnostics of decoupled weight decay, measured on the step before each evaluation.

For every decayed matrix (ndim ≥ 2) of every run an engine trains, at each evaluation:
- ‖g‖/‖w‖: the gradient the last step used (after clipping) over the pre-step weights;
- ‖u‖/‖w‖: the step direction u of the last step (w_{t+1} = (1 − d)·w_t − η_t·u; Adam's m̂/(√v̂ + ε), SGD's
  momentum update, the gradient for plain SGD) over the pre-step weights, against Defazio's (2025) steady state
  √(2λ/η_t), written √(2d)/η_t with d the per-step decay fraction so that every decay scaling and λ schedule fits;
- the angle between w_t and w_{t+1}, against Kosson et al.'s (2024) rotational equilibrium √(2d·(1 − β)/(1 + β)),
  β Adam's β₁ or SGD's momentum.
See docs/regularization.md ("Steady state") for the formulas, their sources and where they apply.

Cost: the loop calls `before_step` only before a step that ends with an evaluation (it copies the tracked weights)
and `measure` right after that evaluation (a handful of reductions per tensor and one read-back); ordinary steps
are untouched and gain no host sync.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from decaylab.config import Config
from decaylab.regularization.rules import RULES

# The fields each metrics row gains (besides `steady_tensors`, the per-tensor values, and `steady_scope`).
SUMMARY_FIELDS = ("grad_ratio", "grad_ratio_min", "grad_ratio_max", "update_ratio", "update_ratio_min",
                  "update_ratio_max", "update_ratio_pred", "angle", "angle_min", "angle_max", "angle_pred")
SCALE_INVARIANT = "scale-invariant"  # `steady_scope` when the model declares scale-invariant weights
MATRICES = "decayed matrices"  # `steady_scope` otherwise


class Run(Protocol):
    """A run the diagnostics measure (the loop's `RunState`): its config says its rule and optimizer."""

    config: Config


@dataclass
class SteadyView:
    """What the diagnostics read of an engine at one moment (its `steady_view()`); nothing in it is copied."""

    runs: Sequence[Run]  # the active runs, in the order of the replica dimension
    params: dict[str, torch.Tensor]  # every parameter by name: [K, …] when `stacked`, else the model's own
    multipliers: dict[str, float]  # parameter name -> its λ multiplier m_w (0 outside the decay set)
    model: nn.Module  # a model of the architecture (its `scale_invariant` declaration is read)
    lr: float  # the optimizer's lr now: before a step, the lr of the coming step
    decay_factors: Callable[[], list[float]]  # per run, 1 − c_t·λ_t of the optimizer's coming step (base λ)
    stacked: bool = True


def declared_scale_invariant(model: nn.Module) -> frozenset[str]:
    """The parameter names the model declares scale-invariant (`scale_invariant`: regexes, searched in each name).

    A weight is scale-invariant when the loss does not change if it is multiplied by any c > 0 (a matrix whose
    output only reaches the loss through a normalization): Defazio's "normalized layers". An architecture lists its
    own; none of decaylab's does (docs/regularization.md says why), so the summary then covers every decayed matrix.
    """
    patterns = [re.compile(p) for p in getattr(model, "scale_invariant", ())]
    return frozenset(name for name, _ in model.named_parameters() if any(p.search(name) for p in patterns))


def momentum_of(config: Config) -> float | None:
    """β of the rotational equilibrium: Adam's β₁ or SGD's momentum; None for Nesterov SGD (not in the model)."""
    train = config.train
    if train.optimizer == "sgd":
        return None if train.nesterov else float(train.momentum)
    return float(train.betas[0])


def predictions(config: Config, decay: float, lr: float) -> tuple[float | None, float | None]:
    """(‖u‖/‖w‖, angle) at equilibrium for a tensor decayed by the fraction `decay` per step at learning rate `lr`.

    Only for `mode: decoupled` with a decay > 0 (the rule both papers analyse); None otherwise.
    """
    if config.regularization.mode != "decoupled" or decay <= 0 or lr <= 0:
        return None, None
    beta = momentum_of(config)
    # Defazio 2025: ‖g‖/‖x‖ = √(2λ/γ_t) for SGD, whose per-step decay is d = γ_t·λ: √(2d)/γ_t in any scaling
    ratio = math.sqrt(2.0 * decay) / lr
    # Kosson et al. 2024: AdamW √(2ηλ(1 − β₁)/(1 + β₁)); the same form with SGD's momentum for decoupled SGD
    angle = None if beta is None else math.sqrt(2.0 * decay * (1.0 - beta) / (1.0 + beta))
    return ratio, angle


@dataclass
class _Before:
    """The probe's record of the step before an evaluation."""

    runs: list[Run]
    weights: dict[str, torch.Tensor]  # tracked name -> [K, …] copy of the pre-step weights
    lr: float
    factors: list[float]
    multipliers: dict[str, float]
    scale_invariant: frozenset[str] = field(default_factory=frozenset)


def _stacked(view: SteadyView, tensor: torch.Tensor | None) -> torch.Tensor | None:
    if tensor is None:
        return None
    tensor = tensor.detach()
    return tensor if view.stacked else tensor.unsqueeze(0)


def _select(tensor: torch.Tensor | None, rows: list[int], k: int) -> torch.Tensor | None:
    """`tensor`'s replica rows `rows` (itself when they are all of its k rows, in order)."""
    if tensor is None or rows == list(range(k)):
        return tensor
    return tensor.index_select(0, torch.tensor(rows, device=tensor.device))


def tracked(view: SteadyView) -> list[str]:
    """The tensors measured: decayed (m_w > 0) with two or more dimensions per replica (Kosson et al.'s choice)."""
    extra = 1 if view.stacked else 0
    return [name for name, p in view.params.items() if view.multipliers.get(name, 0.0) > 0 and p.dim() - extra >= 2]


class SteadyProbe:
    """Copies the tracked weights before a step that ends with an evaluation, and measures that step after it."""

    def __init__(self) -> None:
        self._before: _Before | None = None

    def before_step(self, view: SteadyView) -> None:
        """Keep what the next step's diagnostics need: the tracked pre-step weights, the lr and the decay."""
        with torch.no_grad():
            weights = {name: _stacked(view, view.params[name]).clone() for name in tracked(view)}
        self._before = _Before(list(view.runs), weights, float(view.lr), list(view.decay_factors()),
                               dict(view.multipliers), declared_scale_invariant(view.model))

    def measure(self, view: SteadyView) -> list[dict[str, Any]]:
        """Each run's diagnostics of the step just taken (an empty dict for a run the probe did not see before it)."""
        before, self._before = self._before, None
        if before is None or not before.weights:
            return [{} for _ in view.runs]
        # a run may have left the engine (diverged) since the copy: pair each run's rows by identity
        now = [i for i, r in enumerate(view.runs) if r in before.runs]
        known = [view.runs[i] for i in now]
        rows = [before.runs.index(r) for r in known]
        names = list(before.weights)
        values = _reductions(view, before, names, rows, now) if rows else []
        out: dict[int, dict[str, Any]] = {}
        for j, run in enumerate(known):
            out[id(run)] = _run_fields(run.config, before, names, [v[j] for v in values], rows[j])
        return [out.get(id(r), {}) for r in view.runs]


@torch.no_grad()
def _reductions(view: SteadyView, before: _Before, names: list[str], rows: list[int], now: list[int]
                ) -> list[list[list[float]]]:
    """Per tracked tensor and run: ‖w_t‖², ‖s‖², ⟨s, w_t⟩ and ‖g‖² (−1: no gradient), read back once.

    s = w_{t+1} − (1 − d)·w_t = −η·u, the step without its decay (d: the tensor's decay fraction in that step).
    `rows`: each measured run's index in the copy; `now`: its index in the engine's tensors.
    """
    decays: torch.Tensor | None = None
    stats = []
    for name in names:
        old = _select(before.weights[name], rows, len(before.runs))
        new = _select(_stacked(view, view.params[name]), now, len(view.runs))
        old = old.flatten(1)
        if decays is None:  # each run's decay fraction of the base λ, [K, 1], copied to the device once
            decays = torch.tensor([[1.0 - before.factors[r]] for r in rows], dtype=old.dtype, device=old.device)
        # Δ = w_{t+1} − w_t is exact in float32 (the two are close); adding d·w_t back leaves s, which holds the
        # rotation: taken from the sums of Δ instead, it would be a small difference of large numbers when the
        # decay dominates the step (AdamW with a large λ), and float32 would lose it
        step = (new.flatten(1) - old).addcmul_(old, decays, value=before.multipliers[name])
        grad = _select(_stacked(view, view.params[name].grad), now, len(view.runs))
        g = (torch.full((old.shape[0],), -1.0, device=old.device) if grad is None
             else torch.linalg.vector_norm(grad.flatten(1).float(), dim=1).square())
        stats.append(torch.stack([torch.linalg.vector_norm(old.float(), dim=1).square(),
                                  torch.linalg.vector_norm(step.float(), dim=1).square(),
                                  (step * old).float().sum(1), g], dim=1).double())
    return torch.stack(stats).tolist()  # [tensors][runs][4]: the one host sync of the measurement


def _run_fields(config: Config, before: _Before, names: list[str], values: list[list[float]], row: int
                ) -> dict[str, Any]:
    """One run's row fields from its reductions; `row` is its index in the copy (its decay factor)."""
    base_decay = 1.0 - before.factors[row]
    lr = before.lr
    # the step direction is recovered exactly where the decay fraction is known exactly (not cautious or SWD,
    # whose decay depends on the step's own update or second moment); the angle does not depend on it
    exact = RULES[config.regularization.mode].reads is None
    per: dict[str, list[float | None]] = {}
    preds: dict[str, tuple[float | None, float | None]] = {}
    for name, (w2, s2, dot, g2) in zip(names, values, strict=True):
        decay = base_decay * before.multipliers.get(name, 0.0)
        norm = math.sqrt(w2)
        grad_ratio = math.sqrt(g2) / norm if g2 >= 0 and norm > 0 else None
        update_ratio = math.sqrt(s2) / lr / norm if exact and lr > 0 and norm > 0 else None
        angle = None
        if norm > 0:
            # w_{t+1} = (1 − d)·w_t + s: along w_t it keeps (1 − d)·‖w_t‖ + ⟨s, ŵ_t⟩, across it s's perpendicular
            # part; atan2 of the two, where acos of their cosine would round to 0 below ~1e-3 rad in float32
            radial = dot / norm
            angle = math.atan2(math.sqrt(max(s2 - radial * radial, 0.0)), (1.0 - decay) * norm + radial)
        per[name] = [grad_ratio, update_ratio, angle]
        preds[name] = predictions(config, decay, lr)
    scope = [n for n in names if n in before.scale_invariant] or names
    fields: dict[str, Any] = {}
    for i, key in enumerate(("grad_ratio", "update_ratio", "angle")):
        found = [per[n][i] for n in scope if per[n][i] is not None]
        fields[key] = statistics.median(found) if found else None
        fields[f"{key}_min"] = min(found) if found else None
        fields[f"{key}_max"] = max(found) if found else None
    for i, key in enumerate(("update_ratio_pred", "angle_pred")):
        found = [preds[n][i] for n in scope if preds[n][i] is not None]
        fields[key] = statistics.median(found) if found else None
    fields["steady_scope"] = SCALE_INVARIANT if scope is not names else MATRICES
    fields["steady_tensors"] = {n: [None if v is None else float(f"{v:.4g}") for v in per[n]] for n in names}
    return fields
