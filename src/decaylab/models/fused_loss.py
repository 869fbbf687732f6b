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

# Elements of one chunk's logits. CPU: per replica, ~4 MB of fp32 that stays in L2/L3 (measured fastest at
# 128-256 rows of V = 8000 on Zen 4); stacked replicas keep those rows each, because splitting the budget over K
# leaves GEMMs too thin to run well (benchmarks/vectorized_sweep.py, small preset: 0.97x before, 1.43x after,
# docs/benchmarks.md §3c). A GPU gains nothing from small chunks, only launch overhead, so it takes large ones,
# bounded over all replicas (memory).
CHUNK_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 26}


def _chunk_rows(vocab: int, replicas: int, device: torch.device) -> int:
    per_replica = device.type == "cpu"
    return max(16, CHUNK_ELEMENTS.get(device.type, 1 << 24) // max(1, vocab * (1 if per_replica else replicas)))


def _chunked(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, target: torch.Tensor,
             eps: float, need: tuple[bool, bool, bool]) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """Per-replica summed losses [K] and, where `need` says so, gradients for hidden, weight and bias (unscaled).

    Stacked shapes: hidden [K, N, D], weight [K, V, D], bias [K, V], target [N] shared by the K replicas (a
    single model is K = 1).
    """
    device = hidden.device
    # Under autocast the GEMMs run in its dtype, as F.linear would; softmax and the sums stay in fp32.
    if torch.is_autocast_enabled(device.type):
        compute = torch.get_autocast_dtype(device.type)
    else:
        compute = torch.promote_types(hidden.dtype, weight.dtype)
    need_h, need_w, need_b = need[0], need[1], need[2] and bias is not None
    with torch.autocast(device.type, enabled=False):
        h, w = hidden.to(compute), weight.to(compute)
        b = bias.to(compute).unsqueeze(1) if bias is not None else None
        replicas, vocab = w.size(0), w.size(1)
        wt = w.transpose(1, 2)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=device) if need_w else None
        grad_b = torch.zeros(replicas, vocab, dtype=torch.float32, device=device) if need_b else None
        total = torch.zeros(replicas, dtype=torch.float32, device=device)
        rows = _chunk_rows(vocab, replicas, device)
        for start in range(0, h.size(1), rows):
            hc, yc = h[:, start:start + rows], target[start:start + rows]
            z = (torch.baddbmm(b, hc, wt) if b is not None else torch.bmm(hc, wt)).float()  # [K, r, V]
            z_target = z.gather(2, yc.view(1, -1, 1).expand(replicas, -1, 1)).squeeze(2)
            z_mean = z.mean(dim=2) if eps else None
            top = z.amax(dim=2, keepdim=True)
            z.sub_(top).exp_()
            norm = z.sum(dim=2, keepdim=True)
            lse = (top + norm.log()).squeeze(2)
            # (1 − ε)·(lse − z_y) + ε·(lse − mean_j z_j): torch's label-smoothing definition
            loss = lse - z_target if not eps else lse - (1.0 - eps) * z_target - eps * z_mean
            total += loss.sum(dim=1)
            if not (need_h or need_w or need_b):
                continue
            z.div_(norm)  # softmax; minus the (smoothed) target distribution it is dloss/dz
            z[:, torch.arange(z.size(1), device=device), yc] -= 1.0 - eps
            if eps:
                z.sub_(eps / vocab)
            g = z.to(compute)
            if need_h:
                grad_h[:, start:start + rows] = torch.bmm(g, w)
            if need_w:
                grad_w.add_(torch.bmm(g.transpose(1, 2), hc).float())
            if need_b:
                grad_b.add_(z.sum(dim=1))
    return total, [grad_h, grad_w, grad_b]


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward returns the per-replica summed losses and keeps the gradients it formed; backward scales them."""

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
        scale = grad_output.float()  # [K]: one upstream gradient per replica
        out = [None if g is None else (g * scale.view(-1, *([1] * (g.dim() - 1)))).to(dtype)
               for g, dtype in zip(grads, ctx.dtypes, strict=True)]
        return out[0], out[1], out[2], None, None


def stacked_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                 target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-replica Σ_rows cross_entropy(hidden[k] @ weight[k]ᵀ + bias[k], target) [K], fp32, fused as above."""
    if hidden.dim() != 3 or weight.dim() != 3 or target.shape != hidden.shape[1:2]:
        raise ValueError(f"hidden must be [K, N, D], weight [K, V, D] and target [N] (got {tuple(hidden.shape)}, "
                         f"{tuple(weight.shape)}, {tuple(target.shape)})")
    tensors = (hidden, weight) + ((bias,) if bias is not None else ())
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
        return _chunked(hidden, weight, bias, target, float(label_smoothing), (False, False, False))[0]
    return _LinearCrossEntropy.apply(hidden, weight, bias, target, float(label_smoothing))


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Σ_rows cross_entropy(hidden @ weightᵀ + bias, target) in nats, as fp32, without [N, V] intermediates."""
    if hidden.dim() != 2 or target.shape != hidden.shape[:1]:
        raise ValueError(f"hidden must be [N, D] and target [N] (got {tuple(hidden.shape)}, {tuple(target.shape)})")
    return stacked_linear_cross_entropy(hidden.unsqueeze(0), weight.unsqueeze(0),
                                        bias.unsqueeze(0) if bias is not None else None, target,
                                        label_smoothing).squeeze(0)


def target_loss(hidden: torch.Tensor, tgt_out: torch.Tensor, output: torch.nn.Linear, label_smoothing: float = 0.0,
                target_index: torch.Tensor | None = None, pad_id: int = 0) -> torch.Tensor:
    """Summed cross-entropy of `output`'s logits of `hidden` [B, T, D] at the non-pad targets `tgt_out` [B, T]
    (flat positions `target_index` when the batch found them already): pad positions never reach the output layer."""
    if target_index is None:
        target_index = (tgt_out.reshape(-1) != pad_id).nonzero().squeeze(1)
    rows = hidden.reshape(-1, hidden.size(-1)).index_select(0, target_index)
    targets = tgt_out.reshape(-1).index_select(0, target_index)
    return linear_cross_entropy(rows, output.weight, output.bias, targets, label_smoothing)
