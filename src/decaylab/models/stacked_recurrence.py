"""GRU and LSTM recurrences over K stacked replicas, with a hand-written backward (BPTT).

Written with autograd, a recurrence records ~13 small operations per time step, and its backward replays ~30;
at the sizes a sweep trains, that bookkeeping and the kernel launches cost more than the arithmetic (most of
all on a GPU). Here the forward loop runs without recording, keeps what the backward needs, and the backward
walks the steps once in reverse; the recurrent weight's gradient is one batched GEMM over all steps at the end
instead of one per step. Gate order, formulas and packing (a padded step keeps the state, outputs zero) are
torch's `nn.GRU`/`nn.LSTM`; `tests/test_vectorized.py` checks values and gradients against them. The recurrence
runs in fp32 (under autocast too), the input projections outside it follow autocast. Replicas are rows of the
leading dimension R: K replicas, or 2K when the two directions of a bidirectional layer run as one recurrence
over (forward, time-reversed) inputs. `mask` [R, B, T] marks real (not padded) steps.
"""

from __future__ import annotations

import torch


def _keeps(mask: torch.Tensor | None) -> torch.Tensor | None:
    """[R, B, T] validity -> [T, R, B, 1], so that a step's mask is one index (not three view ops)."""
    return None if mask is None else mask.permute(2, 0, 1).unsqueeze(-1)


