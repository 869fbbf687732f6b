"""Which parameters are decayed: the decay set D, exclusions, per-parameter multipliers, tied weights."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

# Module types whose parameters are normalization gains/shifts. _NormBase covers BatchNorm*,
# InstanceNorm* and SyncBatchNorm; RMSNorm only exists in newer torch, hence the getattr.
NORM_TYPES: tuple[type[nn.Module], ...] = tuple(
    t
    for t in (
        nn.LayerNorm,
        getattr(nn, "RMSNorm", None),
        nn.GroupNorm,
        nn.LocalResponseNorm,
        nn.modules.batchnorm._NormBase,
    )
    if t is not None
)
EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)

# A dotted name component that names a norm: "norm", "layer_norm", "input_layernorm", "norm1",
# "ln", "ln_f", "ln_1", "ln2" (nanoGPT / GPT-2 / HF naming).
_NORM_COMPONENT = re.compile(r"(?i)norm|^ln(_\w*|\d+|f)?$")


@dataclass
class ParamInfo:
    """One unique parameter tensor and the decision about it."""

    name: str
    param: torch.Tensor = field(repr=False, compare=False)
    aliases: tuple[str, ...]
    trainable: bool
    is_bias: bool
    is_norm: bool
    is_embedding: bool
    decayed: bool
    multiplier: float
    reason: str

    @property
    def numel(self) -> int:
        return self.param.numel()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.param.shape)


@dataclass
class DecayPlan:
    """The decay set of one model: every unique parameter with its decision, plus pattern diagnostics."""

    params: list[ParamInfo]
    decay_set: str
    # (field, pattern) -> names of frozen parameters the pattern matched: a pattern with no effect
    frozen_hits: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    # multiplier patterns that only matched parameters already outside the decay set
    idle_multipliers: list[str] = field(default_factory=list)

    @property
    def decayed(self) -> list[ParamInfo]:
        return [p for p in self.params if p.decayed]

    @property
    def not_decayed(self) -> list[ParamInfo]:
        return [p for p in self.params if not p.decayed]


def build_plan(
    model: nn.Module,
    decay_set: str,
    exclude: tuple[str, ...] = (),
    multipliers: dict[str, float] | None = None,
) -> DecayPlan:
    """Classify every unique parameter of `model` into the decay set (raises if a regex matches nothing)."""
    multipliers = multipliers or {}
    owners = dict(model.named_modules(remove_duplicate=False))
    # named_parameters() deduplicates tied tensors (first name wins); the full listing gives the aliases
    aliases: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(name)

    exclude_re = [(pat, re.compile(pat)) for pat in exclude]
    mult_re = [(pat, re.compile(pat), f) for pat, f in multipliers.items()]
    matched: set[tuple[str, str]] = set()
    frozen_hits: dict[tuple[str, str], list[str]] = {}
    mult_hits_decayed: set[str] = set()

    infos = []
    for name, p in model.named_parameters():
        names = aliases.get(id(p), [name])
        mods = [owners.get(n.rpartition(".")[0]) for n in names]
        leafs = [n.rpartition(".")[2].lower() for n in names]
        is_bias = any("bias" in leaf for leaf in leafs)
        is_norm = any(isinstance(m, NORM_TYPES) for m in mods) or (
            # name/class heuristics only for vectors: a norm's gain is 1-D, and this keeps a matrix
            # that merely has "norm" in its path (e.g. "normalizer.proj.weight") in the decay set
            p.ndim <= 1
            and (
                # (the root module is skipped: "PreNormTransformer" says nothing about its own vectors)
                any("norm" in type(m).__name__.lower() for n, m in zip(names, mods, strict=True) if "." in n)
                or any(_NORM_COMPONENT.search(c) for n in names for c in n.split("."))
            )
        )
        is_embedding = any(isinstance(m, EMBEDDING_TYPES) for m in mods) or any("embed" in n.lower() for n in names)

        hits_ex = [pat for pat, rx in exclude_re if any(rx.search(n) for n in names)]
        hits_mult = [(pat, f) for pat, rx, f in mult_re if any(rx.search(n) for n in names)]
        matched.update(("exclude", pat) for pat in hits_ex)
        matched.update(("multipliers", pat) for pat, _ in hits_mult)

        decayed, reason = _rule(decay_set, p, is_bias, is_norm, is_embedding)
        multiplier = 1.0
        if not p.requires_grad:
            decayed, reason = False, "frozen (requires_grad=False)"
            for pat in hits_ex:
                frozen_hits.setdefault(("exclude", pat), []).append(name)
            for pat, _ in hits_mult:
                frozen_hits.setdefault(("multipliers", pat), []).append(name)
        elif decayed and hits_ex:
            decayed, reason = False, f"excluded by regex {show_regex(hits_ex[0])}"
        elif decayed and hits_mult:
            # several matching patterns multiply: {"decoder": 0.5, "proj": 0.1} gives 0.05 on
            # decoder projections, so a pattern never silently shadows another one
            for pat, f in hits_mult:
                multiplier *= f
                mult_hits_decayed.add(pat)
            pats = ", ".join(f"{show_regex(pat)} x{f:g}" for pat, f in hits_mult)
            if multiplier == 0.0:
                decayed, reason = False, f"multiplier 0 ({pats})"
            else:
                reason = f"{reason}; multiplier {multiplier:g} ({pats})"
        if len(names) > 1:
            reason = f"{reason}; tied to {', '.join(names[1:])}"
        infos.append(
            ParamInfo(
                name=name,
                param=p,
                aliases=tuple(names[1:]),
                trainable=p.requires_grad,
                is_bias=is_bias,
                is_norm=is_norm,
                is_embedding=is_embedding,
                decayed=decayed,
                multiplier=multiplier if decayed else 0.0,
                reason=reason,
            )
        )

    all_names = [n for names in aliases.values() for n in names]
    for fld, pats in (("exclude", list(exclude)), ("multipliers", list(multipliers))):
        for pat in pats:
            if (fld, pat) not in matched:
                sample = ", ".join(all_names[:6]) + (", ..." if len(all_names) > 6 else "")
                raise ValueError(
                    f"{fld} regex {show_regex(pat)} matches no parameter of {type(model).__name__} "
                    f"(re.search on full names such as: {sample})"
                )
    idle = [pat for pat in multipliers if pat not in mult_hits_decayed]
    return DecayPlan(infos, decay_set, frozen_hits, idle)


def show_regex(pattern: str) -> str:
    """A regex as the user typed it in a raw string (repr would double every backslash)."""
    return f"r'{pattern}'" if "'" not in pattern else repr(pattern)


def _rule(decay_set: str, p: torch.Tensor, is_bias: bool, is_norm: bool, is_embedding: bool) -> tuple[bool, str]:
    """The decay_set rule alone: (in D, why)."""
    kind = "norm" if is_norm else "bias" if is_bias else "embedding" if is_embedding else None
    if decay_set == "all":
        return True, kind or "weight"
    if decay_set == "no_bias_norm":
        if is_norm or is_bias:
            return False, kind  # type: ignore[return-value]
        return True, kind or "weight"
    if p.ndim < 2:
        return False, f"ndim {p.ndim} < 2" + (f" ({kind})" if kind else "")
    if decay_set == "matrices_no_embedding" and is_embedding:
        return False, "embedding"
    return True, kind or "matrix"
