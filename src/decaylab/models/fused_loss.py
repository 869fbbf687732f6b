"""Summed cross-entropy of a linear output layer, computed in row chunks with its gradient formed in the same pass.

The usual path (logits = h Wᵀ + b, then `F.cross_entropy`) writes the [N, V] logits, their log-softmax and, in
backward, their gradient to memory: at V = 8000 and ~1,500 target tokens a step that is ~50 MB per tensor,
streamed through the caches several times, and on a CPU those passes cost as much as the GEMMs
(docs/benchmarks.md has the profile). Here each chunk of rows is projected, normalized, turned into its
gradient (softmax − target) and multiplied back while it is still in cache; nothing of size [N, V] is kept.
The value is the same exact normalized likelihood (to float rounding), label smoothing included.
"""

from __future__ import annotations

import torch

# Elements of one chunk's logits: ~4 MB of fp32 stays in a CPU's L2/L3 (measured fastest at 128-256 rows of
# V = 8000 on Zen 4); a GPU gains nothing from small chunks, only launch overhead, so it takes large ones.
CHUNK_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 26}


def _chunk_rows(vocab: int, device: torch.device) -> int:
    return max(16, CHUNK_ELEMENTS.get(device.type, 1 << 24) // max(1, vocab))


def _chunked(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, target: torch.Tensor,
             eps: float, need: tuple[bool, bool, bool]) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """The summed loss and, where `need` says so, its gradients for hidden, weight and bias (unscaled)."""
    device = hidden.device
    # Under autocast the GEMMs run in its dtype, as F.linear would; softmax and the sums stay in fp32.
    if torch.is_autocast_enabled(device.type):
        compute = torch.get_autocast_dtype(device.type)
    else:
        compute = torch.promote_types(hidden.dtype, weight.dtype)
    need_h, need_w, need_b = need[0], need[1], need[2] and bias is not None
    with torch.autocast(device.type, enabled=False):
        h, w = hidden.to(compute), weight.to(compute)
        b = bias.to(compute) if bias is not None else None
        vocab = w.size(0)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=device) if need_w else None
        grad_b = torch.zeros(vocab, dtype=torch.float32, device=device) if need_b else None
        total = torch.zeros((), dtype=torch.float32, device=device)
        rows = _chunk_rows(vocab, device)
        for start in range(0, h.size(0), rows):
            hc, yc = h[start:start + rows], target[start:start + rows]
            z = (torch.addmm(b, hc, w.t()) if b is not None else hc @ w.t()).float()
            z_target = z.gather(1, yc.unsqueeze(1)).squeeze(1)
            z_mean = z.mean(dim=1) if eps else None
            top = z.amax(dim=1, keepdim=True)
            z.sub_(top).exp_()
            norm = z.sum(dim=1, keepdim=True)
            lse = (top + norm.log()).squeeze(1)
            # (1 − ε)·(lse − z_y) + ε·(lse − mean_j z_j): torch's label-smoothing definition
            loss = lse - z_target if not eps else lse - (1.0 - eps) * z_target - eps * z_mean
            total += loss.sum()
            if not (need_h or need_w or need_b):
                continue
            z.div_(norm)  # softmax; minus the (smoothed) target distribution it is dloss/dz
            z[torch.arange(z.size(0), device=device), yc] -= 1.0 - eps
            if eps:
                z.sub_(eps / vocab)
            g = z.to(compute)
            if need_h:
                grad_h[start:start + rows] = g @ w
            if need_w:
                grad_w.add_((g.t() @ hc).float())
            if need_b:
                grad_b.add_(z.sum(dim=0))
    return total, [grad_h, grad_w, grad_b]


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward returns the summed loss and keeps the gradients it formed; backward scales them."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, target: torch.Tensor,
                label_smoothing: float) -> torch.Tensor:
        total, grads = _chunked(hidden, weight, bias, target, label_smoothing, tuple(ctx.needs_input_grad[:3]))
        ctx.grads = grads
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grads, ctx.grads = ctx.grads, None  # free them as soon as they are handed on
        scale = grad_output.float()
        out = [None if g is None else (g * scale).to(dtype) for g, dtype in zip(grads, ctx.dtypes, strict=True)]
        return out[0], out[1], out[2], None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Σ_rows cross_entropy(hidden @ weightᵀ + bias, target) in nats, as fp32, without [N, V] intermediates."""
    if hidden.dim() != 2 or target.shape != hidden.shape[:1]:
        raise ValueError(f"hidden must be [N, D] and target [N] (got {tuple(hidden.shape)}, {tuple(target.shape)})")
    tensors = (hidden, weight) + ((bias,) if bias is not None else ())
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
        return _chunked(hidden, weight, bias, target, float(label_smoothing), (False, False, False))[0]
    return _LinearCrossEntropy.apply(hidden, weight, bias, target, float(label_smoothing))
