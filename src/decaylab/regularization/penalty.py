"""Loss-side regularizers (l2 and l1 on the decay set) and weight norms, one foreach call per term."""

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


def penalty(tensors: list[Tensor], mult: Tensor | None, *, l2: float, l1: float) -> Tensor:
    """(l2/2)·Σ m_w‖w‖² + l1·Σ m_w‖w‖₁ over `tensors`; `mult` holds m_w per tensor (None: all ones)."""
    if not tensors or (l2 == 0.0 and l1 == 0.0):
        ref = tensors[0] if tensors else torch.zeros(())
        return torch.zeros((), dtype=ref.dtype, device=ref.device)
    total: Tensor | None = None
    if l2 > 0.0:
        # _foreach_norm's backward is w/‖w‖·grad with the 0/0 case masked to 0, so ‖w‖² through it
        # has gradient 2w everywhere, including zero-initialized weights
        sq = torch.stack(torch._foreach_norm(tensors, 2)).square()
        m = _weights(mult, sq)
        total = 0.5 * l2 * (sq.sum() if m is None else (sq * m).sum())
    if l1 > 0.0:
        a = torch.stack(torch._foreach_norm(tensors, 1))
        m = _weights(mult, a)
        term = l1 * (a.sum() if m is None else (a * m).sum())
        total = term if total is None else total + term
    return total  # type: ignore[return-value]


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
