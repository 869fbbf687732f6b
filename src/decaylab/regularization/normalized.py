"""Which parameters feed a normalization layer: the scope of AdamC's corrected decay (Defazio 2025).

Defazio's correction (c_t = η_t²/η_max) is derived for "layers followed by normalization": their output's scale
is divided out by the norm, so weight decay only sets the steady state of ‖g‖/‖w‖. We find them in the autograd
graph of one forward pass: from the input of every normalization module we walk back through parameter-free
operations (residual additions, dropout, reshapes, casts) and stop at the first operation that takes a
parameter (a matmul, an embedding lookup, a gain); the parameters of that operation feed the norm. A parameter
only *added* on the way (a bias, a learned position embedding) feeds it too, and the walk goes on past the
addition. In a pre-norm Transformer this finds the embeddings and every projection that writes into the
residual stream (attention output, MLP down-projection), not the query/key/value or MLP up-projections, whose
outputs pass through softmax or an activation and another matmul first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

# Modules whose output is invariant to the scale of their input: the layers Defazio's analysis covers.
NORM_MODULES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, nn.LocalResponseNorm,
)
# Autograd nodes that move or cast values without mixing them with a parameter's: walked through when they lead
# from an operation to a parameter (w.T in a matmul) as well as on the path to the norm.
_VIEWS = ("TBackward", "ViewBackward", "UnsafeViewBackward", "ReshapeAliasBackward", "ExpandBackward",
          "TransposeBackward", "PermuteBackward", "UnsqueezeBackward", "SqueezeBackward", "ToCopyBackward",
          "CloneBackward", "SliceBackward", "SelectBackward", "AliasBackward", "AsStridedBackward")
# Additions: a parameter added on the path (a bias, a position embedding) feeds the norm, and so does the rest.
_ADDITIONS = ("AddBackward", "SubBackward")


def is_norm(module: nn.Module) -> bool:
    """True for the normalization modules whose inputs define the `normalized` scope."""
    return isinstance(module, NORM_MODULES)


def params_feeding_norms(model: nn.Module, example: Callable[[], Any]) -> frozenset[str]:
    """Names of `model`'s parameters whose output reaches a normalization module's input through parameter-free
    operations, found by running `example()` (one forward pass of `model`) with gradients on, in eval mode.

    A tied tensor is named as `named_parameters()` names it first. Raises ValueError when `example` never
    calls a normalization module that `model` has, since the walk would then find nothing for a wrong reason.
    """
    names: dict[int, str] = {}
    for name, param in model.named_parameters():
        names.setdefault(id(param), name)
    norms = [m for m in model.modules() if is_norm(m)]
    found: set[str] = set()
    seen: set[Any] = set()
    calls = [0]

    def on_norm_input(module: nn.Module, args: tuple[Any, ...]) -> None:
        calls[0] += 1
        first = args[0] if args else None
        if isinstance(first, torch.Tensor) and first.grad_fn is not None:
            found.update(names[id(p)] for p in _feeding(first.grad_fn, seen) if id(p) in names)

    hooks = [m.register_forward_pre_hook(on_norm_input) for m in norms]
    was_training = model.training
    # eval mode: no dropout draws (the run's random stream is left as it was) and no running-statistics update
    model.eval()
    try:
        with torch.enable_grad():
            example()
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    if norms and not calls[0]:
        raise ValueError(f"the example forward pass called none of the model's {len(norms)} normalization "
                         "modules, so it cannot show which parameters feed them; pass a forward of this model")
    return frozenset(found)


def _kind(node: Any) -> str:
    return type(node).__name__.rstrip("0123456789")


def _parameter_of(node: Any) -> torch.Tensor | None:
    """The leaf tensor a chain of view nodes ends at (w in w.T), or None when it mixes in anything else."""
    while node is not None:
        if hasattr(node, "variable"):
            return node.variable
        if not _kind(node).startswith(_VIEWS):
            return None
        inputs = [n for n, _ in node.next_functions if n is not None]
        if len(inputs) != 1:
            return None
        node = inputs[0]
    return None


def _feeding(start: Any, seen: set[Any]) -> list[torch.Tensor]:
    """Parameters reached from `start` back through parameter-free nodes (each node walked once per model)."""
    out: list[torch.Tensor] = []
    stack = [start]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):  # the norm's input is itself a parameter
            out.append(node.variable)
            continue
        inputs = [(n, _parameter_of(n)) for n, _ in node.next_functions if n is not None]
        params = [p for _, p in inputs if p is not None]
        out.extend(params)
        if params and not _kind(node).startswith(_ADDITIONS):
            continue  # a matmul, a lookup or a gain: the parameters feed the norm; what they act on does not
        stack.extend(n for n, p in inputs if p is None)
    return out
