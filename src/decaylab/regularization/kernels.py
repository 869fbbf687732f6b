"""Functional kernels of the decay rules (rules.py), in the style of torch/optim/adamw.py: pure functions on lists.

Single-model tensors take λ as a float; the stacked engine's tensors carry K replicas on their first dimension
and take, per tensor, a coefficient c = λ·m that is a float or a [K, 1, …] tensor (one value per replica, shaped
to broadcast). The penalties are the loss terms (differentiable); the `add_*_gradient_` kernels add the same
terms' analytic gradients in place (what the stacked engine does instead of backpropagating a penalty).

The DECOUPLED kernels take (params, coefs, scale, step): scale is c_t (a float, or [K] per replica) and step a
`ComingStep`, what the kernel may read of the optimizer step about to be taken (cautious decay: the sign of its
update; SWD: Adam's mean second moment). Both engines build a `ComingStep` from their optimizer's state and call the
same kernels, so a rule is written once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


def _weights(mult: Tensor | None, like: Tensor) -> Tensor | None:
    # the multiplier vector is built once on the first call; a model moved with .to() keeps its
    # Parameter objects but changes their device, so follow the norms' device and dtype
    if mult is None:
        return None
    if mult.device != like.device or mult.dtype != like.dtype:
        mult = mult.to(device=like.device, dtype=like.dtype)
    return mult


def l2_penalty(tensors: list[Tensor], mult: Tensor | None, lam: float) -> Tensor:
    """(λ/2)·Σ m_w‖w‖² over `tensors`; `mult` holds m_w per tensor (None: all ones)."""
    # _foreach_norm's backward is w/‖w‖·grad with the 0/0 case masked to 0, so ‖w‖² through it
    # has gradient 2w everywhere, including zero-initialized weights
    sq = torch.stack(torch._foreach_norm(tensors, 2)).square()
    m = _weights(mult, sq)
    return 0.5 * lam * (sq.sum() if m is None else (sq * m).sum())


def l1_penalty(tensors: list[Tensor], mult: Tensor | None, lam: float) -> Tensor:
    """λ₁·Σ m_w‖w‖₁ over `tensors`; `mult` holds m_w per tensor (None: all ones)."""
    a = torch.stack(torch._foreach_norm(tensors, 1))
    m = _weights(mult, a)
    return lam * (a.sum() if m is None else (a * m).sum())


def penalty(tensors: list[Tensor], mult: Tensor | None, terms: list[tuple[object, float]]) -> Tensor:
    """Σ over `terms` (rule, λ) of each LOSS rule's penalty; a 0-dim zero when there is none."""
    total: Tensor | None = None
    for rule, lam in terms if tensors else []:
        term = rule.kernel("penalty")(tensors, mult, lam)  # type: ignore[attr-defined]
        total = term if total is None else total + term
    if total is None:
        ref = tensors[0] if tensors else torch.zeros(())
        return torch.zeros((), dtype=ref.dtype, device=ref.device)
    return total


def add_l2_gradient_(params: list[Tensor], grads: list[Tensor], coefs: list[float | Tensor]) -> None:
    """g += c·w for each tensor: the gradient of (c/2)‖w‖² (l2) and coupled decay's λ·w."""
    for p, g, c in zip(params, grads, coefs, strict=True):
        g.addcmul_(p, c) if isinstance(c, Tensor) else g.add_(p, alpha=c)


def add_l1_gradient_(params: list[Tensor], grads: list[Tensor], coefs: list[float | Tensor]) -> None:
    """g += c·sign(w) for each tensor: the subgradient of c‖w‖₁."""
    for p, g, c in zip(params, grads, coefs, strict=True):
        g.addcmul_(torch.sign(p), c) if isinstance(c, Tensor) else g.add_(torch.sign(p), alpha=c)


@dataclass
class ComingStep:
    """What a decoupled kernel may read of the optimizer step about to be taken; nothing of it is changed.

    `grads` and `states` (each parameter's optimizer state, empty before its first step) are aligned with the
    kernel's params; `hyper` is their optimizer group's settings (Adam: betas, eps, amsgrad, maximize; SGD:
    momentum, dampening, nesterov, maximize); `denominator` is SWD's √mean v̂_t + ε over every trainable parameter
    (a 0-dim tensor, or [K] per replica), computed by the engine with `mean_second_moment` when a rule reads it.
    """

    grads: list[Tensor]
    states: list[Mapping[str, Any]]
    hyper: Mapping[str, Any]
    denominator: Tensor | float = 1.0

    def direction(self, i: int) -> Tensor:
        """A tensor with the sign of parameter i's coming update u_t (before the lr), from its state and gradient.

        Adam: u_t = m̂_t/(√v̂_t + ε) has the sign of m_t = β₁m + (1 − β₁)g. SGD (torch's and SGDW's convention):
        b_t = g on the first step, else μb + (1 − dampening)g; u_t = g + μb_t (nesterov) or b_t; g when μ = 0.
        """
        hyper, state = self.hyper, self.states[i]
        g = -self.grads[i] if hyper.get("maximize") else self.grads[i]
        if "betas" in hyper:
            m = state.get("exp_avg")
            return g * (1.0 - hyper["betas"][0]) if m is None else m.lerp(g, 1.0 - hyper["betas"][0])
        mu = hyper.get("momentum", 0.0)
        if not mu:
            return g
        b = state.get("momentum_buffer")
        b = g if b is None else b * mu + g * (1.0 - hyper.get("dampening", 0.0))
        return g + mu * b if hyper.get("nesterov") else b


