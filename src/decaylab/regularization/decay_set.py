"""Which parameters are decayed: the decay set D, exclusions, per-parameter multipliers, tied weights."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
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

# transformers' Trainer.get_decay_parameter_names (5.x): re.search on the lowercased name, as its get_parameter_names
_HF_PATTERNS = tuple(re.compile(p) for p in (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)",
                                                r"_norm(?:$|\.)"))


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

    decide = _decider(model, decay_set, owners)
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

        decayed, reason = decide(_Seen(name, names, mods, p, is_bias, is_norm, is_embedding))
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


@dataclass(frozen=True)
class _Seen:
    """What a decay set's rule may look at for one unique parameter."""

    name: str  # the first name, as model.named_parameters() gives it (what every library iterates)
    names: list[str]  # every name of the tensor (tied ones have several)
    mods: list[nn.Module | None]  # each name's owning module
    p: torch.Tensor
    is_bias: bool
    is_norm: bool
    is_embedding: bool

    @property
    def kind(self) -> str | None:
        return "norm" if self.is_norm else "bias" if self.is_bias else "embedding" if self.is_embedding else None


Decide = Callable[[_Seen], tuple[bool, str]]


def _decider(model: nn.Module, decay_set: str, owners: dict[str, nn.Module]) -> Decide:
    """The decay set's rule, given what it needs of the whole model (the module tree, `no_weight_decay()`)."""
    if decay_set == "hf":
        return lambda s: _hf(s, owners)
    if decay_set == "timm":
        patterns = _no_weight_decay(model)
        return lambda s: _timm(s, patterns)
    rule = _RULES.get(decay_set)
    if rule is None:
        raise ValueError(f"decay_set {decay_set!r} has no rule in decay_set.py")
    return rule


def _all(s: _Seen) -> tuple[bool, str]:
    return True, s.kind or "weight"


def _no_bias_norm(s: _Seen) -> tuple[bool, str]:
    if s.is_norm or s.is_bias:
        return False, s.kind or ""
    return True, s.kind or "weight"


def _matrices(s: _Seen, embeddings: bool = True) -> tuple[bool, str]:
    # nanoGPT's configure_optimizers: `p.dim() >= 2` decayed, the rest not (tied tensors once, by named_parameters)
    if s.p.ndim < 2:
        return False, f"ndim {s.p.ndim} < 2" + (f" ({s.kind})" if s.kind else "")
    if not embeddings and s.is_embedding:
        return False, "embedding"
    return True, s.kind or "matrix"


def _hf(s: _Seen, owners: dict[str, nn.Module]) -> tuple[bool, str]:
    # get_parameter_names(model, [nn.LayerNorm], patterns) drops a parameter when any module on its path below the
    # root is an nn.LayerNorm (subclasses too; nn.RMSNorm is not one), or when a pattern matches its lowercased
    # name; the Trainer then groups model.named_parameters() by `name in decay_parameters`: the first name only.
    parts = s.name.split(".")
    for i in range(1, len(parts)):
        path = ".".join(parts[:i])
        if isinstance(owners.get(path), nn.LayerNorm):
            return False, "nn.LayerNorm parameter" if i == len(parts) - 1 else f"inside nn.LayerNorm {path!r}"
    lowered = s.name.lower()
    for rx in _HF_PATTERNS:
        if rx.search(lowered):
            return False, f"name matches {show_regex(rx.pattern)}"
    return True, s.kind or "weight"


def _no_weight_decay(model: nn.Module) -> frozenset[str]:
    """The model's `no_weight_decay()` names or fnmatch patterns, collected as timm's optimizer factory does."""
    hook = getattr(model, "no_weight_decay", None)
    found = hook() if callable(hook) else set()
    names = frozenset(found)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise ValueError(f"{type(model).__name__}.no_weight_decay() must return parameter names or fnmatch "
                         f"patterns (strings); got {bad[0]!r}")
    return names


def _timm(s: _Seen, patterns: frozenset[str]) -> tuple[bool, str]:
    # param_groups_weight_decay(weight_decay_exclude_1d=True): `param.ndim <= 1 or name.endswith(".bias")`, or
    # fnmatch against the no_weight_decay() list, on the names model.named_parameters() gives
    if s.p.ndim <= 1:
        return False, f"ndim {s.p.ndim} ≤ 1" + (f" ({s.kind})" if s.kind else "")
    if s.name.endswith(".bias"):
        return False, "name ends with .bias"
    hit = next((pat for pat in sorted(patterns) if fnmatch.fnmatch(s.name, pat)), None)
    if hit is not None:
        return False, f"no_weight_decay() pattern {hit!r}"
    return True, s.kind or "matrix"


def _olmo2(s: _Seen) -> tuple[bool, str]:
    # OLMo's get_param_groups with decay_norm_and_bias=true and decay_embeddings=false: only the weights of
    # nn.Embedding modules stay out. A tied embedding/output tensor is an embedding (OLMo ties by reusing wte.weight);
    # a parameter OLMo does not classify (not a Linear/norm/Embedding weight nor a bias: its assert refuses the
    # model) is decayed here, as every other non-embedding weight is.
    for n, m in zip(s.names, s.mods, strict=True):
        if isinstance(m, nn.Embedding) and n.endswith("weight"):
            alias = f" (as {n!r})" if n != s.name else ""
            return False, f"nn.Embedding weight{alias}"
    return True, s.kind or "weight"


_RULES: dict[str, Decide] = {
    "all": _all,
    "no_bias_norm": _no_bias_norm,
    "matrices": _matrices,
    "matrices_no_embedding": lambda s: _matrices(s, embeddings=False),
    "nanogpt": _matrices,
    "olmo2": _olmo2,
    "keras": _all,
}
