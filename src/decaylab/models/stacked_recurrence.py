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
            gates_x, w_hh, b_hh, h = _float(gates_x, w_hh, b_hh, h0)
            k, b, steps, _ = gates_x.shape
            hidden = h.size(-1)
            w_t, bias = w_hh.transpose(1, 2), b_hh.unsqueeze(1)
            # per-step results go to lists and are stacked once: a copy into a slice per step is a kernel each
            outputs, saved = [None] * steps, {name: [None] * steps for name in ("h", "rz", "n", "hn")}
            keeps = _keeps(mask)
            for t in range(steps):
                gates_h = torch.baddbmm(bias, h, w_t)
                x = gates_x[:, :, t]
                rz = torch.sigmoid(x[..., :2 * hidden] + gates_h[..., :2 * hidden])
                h_n = gates_h[..., 2 * hidden:]
                n = torch.tanh(torch.addcmul(x[..., 2 * hidden:], rz[..., :hidden], h_n))
                new = torch.lerp(n, h, rz[..., hidden:])  # n + z·(h − n)
                saved["h"][t], saved["rz"][t], saved["n"][t], saved["hn"][t] = h, rz, n, h_n
                outputs[t] = new
                h = new if keeps is None else torch.where(keeps[t], new, h)
            outputs = torch.stack(outputs, dim=2)
            if mask is not None:
                outputs = outputs * mask.unsqueeze(-1)  # padded steps output zeros
        ctx.save_for_backward(w_hh, *(torch.stack(saved[n]) for n in ("h", "rz", "n", "hn")), mask)
        return outputs, h

    @staticmethod
    def backward(ctx, d_outputs: torch.Tensor | None, d_h: torch.Tensor | None):
        w_hh, hs, rzs, ns, hns, mask = ctx.saved_tensors
        steps, k, b, hidden = hs.shape
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
            d_news, d_gates_h = [None] * steps, [None] * steps
            for t in range(steps - 1, -1, -1):
                d_sum = d_h if d_outputs is None else d_h + d_outputs[:, :, t]
                d_new = d_sum if keep is None else d_sum * keep[t]
                d_gates_h[t] = (coef_h[t] * d_new.unsqueeze(-2)).view(k, b, 3 * hidden)
                d_h = torch.baddbmm(d_sum * carry[t], d_gates_h[t], w_hh)
                d_news[t] = d_new
            d_gates_h = torch.stack(d_gates_h)
            d_gates_x = (coef_x * torch.stack(d_news).unsqueeze(-2)).view(steps, k, b, 3 * hidden).permute(1, 2, 0, 3)
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
            gates_x, w_hh, b_hh, h, c = _float(gates_x, w_hh, b_hh, h0, c0)
            k, b, steps, _ = gates_x.shape
            hidden = h.size(-1)
            w_t, bias = w_hh.transpose(1, 2), b_hh.unsqueeze(1)
            outputs, saved = [None] * steps, {name: [None] * steps for name in ("h", "c", "act", "tc")}
            keeps = _keeps(mask)
            for t in range(steps):
                gates = torch.baddbmm(bias, h, w_t).add_(gates_x[:, :, t])
                act = torch.sigmoid(gates)  # i, f, (g), o
                act[..., 2 * hidden:3 * hidden] = torch.tanh(gates[..., 2 * hidden:3 * hidden])
                i, f, g, o = act.chunk(4, dim=-1)
                new_c = torch.addcmul(f * c, i, g)
                tc = torch.tanh(new_c)
                new_h = o * tc
                saved["h"][t], saved["c"][t], saved["act"][t], saved["tc"][t] = h, c, act, tc
                outputs[t] = new_h
                if keeps is None:
                    h, c = new_h, new_c
                else:
                    h, c = torch.where(keeps[t], new_h, h), torch.where(keeps[t], new_c, c)
            outputs = torch.stack(outputs, dim=2)
            if mask is not None:
                outputs = outputs * mask.unsqueeze(-1)
        ctx.save_for_backward(w_hh, *(torch.stack(saved[n]) for n in ("h", "c", "act", "tc")), mask)
        return outputs, h, c

    @staticmethod
    def backward(ctx, d_outputs: torch.Tensor | None, d_h: torch.Tensor | None, d_c: torch.Tensor | None):
        w_hh, hs, cs, acts, tcs, mask = ctx.saved_tensors
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
            d_gates = [None] * steps
            for t in range(steps - 1, -1, -1):
                d_sum = d_h if d_outputs is None else d_h + d_outputs[:, :, t]
                if keep is None:
                    d_new_h, d_new_c = d_sum, torch.addcmul(d_c, d_sum, to_c[t])
                else:  # a padded step passes the state's gradients on unchanged
                    d_new_h = d_sum * keep[t]
                    d_new_c = torch.addcmul(d_c * keep[t], d_new_h, to_c[t])
                d_gates[t] = torch.cat([(coef_c[t] * d_new_c.unsqueeze(-2)).view(k, b, 3 * hidden),
                                        coef_o[t] * d_new_h], dim=-1)
                if keep is None:
                    d_h, d_c = torch.bmm(d_gates[t], w_hh), d_new_c * f[t]
                else:
                    d_h = torch.baddbmm(d_sum * skip[t], d_gates[t], w_hh)
                    d_c = torch.addcmul(d_c * skip[t], d_new_c, f[t])
            d_gates = torch.stack(d_gates)
            d_gates_x = d_gates.permute(1, 2, 0, 3)  # the input gates' gradient is the same tensor
            d_w = torch.bmm(d_gates.permute(1, 3, 0, 2).reshape(k, 4 * hidden, steps * b),
                            hs.permute(1, 0, 2, 3).reshape(k, steps * b, hidden))
            d_b = d_gates.sum(dim=(0, 2))
        dtypes = ctx.dtypes
        return (d_gates_x.to(dtypes[0]), d_w.to(dtypes[1]), d_b.to(dtypes[2]), d_h.to(dtypes[3]),
                d_c.to(dtypes[4]), None)
