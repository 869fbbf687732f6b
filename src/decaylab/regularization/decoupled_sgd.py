"""SGDW: SGD with momentum and decoupled weight decay (Loshchilov & Hutter, 2019), torch.optim style."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT

__all__ = ["SGDW", "sgdw"]


class SGDW(Optimizer):
    r"""SGD with momentum whose weight decay is decoupled from the gradient.

    Each step, for every parameter p with gradient g (no λ·p added to g)::

        b ← g                          (first step)
        b ← μ·b + (1 − dampening)·g    (later steps)
        u ← g + μ·b if nesterov else b     (u ← g when μ = 0)
        p ← p·(1 − lr·weight_decay)
        p ← p − lr·u

    which is torch AdamW's order (decay first, then the step, both with this step's lr) and torch
    SGD's momentum convention (lr applied outside the buffer). With weight_decay=0 it is exactly
    torch.optim.SGD.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """Perform a single optimization step."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            bufs: list[Tensor | None] = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("SGDW does not support sparse gradients")
                params.append(p)
                grads.append(p.grad)
                if group["momentum"] != 0:
                    bufs.append(self.state[p].get("momentum_buffer"))

            sgdw(
                params,
                grads,
                bufs,
                lr=group["lr"],
                weight_decay=group["weight_decay"],
                momentum=group["momentum"],
                dampening=group["dampening"],
                nesterov=group["nesterov"],
                maximize=group["maximize"],
            )

            if group["momentum"] != 0:
                for p, buf in zip(params, bufs, strict=True):
                    self.state[p]["momentum_buffer"] = buf
        return loss


def sgdw(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffer_list: list[Tensor | None],
    *,
    lr: float,
    weight_decay: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    maximize: bool = False,
) -> None:
    """Functional SGDW update (see SGDW); fills `momentum_buffer_list` in place on the first step."""
    if not params:
        return
    lr = float(lr)
    grouped = Optimizer._group_tensors_by_device_and_dtype(
        [params, grads, momentum_buffer_list],  # type: ignore[list-item]
        with_indices=True,
    )
    for (dev_params_, dev_grads_, dev_bufs_), indices in grouped.values():
        dev_params = cast(list[Tensor], dev_params_)
        dev_grads = cast(list[Tensor], dev_grads_)
        dev_bufs = cast(list[Tensor | None], dev_bufs_)
        if maximize:
            dev_grads = torch._foreach_neg(dev_grads)

        update = dev_grads
        if momentum != 0:
            if all(b is not None for b in dev_bufs):
                bufs = cast(list[Tensor], dev_bufs)
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, dev_grads, alpha=1 - dampening)
            else:
                # a parameter's first step: its buffer starts as the gradient itself (torch SGD
                # convention, no dampening); rare path, so a plain loop is fine
                bufs = []
                for j, i in enumerate(indices):
                    buf = dev_bufs[j]
                    if buf is None:
                        buf = momentum_buffer_list[i] = dev_grads[j].detach().clone()
                    else:
                        buf.mul_(momentum).add_(dev_grads[j], alpha=1 - dampening)
                    bufs.append(buf)
            if nesterov:
                update = torch._foreach_add(dev_grads, bufs, alpha=momentum)
            else:
                update = bufs

        # decay from the pre-step weights, as in AdamW: p·(1 − lr·λ) − lr·u
        if weight_decay != 0:
            torch._foreach_mul_(dev_params, 1.0 - lr * weight_decay)
        torch._foreach_add_(dev_params, update, alpha=-lr)
