"""Every registered decay rule applied to K stacked replicas at once, each with its own λ (the stacked engine's).

A thin class around the kernels (kernels.py), as torch's AdamW class is around its functional update: it turns
K regularization sections into one coefficient tensor [K, 1, …] per rule and decayed tensor (λ_k·m, zero where a
replica does not use the rule), then applies the rules in the order of a single run's step (rules.py). Each
replica's λ follows its own `weight_decay_schedule` (ρ_k(t) folded into the per-step scale), and a rule whose kernel
reads the coming step (cautious decay, SWD) reads it from the stacked optimizer's state, replica by replica.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from . import kernels
from .rules import DECAY_SCALING_RULES, RULES, WEIGHT_DECAY_SCHEDULES, Acts, Rule, active_rules, schedule_is_constant


class UnsupportedRule(ValueError):
    """A replica asks for a rule that has no stacked kernel."""


class ReplicaDecay:
    """The decay rules of K replicas over stacked parameters named like the single model's."""

    def __init__(self, settings: list[Mapping[str, Any]], multipliers: Mapping[str, float],
                 params: Mapping[str, Tensor], peak_lr: float, device: torch.device,
                 total_steps: int | None = None) -> None:
        # settings: each replica's regularization section (mode, weight_decay, l1, decay_scaling, λ schedule);
        # multipliers: parameter name -> m (0 outside the decay set); peak_lr: the schedule's η_max;
        # total_steps: the run's length, which a λ schedule spans
        self.k = len(settings)
        self.peak_lr = peak_lr
        self.total_steps = total_steps
        self.params = dict(params)
        self.check(settings)
        self.terms: list[tuple[Rule, list[Tensor], list[Tensor]]] = []  # (rule, tensors, coefficients)
        decayed = [(name, p) for name, p in params.items() if multipliers.get(name, 0.0)]
        for rule in RULES.values():
            lam = [rule.strength_in(s) for s in settings]
            if not any(lam):
                continue
            vector = torch.tensor(lam, dtype=torch.float32, device=device)
            coefs = [(vector * multipliers[name]).view(-1, *([1] * (p.dim() - 1))) for name, p in decayed]
            self.terms.append((rule, [p for _, p in decayed], coefs))
        # c_t per replica from its decay scaling: one device mask per scaling in use, combined with Python scalars
        # each step (no host-to-device copy, no sync)
        names = [s["decay_scaling"] for s in settings]
        self.scalings = [(DECAY_SCALING_RULES[name], self._mask(names, name, device)) for name in dict.fromkeys(names)]
        # ρ_k(t) per replica likewise: one mask per distinct (schedule, warm-up); None when every λ is constant
        shapes = [(s.get("weight_decay_schedule", "constant"), s.get("weight_decay_warmup_steps", 0)) for s in settings]
        self.schedules = None if all(schedule_is_constant(s) for s in settings) else [
            (shape, self._mask(shapes, shape, device)) for shape in dict.fromkeys(shapes)]
        self._settings = [dict(s) for s in settings]

    @staticmethod
    def _mask(values: list[Any], value: Any, device: torch.device) -> Tensor:
        return torch.tensor([float(v == value) for v in values], dtype=torch.float32, device=device)

    @staticmethod
    def check(settings: list[Mapping[str, Any]]) -> None:
        """Raise UnsupportedRule naming each rule with λ > 0 in `settings` that has no stacked kernel."""
        refused = sorted({rule.name for s in settings for rule, _ in active_rules(s) if rule.replica_kernel is None})
        if refused:
            raise UnsupportedRule(f"mode {', '.join(map(repr, refused))} cannot be trained by the stacked engine "
                                  "(--vectorized): no per-replica kernel is registered for it; run it without "
                                  "--vectorized")
        scoped = sorted({s["decay_scaling"] for s in settings
                         if DECAY_SCALING_RULES[s["decay_scaling"]].scope != "all"
                         and any(rule.acts is Acts.DECOUPLED for rule, _ in active_rules(s))})
        if scoped:
            raise UnsupportedRule(f"decay_scaling {', '.join(map(repr, scoped))} cannot be trained by the stacked "
                                  "engine (--vectorized): its c_t differs between the parameters that feed a "
                                  "normalization layer and the others, and the per-replica kernels take one c_t per "
                                  "replica; use decay_scaling 'corrected' (every decayed parameter) or run it "
                                  "without --vectorized")

    def _of(self, acts: Acts) -> list[tuple[Rule, list[Tensor], list[Tensor]]]:
        return [t for t in self.terms if t[0].acts is acts]

    @property
    def has_penalty(self) -> bool:
        """True when some replica has a loss term (its value is then part of the divergence check)."""
        return bool(self._of(Acts.LOSS))

    def penalties(self) -> Tensor:
        """Each replica's loss terms Σ λ·m·φ(w) [K] (float32), as `Regularization.penalty` of its run."""
        total = torch.zeros(self.k, device=self._device())
        for rule, tensors, coefs in self._of(Acts.LOSS):
            total = total + rule.kernel("replica_penalty")(tensors, coefs)
        return total

    def add_loss_gradients_(self) -> None:
        """The LOSS rules' gradients, added before clipping (they are part of the loss)."""
        for rule, tensors, coefs in self._of(Acts.LOSS):
            rule.kernel("replica_kernel")([p.detach() for p in tensors], [p.grad for p in tensors], coefs)

    def add_gradient_terms_(self, step: int = 0) -> None:
        """The GRADIENT rules (coupled λ_t·w), added after clipping, as torch SGD/Adam do inside their step."""
        rho = self._rho(step)
        for rule, tensors, coefs in self._of(Acts.GRADIENT):
            if rho is not None:
                coefs = [c * rho.view(-1, *([1] * (c.dim() - 1))) for c in coefs]
            rule.kernel("replica_kernel")([p.detach() for p in tensors], [p.grad for p in tensors], coefs)

    def decay_(self, lr: float, step: int = 0, optimizer: torch.optim.Optimizer | None = None) -> None:
        """The DECOUPLED rules: w ← w·(1 − c_t·λ_t·m) per replica (or the rule's kernel), before the update.

        `step`: the optimizer steps already taken (for the λ schedules); `optimizer`: the stacked optimizer about
        to step, read (never changed) by a rule whose kernel reads the coming step.
        """
        terms = self._of(Acts.DECOUPLED)
        if not terms:
            return
        scale = sum(scaling.coefficient(lr, self.peak_lr) * mask for scaling, mask in self.scalings)
        rho = self._rho(step)
        if rho is not None:
            scale = scale * rho
        denominator: Tensor | float = 1.0
        for rule, tensors, coefs in terms:
            coming = None
            if rule.reads is not None:
                if optimizer is None:
                    raise ValueError(f"rule {rule.name!r} reads the coming optimizer step: pass the optimizer")
                if rule.reads == "second_moment" and not isinstance(denominator, Tensor):
                    denominator = self._denominator(optimizer, coming=True)
                coming = self._coming(optimizer, tensors, denominator)
            rule.kernel("replica_kernel")([p.detach() for p in tensors], coefs, scale, coming)

    def _coming(self, optimizer: torch.optim.Optimizer, tensors: list[Tensor],
                denominator: Tensor | float) -> kernels.ComingStep:
        return kernels.ComingStep([p.grad for p in tensors], [optimizer.state.get(p, {}) for p in tensors],
                                  optimizer.param_groups[0], denominator)

    def _denominator(self, optimizer: torch.optim.Optimizer, coming: bool) -> Tensor:
        """Per replica, SWD's √mean(v̂) + ε over every stacked parameter ([K], float32)."""
        tensors = list(self.params.values())
        if not coming:
            tensors = [p for p in tensors if optimizer.state.get(p)]
            if not tensors:
                return torch.ones(self.k, device=self._device())
        group = optimizer.param_groups[0]
        mean = kernels.mean_second_moment([p.grad for p in tensors], [optimizer.state.get(p, {}) for p in tensors],
                                          group, replicas=True, coming=coming)
        return (mean.sqrt() + group["eps"]).float()

    def _rho(self, step: int) -> Tensor | None:
        """ρ_k(step) per replica ([K]); None when every replica's λ is constant."""
        if self.schedules is None:
            return None
        return sum(WEIGHT_DECAY_SCHEDULES[name].multiplier(step, self.total_steps, warmup) * mask
                   for (name, warmup), mask in self.schedules)

    def weight_decays(self, step: int) -> list[float]:
        """Each replica's λ_t of its mode for the step after `step` steps (λ·ρ(t); the metrics' weight_decay_t)."""
        out = []
        for s in self._settings:
            lam = RULES[s["mode"]].strength_in(s)
            if lam and not schedule_is_constant(s):
                lam *= WEIGHT_DECAY_SCHEDULES[s["weight_decay_schedule"]].multiplier(
                    step, self.total_steps, s.get("weight_decay_warmup_steps", 0))
            out.append(lam)
        return out

    def decay_factors(self, lr: float, step: int = 0, optimizer: torch.optim.Optimizer | None = None
                      ) -> list[float]:
        """Each replica's per-step decay factor 1 − c_t·λ_t (÷ SWD's last denominator; 1 for rules that do not
        multiply the weights)."""
        denominators = [1.0] * self.k
        if optimizer is not None and any(RULES[s["mode"]].reads == "second_moment" for s in self._settings):
            denominators = self._denominator(optimizer, coming=False).tolist()
        out = []
        for s, lam, d in zip(self._settings, self.weight_decays(step), denominators, strict=True):
            rule = RULES[s["mode"]]
            out.append(rule.decay_factor(lam, s["decay_scaling"], lr, self.peak_lr,
                                         d if rule.reads == "second_moment" else 1.0))
        return out

    def _device(self) -> torch.device:
        return self.scalings[0][1].device