def mean_second_moment(grads: list[Tensor], states: list[Mapping[str, Any]], hyper: Mapping[str, Any], *,
                       replicas: bool = False, coming: bool = True) -> Tensor:
    """mean(v̂) over every element of the given tensors, per replica ([K]) when `replicas`, else 0-dim (float64).

    coming: v̂_t of the step about to be taken, β₂v + (1 − β₂)g² (as torch's Adam will compute it) over
    1 − β₂^t with t = the parameter's step + 1; otherwise the last step's, v/(1 − β₂^step). With amsgrad, v̂ is
    the running maximum that Adam divides by. Bias corrections in float64 from the step tensors: no host sync.
    """
    beta2 = hyper["betas"][1]
    total: Tensor | float = 0.0
    count = 0
    for g, state in zip(grads, states, strict=True):
        v = state.get("exp_avg_sq")
        step = state.get("step")
        if coming:
            v = (g * g).mul_(1.0 - beta2) if v is None else v.mul(beta2).addcmul_(g, g, value=1.0 - beta2)
            t = 1.0 if step is None else torch.as_tensor(step, dtype=torch.float64) + 1.0
        elif v is None:
            continue
        else:
            t = torch.as_tensor(step, dtype=torch.float64)
        if hyper.get("amsgrad") and state.get("max_exp_avg_sq") is not None:
            v = torch.maximum(state["max_exp_avg_sq"], v)
        sums = v.double().flatten(1).sum(1) if replicas else v.double().sum()
        total = total + sums / (1.0 - beta2 ** t)
        count += v[0].numel() if replicas else v.numel()
    if not count:
        return torch.zeros(())
    return total / count  # type: ignore[return-value]


def _per_replica(scale: float | Tensor, c: float | Tensor, p: Tensor) -> float | Tensor:
    # one c_t per replica, shaped like the coefficient
    if isinstance(scale, Tensor) and scale.dim():
        return scale.view(c.shape) if isinstance(c, Tensor) else scale.view(-1, *([1] * (p.dim() - 1)))
    return scale


def decoupled_decay_(params: list[Tensor], coefs: list[float | Tensor], scale: float | Tensor,
                     step: ComingStep | None = None) -> None:
    """w ← w·(1 − s·c) for each tensor, with s = c_t (the decay scaling's per-step coefficient)."""
    for p, c in zip(params, coefs, strict=True):
        p.mul_(1.0 - _per_replica(scale, c, p) * c)


def cautious_decay_(params: list[Tensor], coefs: list[float | Tensor], scale: float | Tensor,
                    step: ComingStep) -> None:
    """w ← w·(1 − s·c) where u ⊙ w ≥ 0, w elsewhere (u the coming update): cautious weight decay.

    pytorch-optimizer's `apply_cautious_weight_decay` (3.9–3.11) is the same line with s·c = lr·λ.
    """
    for i, (p, c) in enumerate(zip(params, coefs, strict=True)):
        agree = step.direction(i) * p >= 0
        p.copy_(torch.where(agree, p * (1.0 - _per_replica(scale, c, p) * c), p))


def stable_decay_(params: list[Tensor], coefs: list[float | Tensor], scale: float | Tensor,
                  step: ComingStep) -> None:
    """w ← w·(1 − s·c/d), d = √mean(v̂_t) + ε over every trainable parameter: stable weight decay (AdamS)."""
    decoupled_decay_(params, coefs, scale / step.denominator)


@torch.no_grad()
def replica_l2_penalty(params: list[Tensor], coefs: list[float | Tensor]) -> Tensor:
    """Per replica, Σ (c/2)‖w_k‖² over stacked tensors [K, …] ([K] in float32)."""
    return sum(c.flatten() * 0.5 * p.float().flatten(1).square().sum(1) if isinstance(c, Tensor)
               else c * 0.5 * p.float().flatten(1).square().sum(1) for p, c in zip(params, coefs, strict=True))


@torch.no_grad()
def replica_l1_penalty(params: list[Tensor], coefs: list[float | Tensor]) -> Tensor:
    """Per replica, Σ c‖w_k‖₁ over stacked tensors [K, …] ([K] in float32)."""
    return sum(c.flatten() * p.float().flatten(1).abs().sum(1) if isinstance(c, Tensor)
               else c * p.float().flatten(1).abs().sum(1) for p, c in zip(params, coefs, strict=True))


@torch.no_grad()
def norms(tensors: list[Tensor], decay_mask: Tensor) -> dict[str, float]:
    """L2 norms of the decayed tensors, the rest, and all of them, as floats (one device sync)."""
    if not tensors:
        return {"decay_norm": 0.0, "nodecay_norm": 0.0, "weight_norm": 0.0}
    # float32 accumulation: a bf16 model's squared norm overflows or loses digits in its own dtype
    sq = torch.stack(torch._foreach_norm(tensors, 2)).float().square()
    mask = decay_mask.to(sq.device)
    d = (sq * mask).sum()
    n = (sq * ~mask).sum()
    out = torch.stack([d, n, d + n]).sqrt().tolist()
    return {"decay_norm": out[0], "nodecay_norm": out[1], "weight_norm": out[2]}