def _float(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    return [t.float() if t is not None else None for t in tensors]


class GRURecurrence(torch.autograd.Function):
    """(outputs [K, B, T, H], h_T) of a GRU direction from input gates [K, B, T, 3H] (x W_ihᵀ + b_ih)."""

    @staticmethod
    def forward(ctx, gates_x: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor, h0: torch.Tensor,
                mask: torch.Tensor | None):
        device = gates_x.device.type
        ctx.dtypes = (gates_x.dtype, w_hh.dtype, b_hh.dtype, h0.dtype)
        with torch.autocast(device, enabled=False):
            gates_x, w_hh, b_hh, h0 = _float(gates_x, w_hh, b_hh, h0)
            k, b, steps, _ = gates_x.shape
            hidden = h0.size(-1)
            w_t, bias = w_hh.transpose(1, 2), b_hh.unsqueeze(1)
            # Each step writes into time-major buffers (out=): no per-step allocations, and no stacking copy of
            # every saved tensor afterwards. hs[t] is the state entering step t; hs[T] the final state.
            hs = gates_x.new_empty(steps + 1, k, b, hidden)
            hs[0] = h0
            rzs, ns = gates_x.new_empty(steps, k, b, 2 * hidden), gates_x.new_empty(steps, k, b, hidden)
            ghs = gates_x.new_empty(steps, k, b, 3 * hidden)  # h W_hhᵀ + b_hh; its n part is saved
            news = hs[1:] if mask is None else gates_x.new_empty(steps, k, b, hidden)
            keeps = _keeps(mask)
            for t in range(steps):
                h, gh, rz, n, x = hs[t], ghs[t], rzs[t], ns[t], gates_x[:, :, t]
                torch.baddbmm(bias, h, w_t, out=gh)
                torch.add(x[..., :2 * hidden], gh[..., :2 * hidden], out=rz).sigmoid_()
                torch.addcmul(x[..., 2 * hidden:], rz[..., :hidden], gh[..., 2 * hidden:], out=n).tanh_()
                torch.lerp(n, h, rz[..., hidden:], out=news[t])  # n + z·(h − n)
                if keeps is not None:
                    torch.where(keeps[t], news[t], h, out=hs[t + 1])
            if mask is not None:
                news.mul_(keeps)  # padded steps output zeros
        ctx.save_for_backward(w_hh, hs, rzs, ns, ghs, mask)
        return news.permute(1, 2, 0, 3), hs[steps].clone()

    @staticmethod
    def backward(ctx, d_outputs: torch.Tensor | None, d_h: torch.Tensor | None):
        w_hh, hs, rzs, ns, ghs, mask = ctx.saved_tensors
        steps, k, b, hidden = ns.shape
        hs, hns = hs[:-1], ghs[..., 2 * hidden:]  # the state entering each step; h W_hn + b_hn
        with torch.autocast(hs.device.type, enabled=False):
            # Every factor that depends only on the forward pass is formed for all steps at once (a few large
            # kernels), so a step of the loop is 4-5 small ones: the gate gradients are one of these factors
            # times the step's incoming gradient d_new (broadcast over the gates).
            zs = rzs[..., hidden:]
            d_a_n = (1 - zs) * (1 - ns * ns)  # ∂h/∂(pre-activation of n), per unit of d_new
            d_a_rz = torch.cat([d_a_n * hns, hs - ns], dim=-1) * rzs * (1 - rzs)
            coef_h = torch.cat([d_a_rz, d_a_n * rzs[..., :hidden]], dim=-1).view(steps, k, b, 3, hidden)
            coef_x = torch.cat([d_a_rz, d_a_n], dim=-1).view(steps, k, b, 3, hidden)
            keep = None if mask is None else mask.permute(2, 0, 1).unsqueeze(-1).to(hs.dtype)  # [T, R, B, 1]
            # A padded step passes the state's gradient on unchanged: its factor on d_h is 1 instead of z.
            carry = zs if keep is None else torch.where(keep.bool(), zs, 1.0)
            d_h = torch.zeros_like(hs[0]) if d_h is None else d_h.float()
            if d_outputs is not None:
                d_outputs = d_outputs.float() if mask is None else d_outputs.float() * mask.unsqueeze(-1)
            # the loop writes each step's gradients into these buffers (no per-step tensors to stack)
            d_news, d_gates_h = hs.new_empty(steps, k, b, hidden), hs.new_empty(steps, k, b, 3, hidden)
            for t in range(steps - 1, -1, -1):
                if keep is None:  # d_new is the incoming gradient itself: sum it straight into the buffer
                    d_sum = d_new = (d_news[t].copy_(d_h) if d_outputs is None else
                                     torch.add(d_h, d_outputs[:, :, t], out=d_news[t]))
                else:
                    d_sum = d_h if d_outputs is None else d_h + d_outputs[:, :, t]
                    d_new = torch.mul(d_sum, keep[t], out=d_news[t])
                torch.mul(coef_h[t], d_new.unsqueeze(-2), out=d_gates_h[t])
                d_h = torch.baddbmm(d_sum * carry[t], d_gates_h[t].view(k, b, 3 * hidden), w_hh)
            d_gates_h = d_gates_h.view(steps, k, b, 3 * hidden)
            d_gates_x = (coef_x * d_news.unsqueeze(-2)).view(steps, k, b, 3 * hidden).permute(1, 2, 0, 3)
            # Σ_t dgates_hᵀ h_{t-1}: one GEMM over every step and batch row
            d_w = torch.bmm(d_gates_h.permute(1, 3, 0, 2).reshape(k, 3 * hidden, steps * b),
                            hs.permute(1, 0, 2, 3).reshape(k, steps * b, hidden))
            d_b = d_gates_h.sum(dim=(0, 2))
        dtypes = ctx.dtypes
        return d_gates_x.to(dtypes[0]), d_w.to(dtypes[1]), d_b.to(dtypes[2]), d_h.to(dtypes[3]), None


class LSTMRecurrence(torch.autograd.Function):
    """(outputs [K, B, T, H], h_T, c_T) of an LSTM direction from input gates [K, B, T, 4H] (x W_ihᵀ + b_ih)."""

    @staticmethod
    def forward(ctx, gates_x: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor, h0: torch.Tensor,
                c0: torch.Tensor, mask: torch.Tensor | None):
        device = gates_x.device.type
        ctx.dtypes = (gates_x.dtype, w_hh.dtype, b_hh.dtype, h0.dtype, c0.dtype)
        with torch.autocast(device, enabled=False):
            gates_x, w_hh, b_hh, h0, c0 = _float(gates_x, w_hh, b_hh, h0, c0)
            k, b, steps, _ = gates_x.shape
            hidden = h0.size(-1)
            w_t, bias = w_hh.transpose(1, 2), b_hh.unsqueeze(1)
            # time-major buffers written with out= (see GRURecurrence.forward); hs[t], cs[t] enter step t
            hs, cs = gates_x.new_empty(steps + 1, k, b, hidden), gates_x.new_empty(steps + 1, k, b, hidden)
            hs[0], cs[0] = h0, c0
            acts, tcs = gates_x.new_empty(steps, k, b, 4 * hidden), gates_x.new_empty(steps, k, b, hidden)
            news, new_cs = (hs[1:], cs[1:]) if mask is None else \
                (gates_x.new_empty(steps, k, b, hidden), gates_x.new_empty(steps, k, b, hidden))
            keeps = _keeps(mask)
            for t in range(steps):
                h, c, act = hs[t], cs[t], acts[t]
                torch.baddbmm(bias, h, w_t, out=act).add_(gates_x[:, :, t])
                act[..., :2 * hidden].sigmoid_()  # i, f, (g), o
                act[..., 2 * hidden:3 * hidden].tanh_()
                act[..., 3 * hidden:].sigmoid_()
                i, f, g, o = act.chunk(4, dim=-1)
                new_c = torch.mul(f, c, out=new_cs[t]).addcmul_(i, g)
                torch.mul(o, torch.tanh(new_c, out=tcs[t]), out=news[t])
                if keeps is not None:
                    torch.where(keeps[t], news[t], h, out=hs[t + 1])
                    torch.where(keeps[t], new_c, c, out=cs[t + 1])
            if mask is not None:
                news.mul_(keeps)  # padded steps output zeros
        ctx.save_for_backward(w_hh, hs, cs, acts, tcs, mask)
        return news.permute(1, 2, 0, 3), hs[steps].clone(), cs[steps].clone()

    @staticmethod
    def backward(ctx, d_outputs: torch.Tensor | None, d_h: torch.Tensor | None, d_c: torch.Tensor | None):
        w_hh, hs, cs, acts, tcs, mask = ctx.saved_tensors
        hs, cs = hs[:-1], cs[:-1]  # the states entering each step
        steps, k, b, hidden = hs.shape
        with torch.autocast(hs.device.type, enabled=False):
            # Factors of the forward pass for all steps at once (see GRURecurrence.backward).
            i, f, g, o = acts.chunk(4, dim=-1)
            coef_c = torch.cat([g * i * (1 - i), cs * f * (1 - f), i * (1 - g * g)], dim=-1)  # i, f, g per d_new_c
            coef_c = coef_c.view(steps, k, b, 3, hidden)
            coef_o = tcs * o * (1 - o)  # o per d_new_h
            to_c = o * (1 - tcs * tcs)  # ∂c from ∂h through h = o·tanh(c)
            keep = None if mask is None else mask.permute(2, 0, 1).unsqueeze(-1).to(hs.dtype)  # [T, R, B, 1]
            skip = None if keep is None else 1 - keep
            d_h = torch.zeros_like(hs[0]) if d_h is None else d_h.float()
            d_c = torch.zeros_like(hs[0]) if d_c is None else d_c.float()
            if d_outputs is not None:
                d_outputs = d_outputs.float() if mask is None else d_outputs.float() * mask.unsqueeze(-1)
            d_gates = hs.new_empty(steps, k, b, 4 * hidden)  # each step writes its gate gradients here
            for t in range(steps - 1, -1, -1):
                d_sum = d_h if d_outputs is None else d_h + d_outputs[:, :, t]
                if keep is None:
                    d_new_h, d_new_c = d_sum, torch.addcmul(d_c, d_sum, to_c[t])
                else:  # a padded step passes the state's gradients on unchanged
                    d_new_h = d_sum * keep[t]
                    d_new_c = torch.addcmul(d_c * keep[t], d_new_h, to_c[t])
                torch.mul(coef_c[t], d_new_c.unsqueeze(-2), out=d_gates[t, ..., :3 * hidden].view(k, b, 3, hidden))
                torch.mul(coef_o[t], d_new_h, out=d_gates[t, ..., 3 * hidden:])
                if keep is None:
                    d_h, d_c = torch.bmm(d_gates[t], w_hh), d_new_c * f[t]
                else:
                    d_h = torch.baddbmm(d_sum * skip[t], d_gates[t], w_hh)
                    d_c = torch.addcmul(d_c * skip[t], d_new_c, f[t])
            d_gates_x = d_gates.permute(1, 2, 0, 3)  # the input gates' gradient is the same tensor
            d_w = torch.bmm(d_gates.permute(1, 3, 0, 2).reshape(k, 4 * hidden, steps * b),
                            hs.permute(1, 0, 2, 3).reshape(k, steps * b, hidden))
            d_b = d_gates.sum(dim=(0, 2))
        dtypes = ctx.dtypes
        return (d_gates_x.to(dtypes[0]), d_w.to(dtypes[1]), d_b.to(dtypes[2]), d_h.to(dtypes[3]),
                d_c.to(dtypes[4]), None)
