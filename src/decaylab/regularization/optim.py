"""Optimizer factory: per-parameter groups for the decay set, and the torch optimizer each rule needs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .decay_set import DecayPlan
from .decoupled_sgd import SGDW
from .rules import DECAY_SCALING_RULES, OPTIMIZERS, RULES, Acts, check_optimizer
from .validate import check_choice, check_nonneg

try:  # private torch helper; the fallback lists the devices with fused Adam since torch 2.4
    from torch.optim.optimizer import _get_fused_kernels_supported_devices
except ImportError:  # pragma: no cover

    def _get_fused_kernels_supported_devices() -> list[str]:
        return ["cuda", "cpu"]


def torch_weight_decay(mode: str, lam: float, decay_scaling: str, peak_lr: float) -> float:
    """The value of torch's group `weight_decay` that realizes effective λ (=λ·m) under `mode`."""
    return RULES[mode].torch_weight_decay(lam, decay_scaling, peak_lr)


def build_param_groups(
    plan: DecayPlan, *, mode: str, weight_decay: float, decay_scaling: str, lr: float
) -> list[dict[str, Any]]:
    """One group per distinct multiplier of the decay set plus one no-decay group (frozen params left out)."""
    by_mult: dict[float, list] = {}
    for info in plan.decayed:
        by_mult.setdefault(info.multiplier, []).append(info)
    rest = [info for info in plan.not_decayed if info.trainable]

    groups = []
    for m, infos in by_mult.items():
        lam = weight_decay * m if RULES[mode].decays else 0.0
        groups.append(_group("decay" if m == 1.0 else f"decay x{m:g}", infos, lr, m, lam, mode, decay_scaling))
    if rest:
        groups.append(_group("no_decay", rest, lr, 0.0, 0.0, mode, decay_scaling))
    if not groups:
        raise ValueError("model has no trainable parameters (every parameter has requires_grad=False)")
    return groups


def _group(name: str, infos: list, lr: float, m: float, lam: float, mode: str, decay_scaling: str) -> dict[str, Any]:
    return {
        "params": [i.param for i in infos],
        # torch >= 2.6 keeps param_names in state_dict(); it makes checkpoints and audits readable
        "param_names": [i.name for i in infos],
        "lr": lr,
        "weight_decay": torch_weight_decay(mode, lam, decay_scaling, lr),
        # decaylab metadata, read back by Regularization.decay_factor and the trainer's logs
        "group_name": name,
        "multiplier": m,
        "effective_weight_decay": lam,
        "peak_lr": lr,
        "decay_scaling": decay_scaling,
        "mode": mode,
    }


def _foreach_or_fused(kwargs: dict[str, Any], params: list[torch.Tensor], fused_allowed: bool) -> dict[str, Any]:
    """kwargs with torch's fastest implementation chosen (fused where every parameter's device has it)."""
    if "fused" in kwargs or "foreach" in kwargs:
        return kwargs
    fused_ok = set(_get_fused_kernels_supported_devices())
    if fused_allowed and all(p.device.type in fused_ok and p.is_floating_point() for p in params):
        return {**kwargs, "fused": True}
    return {**kwargs, "foreach": True}


def check_one_group(groups: Sequence[Mapping[str, Any]], trainable: Mapping[str, torch.Tensor]) -> None:
    """Raise ValueError naming the parameter unless each trainable one is in exactly one param group, once.

    OLMo's check (`get_param_groups` asserts no parameter is in both groups and none in neither): a tensor listed
    twice is updated, and decayed, twice per step (torch only warns about a duplicate inside one group), and a
    trainable tensor left out is silently never trained.
    """
    name_of: dict[int, str] = {}
    for n, p in trainable.items():
        name_of.setdefault(id(p), n)  # a tied tensor under its first name, as named_parameters() gives it
    where: dict[int, str] = {}
    for i, group in enumerate(groups):
        label = repr(group.get("group_name", f"#{i}"))
        names = group.get("param_names") or []
        for k, p in enumerate(group["params"]):
            if id(p) in where:
                name = name_of.get(id(p)) or (names[k] if k < len(names) else f"params[{k}]")
                twice = f"twice in group {label}" if where[id(p)] == label else f"in groups {where[id(p)]} and {label}"
                raise ValueError(f"parameter {name!r} is {twice}: each trainable parameter must land in exactly one "
                                 "optimizer param group, once (a tied tensor is listed under one name)")
            where[id(p)] = label
    missing = [n for key, n in name_of.items() if key not in where]
    if missing:
        more = f" (and {len(missing) - 1} more: {', '.join(missing[1:4])}{', ...' if len(missing) > 4 else ''})" \
            if len(missing) > 1 else ""
        raise ValueError(f"trainable parameter {missing[0]!r} is in no optimizer param group{more}: it would never "
                         "be updated; each trainable parameter must land in exactly one group")


