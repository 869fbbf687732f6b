"""Functional kernels of the decay rules (rules.py), in the style of torch/optim/adamw.py: pure functions on lists.

Single-model tensors take λ as a float; the stacked engine's tensors carry K replicas on their first dimension
and take, per tensor, a coefficient c = λ·m that is a float or a [K, 1, …] tensor (one value per replica, shaped
to broadcast). The penalties are the loss terms (differentiable); the `add_*_gradient_` kernels add the same
terms' analytic gradients in place (what the stacked engine does instead of backpropagating a penalty).
"""

from __future__ import annotations

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


def decoupled_decay_(params: list[Tensor], coefs: list[float | Tensor], scale: float | Tensor) -> None:
    """w ← w·(1 − s·c) for each tensor, with s = c_t (the decay scaling's per-step coefficient)."""
    for p, c in zip(params, coefs, strict=True):
        s = scale
        if isinstance(scale, Tensor) and scale.dim():  # one c_t per replica, shaped like the coefficient
            s = scale.view(c.shape) if isinstance(c, Tensor) else scale.view(-1, *([1] * (p.dim() - 1)))
        p.mul_(1.0 - s * c)


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
