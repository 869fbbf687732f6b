"""Every registered decay rule applied to K stacked replicas at once, each with its own λ (the stacked engine's).

A thin class around the kernels (kernels.py), as torch's AdamW class is around its functional update: it turns
K regularization sections into one coefficient tensor [K, 1, …] per rule and decayed tensor (λ_k·m, zero where a
replica does not use the rule), then applies the rules in the order of a single run's step (rules.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .rules import DECAY_SCALING_RULES, RULES, Acts, Rule, active_rules


class UnsupportedRule(ValueError):
    """A replica asks for a rule that has no stacked kernel."""


class ReplicaDecay:
    """The decay rules of K replicas over stacked parameters named like the single model's."""

    def __init__(self, settings: list[Mapping[str, Any]], multipliers: Mapping[str, float],
                 params: Mapping[str, Tensor], peak_lr: float, device: torch.device) -> None:
        # settings: each replica's regularization section (mode, weight_decay, l1, decay_scaling);
        # multipliers: parameter name -> m (0 outside the decay set); peak_lr: the schedule's η_max
        self.k = len(settings)
        self.peak_lr = peak_lr
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
        self.scalings = [(DECAY_SCALING_RULES[name], torch.tensor([float(n == name) for n in names],
                                                                   dtype=torch.float32, device=device))
                         for name in dict.fromkeys(names)]
        self._settings = [dict(s) for s in settings]

    @staticmethod
    def check(settings: list[Mapping[str, Any]]) -> None:
        """Raise UnsupportedRule naming each rule with λ > 0 in `settings` that has no stacked kernel."""
        refused = sorted({rule.name for s in settings for rule, _ in active_rules(s) if rule.replica_kernel is None})
        if refused:
            raise UnsupportedRule(f"{', '.join(map(repr, refused))} cannot be trained by the stacked engine "
                                  "(--vectorized): no per-replica kernel is registered for it; run it without "
                                  "--vectorized")

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

    def add_gradient_terms_(self) -> None:
        """The GRADIENT rules (coupled λ·w), added after clipping, as torch SGD/Adam do inside their step."""
        for rule, tensors, coefs in self._of(Acts.GRADIENT):
            rule.kernel("replica_kernel")([p.detach() for p in tensors], [p.grad for p in tensors], coefs)

    def decay_(self, lr: float) -> None:
        """The DECOUPLED rules: w ← w·(1 − c_t·λ·m) per replica, before the optimizer's update."""
        terms = self._of(Acts.DECOUPLED)
        if not terms:
            return
        scale = sum(scaling.coefficient(lr, self.peak_lr) * mask for scaling, mask in self.scalings)
        for rule, tensors, coefs in terms:
            rule.kernel("replica_kernel")([p.detach() for p in tensors], coefs, scale)

    def decay_factors(self, lr: float) -> list[float]:
        """Each replica's per-step decay factor 1 − c_t·λ (1 for rules that do not multiply the weights)."""
        out = []
        for s in self._settings:
            rule = RULES[s["mode"]]
            out.append(rule.decay_factor(rule.strength_in(s), s["decay_scaling"], lr, self.peak_lr))
        return out

    def _device(self) -> torch.device:
        return self.scalings[0][1].device