def base_optimizer(params: Mapping[str, torch.Tensor], name: str, *, lr: float, kwargs: dict[str, Any]
                   ) -> torch.optim.Optimizer:
    """The update direction alone: torch Adam (adam, adamw) or SGD (sgd, sgdw) with weight_decay=0 on `params`.

    The stacked engine applies every decay rule itself (replicas.py) around this optimizer's step.
    """
    name = check_choice("optimizer name", name, OPTIMIZERS)
    tensors = list(params.values())
    check_one_group([{"params": tensors}], {n: p for n, p in params.items() if p.requires_grad})
    if name in ("adam", "adamw"):
        return torch.optim.Adam(tensors, lr=lr, weight_decay=0.0, **_foreach_or_fused(kwargs, tensors, True))
    return torch.optim.SGD(tensors, lr=lr, weight_decay=0.0, **_foreach_or_fused(kwargs, tensors, False))


def build_optimizer(
    groups: list[dict[str, Any]],
    name: str,
    *,
    mode: str,
    regularizes: bool,
    allow_double: bool,
    lr: float,
    kwargs: dict[str, Any],
    trainable: Mapping[str, torch.Tensor],
) -> torch.optim.Optimizer:
    """Instantiate the torch optimizer `name` on `groups` (each of `trainable` in exactly one) with `mode`'s decay."""
    name = check_choice("optimizer name", name, OPTIMIZERS)
    check_one_group(groups, trainable)
    rule = RULES[mode]
    kwargs = dict(kwargs)
    extra = check_nonneg("weight_decay (optimizer keyword)", kwargs.pop("weight_decay", 0.0))
    if extra > 0 and regularizes and not allow_double:
        raise ValueError(
            f"weight_decay={extra!r} passed to the optimizer while mode={mode!r} already regularizes "
            "the decay set: that is double regularization (the seed listing's bug). Set the strength "
            "through Regularization(weight_decay=...), or pass allow_double=True if it is intended."
        )
    check_optimizer(rule, name)
    if extra > 0:
        # allow_double (or a mode without decay): the explicit optimizer weight_decay acts like
        # torch's own default, on every trainable parameter, on top of each group's value
        for g in groups:
            g["weight_decay"] += extra
            g["extra_weight_decay"] = extra

    params = [p for g in groups for p in g["params"]]
    decoupled = rule.acts is Acts.DECOUPLED
    if name in ("adam", "adamw"):
        # torch Adam(weight_decay) is coupled; AdamW is Adam with decoupled decay
        cls = torch.optim.AdamW if (decoupled or name == "adamw") else torch.optim.Adam
        optimizer = cls(groups, lr=lr, **_foreach_or_fused(kwargs, params, True))
    elif decoupled or name == "sgdw":
        optimizer = SGDW(groups, lr=lr, **kwargs)
    else:
        optimizer = torch.optim.SGD(groups, lr=lr, **_foreach_or_fused(kwargs, params, False))
    if decoupled and any(DECAY_SCALING_RULES[g["decay_scaling"]].varies for g in groups):
        optimizer.register_step_pre_hook(follow_lr)
    return optimizer


def follow_lr(optimizer: torch.optim.Optimizer, args: Any = None, kwargs: Any = None) -> None:
    """Before each step, set every decaylab group's `weight_decay` for the group's current lr.

    For a decay scaling whose c_t is not proportional to lr_t (corrected: c_t = η_t²/η_max), torch's decay
    lr_t·wd equals c_t·λ only with wd = λ·c_t/lr_t, which changes with the schedule.
    """
    for group in optimizer.param_groups:
        if "peak_lr" not in group:
            continue
        rule = RULES[group["mode"]]
        group["weight_decay"] = rule.torch_weight_decay(group["effective_weight_decay"], group["decay_scaling"],
                                                        group["peak_lr"], lr=float(group["lr"]))
        group["weight_decay"] += group.get("extra_weight_decay", 0.0)
