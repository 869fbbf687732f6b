"""Optimizer factory: per-parameter groups for the decay set, and the torch optimizer each rule needs."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from . import kernels
from .decay_set import DecayPlan
from .decoupled_sgd import SGDW
from .rules import (
    DECAY_SCALING_RULES,
    OPTIMIZERS,
    RULES,
    WEIGHT_DECAY_SCHEDULES,
    Acts,
    check_optimizer,
    schedule_is_constant,
)
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
    plan: DecayPlan, *, mode: str, weight_decay: float, decay_scaling: str, lr: float,
    schedule: dict[str, Any] | None = None, in_scope: frozenset[str] | None = None,
) -> list[dict[str, Any]]:
    """One group per distinct multiplier of the decay set plus one no-decay group (frozen params left out).

    `schedule`: the λ schedule's `weight_decay_schedule`, `weight_decay_warmup_steps` and `total_steps`, kept in
    every group with the count of steps taken (`decay_step`), so a checkpoint's optimizer state resumes it.
    `in_scope`: under a decay scaling with a scope (`corrected_normalized`), the names of the parameters it covers;
    the decayed ones outside it go to groups of their own with the scaling's `outside` c_t.
    """
    scaling = DECAY_SCALING_RULES[decay_scaling]
    scoped = scaling.scope != "all" and RULES[mode].acts is Acts.DECOUPLED
    by_key: dict[tuple[float, str], list] = {}
    for info in plan.decayed:
        own = decay_scaling
        if scoped:
            if in_scope is None:
                raise ValueError(f"decay_scaling={decay_scaling!r} needs the names of the parameters in its scope")
            # each group carries the per-group c_t rule the step pre-hook and the audit read
            own = "corrected" if info.name in in_scope else scaling.outside
        by_key.setdefault((info.multiplier, own), []).append(info)
    rest = [info for info in plan.not_decayed if info.trainable]

    groups = []
    for (m, own), infos in by_key.items():
        lam = weight_decay * m if RULES[mode].decays else 0.0
        name = "decay" if m == 1.0 else f"decay x{m:g}"
        if scoped:
            name += f" ({'feeds a norm' if own == 'corrected' else 'feeds no norm'})"
        groups.append(_group(name, infos, lr, m, lam, mode, own))
    if rest:
        groups.append(_group("no_decay", rest, lr, 0.0, 0.0, mode, decay_scaling))
    if not groups:
        raise ValueError("model has no trainable parameters (every parameter has requires_grad=False)")
    schedule = schedule or {}
    for g in groups:
        g.update(weight_decay_schedule=schedule.get("weight_decay_schedule", "constant"),
                 weight_decay_warmup_steps=schedule.get("weight_decay_warmup_steps", 0),
                 total_steps=schedule.get("total_steps"), decay_step=0)
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
    if needs_step_hook(groups):
        optimizer.register_step_pre_hook(before_step)
        # a checkpoint's groups replace these on load: keep its step count, but the λ schedule spans this run
        # (a run resumed with a longer max_steps schedules λ over the new length, as its lr scheduler does)
        optimizer.register_load_state_dict_post_hook(
            functools.partial(_keep_run_length, total_steps=groups[0].get("total_steps")))
    return optimizer


def _keep_run_length(optimizer: torch.optim.Optimizer, total_steps: int | None) -> None:
    for group in optimizer.param_groups:
        if "peak_lr" in group:
            group["total_steps"] = total_steps


def needs_step_hook(groups: list[dict[str, Any]]) -> bool:
    """True when torch's constant group `weight_decay` cannot realize the groups' decay: a decay scaling whose
    c_t/η_t varies, a λ schedule, or a rule whose kernel reads the coming step (cautious, SWD)."""
    for g in groups:
        rule = RULES[g["mode"]]
        if rule.acts is Acts.DECOUPLED and (DECAY_SCALING_RULES[g["decay_scaling"]].varies or rule.reads):
            return True
        if rule.schedulable and not schedule_is_constant(g):
            return True
    return False


def weight_decay_now(group: dict[str, Any]) -> float:
    """A decaylab group's effective λ_t = λ·m·ρ(t) for its next step (t = its `decay_step`)."""
    schedule = WEIGHT_DECAY_SCHEDULES[group.get("weight_decay_schedule", "constant")]
    rho = schedule.multiplier(group.get("decay_step", 0), group.get("total_steps"),
                              group.get("weight_decay_warmup_steps", 0))
    return group["effective_weight_decay"] * rho


def before_step(optimizer: torch.optim.Optimizer, args: Any = None, kwargs: Any = None) -> None:
    """Before each step: every decaylab group's torch `weight_decay` for this step, and the rules torch cannot run.

    torch decays by lr_t·wd, so wd = λ_t·c_t/lr_t gives c_t·λ_t: it changes each step under a decay scaling whose
    c_t is not proportional to lr_t (corrected: c_t = η_t²/η_max) and under a λ schedule (λ_t = λ·ρ(t)). A rule
    whose kernel reads the coming step (cautious: the update's sign; SWD: Adam's second moment) gets torch
    weight_decay 0 and is applied here, to the weights before the update, as the stacked engine applies it.
    """
    groups = [g for g in optimizer.param_groups if "peak_lr" in g]
    denominator = None
    for group in groups:
        rule = RULES[group["mode"]]
        lam = weight_decay_now(group)
        lr = float(group["lr"])
        group["weight_decay"] = rule.torch_weight_decay(lam, group["decay_scaling"], group["peak_lr"], lr=lr)
        group["weight_decay"] += group.get("extra_weight_decay", 0.0)
        group["decay_step"] = group.get("decay_step", 0) + 1
        if rule.reads is None or lam == 0.0:
            continue
        params = [p for p in group["params"] if p.grad is not None]
        if rule.reads == "second_moment" and denominator is None:
            denominator = swd_denominator(optimizer)
        step = kernels.ComingStep([p.grad for p in params], [optimizer.state[p] for p in params], group,
                                  denominator if denominator is not None else 1.0)
        scale = DECAY_SCALING_RULES[group["decay_scaling"]].coefficient(lr, group["peak_lr"])
        with torch.no_grad():
            rule.kernel("replica_kernel")(params, [lam] * len(params), scale, step)


def swd_denominator(optimizer: torch.optim.Optimizer, coming: bool = True) -> torch.Tensor:
    """SWD's √mean(v̂) + ε over every trainable parameter of `optimizer` (the step about to be taken, or the last)."""
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None or not coming]
    group = optimizer.param_groups[0]
    mean = kernels.mean_second_moment([p.grad for p in params], [optimizer.state[p] for p in params], group,
                                      coming=coming)
    return mean.sqrt() + group["eps"]
