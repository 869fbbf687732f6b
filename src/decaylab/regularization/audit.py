"""Audit: every parameter with its decay decision, a summary, and warnings about known pitfalls."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from .decay_set import DecayPlan, build_plan, show_regex
from .rules import DECAY_SCALING_RULES, RULES, WEIGHT_DECAY_SCHEDULES, Acts, decay_set_names
from .timescale import peak_coefficient

# Usual ranges of λ are each rule's `usual_range` (rules.py); outside them a value is more likely a units mistake
# than a choice. coupled / l2: the penalty gradient λ·w competes with the loss gradient directly. decoupled + lr:
# torch AdamW's λ (decay per step = lr·λ), 0.01..0.1 typical, up to ~1. decoupled + schedule: λ is itself the
# per-step decay fraction at the peak lr.


@dataclass
class AuditRow:
    """One unique parameter: its decision and effective strengths."""

    name: str
    shape: tuple[int, ...]
    numel: int
    decayed: bool
    weight_decay: float
    l1: float
    reason: str
    aliases: tuple[str, ...] = ()


@dataclass
class AuditReport:
    """Rows, summary and warnings of one audit; render() prints it, to_dict() serialises it."""

    rows: list[AuditRow]
    summary: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form of the report."""
        rows = [dict(asdict(r), shape=list(r.shape), aliases=list(r.aliases)) for r in self.rows]
        return {"rows": rows, "summary": dict(self.summary), "warnings": list(self.warnings)}

    def render(self, console: Any = None) -> None:
        """Print the report as a rich table, then the summary and the warnings."""
        print_audit(self, console)


def print_audit(report: AuditReport, console: Any = None) -> None:
    """Print `report` with rich (imported here so the package needs only torch to train)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    s = report.summary
    table = Table(title=f"decay audit: mode={s['mode']}, decay_set={s['decay_set']}", title_justify="left")
    for col, kw in (
        ("parameter", {}),
        ("shape", {}),
        ("numel", {"justify": "right"}),
        ("decayed", {"justify": "center"}),
        ("λ", {"justify": "right"}),
        ("λ₁", {"justify": "right"}),
        ("reason", {}),
    ):
        table.add_column(col, **kw)
    for r in report.rows:
        table.add_row(
            r.name,
            "x".join(map(str, r.shape)) or "scalar",
            f"{r.numel:,}",
            "yes" if r.decayed else "-",
            f"{r.weight_decay:g}",
            f"{r.l1:g}",
            r.reason,
        )
    console.print(table)
    console.print(
        f"decayed: {s['decayed_numel']:,} of {s['trainable_numel']:,} trainable parameters "
        f"({100 * s['decayed_share']:.1f}%) in {s['decayed_tensors']} of {s['tensors']} tensors; "
        f"norm decayed: {s['norm_decayed']}, bias decayed: {s['bias_decayed']}, "
        f"embedding decayed: {s['embedding_decayed']}"
    )
    if s.get("rule"):  # formulas hold brackets: printed as text, not rich markup
        console.print(f"rule: {s['mode']}: {s['rule']}", highlight=False, markup=False)
    if s.get("weight_decay_schedule_text"):
        console.print(f"λ schedule: {s['weight_decay_schedule_text']}", highlight=False, markup=False)
    if s.get("tau_note"):
        console.print(f"decay timescale τ: {s['tau_note']}", highlight=False)
    if s.get("tau_steps") is not None:
        epochs = f" = {s['tau_epochs']:.3g} epochs" if s.get("tau_epochs") is not None else ""
        console.print(f"decay timescale τ = {_steps(s['tau_steps'])} steps{epochs}")
    for w in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
    if not report.warnings:
        console.print("no warnings")


def _scope_note(inside: bool, outside: str) -> str:
    if inside:
        return "; feeds a norm: c_t = η_t²/η_max"
    return f"; feeds no norm: c_t as {outside!r} ({DECAY_SCALING_RULES[outside].formula})"


def build_audit(
    plan: DecayPlan,
    *,
    mode: str,
    weight_decay: float,
    l1: float,
    decay_scaling: str,
    optimizer_name: str | None = None,
    lr: float | None = None,
    steps: int | None = None,
    steps_per_epoch: int | None = None,
    optimizer_weight_decay: float = 0.0,
    weight_decay_schedule: str = "constant",
    weight_decay_warmup_steps: int = 0,
    in_scope: frozenset[str] | None = None,
) -> AuditReport:
    """Assemble rows, summary and warnings for `plan` under the given settings.

    `in_scope`: the parameters a scoped decay scaling covers (corrected_normalized); each decayed row then says
    which c_t it gets.
    """
    rule = RULES[mode]
    lam = weight_decay if rule.decays else 0.0
    scaling = DECAY_SCALING_RULES[decay_scaling]
    rows = [
        AuditRow(
            name=i.name,
            shape=i.shape,
            numel=i.numel,
            decayed=i.decayed,
            weight_decay=lam * i.multiplier,
            l1=l1 * i.multiplier,
            reason=i.reason + (_scope_note(i.name in in_scope, scaling.outside)
                               if in_scope is not None and i.decayed else ""),
            aliases=i.aliases,
        )
        for i in plan.params
    ]
    trainable = [i for i in plan.params if i.trainable]
    decayed = plan.decayed
    trainable_numel = sum(i.numel for i in trainable)
    decayed_numel = sum(i.numel for i in decayed)
    active = lam > 0 or l1 > 0

    tau_steps = None
    # SWD's per-step decay is divided by √mean(v̂), known only once training runs: no τ from the settings
    if (rule.acts is Acts.DECOUPLED and lam > 0 and rule.reads != "second_moment"
            and (lr is not None or decay_scaling == "schedule")):
        # decoupled decay makes the weights an EMA of their updates with timescale 1/(per-step decay) at the peak
        # lr (timescale.py, Wang & Aitchison 2025); `schedule`'s peak decay is λ itself, whatever the lr
        tau_steps = 1.0 / (peak_coefficient(decay_scaling, lr or 1.0) * lam)
    tau_epochs = tau_steps / steps_per_epoch if tau_steps is not None and steps_per_epoch else None

    summary: dict[str, Any] = {
        "mode": mode,
        "decay_set": plan.decay_set,
        "decay_scaling": decay_scaling,
        "scope_tensors": None if in_scope is None else sum(1 for i in decayed if i.name in in_scope),
        "weight_decay": weight_decay,
        "l1": l1,
        "optimizer": optimizer_name,
        "lr": lr,
        "tensors": len(plan.params),
        "decayed_tensors": len(decayed),
        "total_numel": sum(i.numel for i in plan.params),
        "trainable_numel": trainable_numel,
        "decayed_numel": decayed_numel,
        "decayed_share": decayed_numel / trainable_numel if trainable_numel else 0.0,
        "norm_decayed": any(i.is_norm for i in decayed),
        "bias_decayed": any(i.is_bias for i in decayed),
        "embedding_decayed": any(i.is_embedding for i in decayed),
        "tau_steps": tau_steps,
        "tau_epochs": tau_epochs,
        "rule": rule.formula,
        "tau_note": "c_t·λ is divided by √mean(v̂), known only while training (SWD)"
        if rule.reads == "second_moment" and lam > 0 else "",
        "weight_decay_schedule": weight_decay_schedule,
        "weight_decay_warmup_steps": weight_decay_warmup_steps,
        "weight_decay_schedule_text": _schedule_text(weight_decay_schedule, weight_decay_warmup_steps)
        if rule.schedulable and lam > 0 else "",
    }

    warnings: list[str] = []
    warn = warnings.append

    if not rule.decays and weight_decay > 0:
        warn(f"weight_decay={weight_decay:g} is ignored because mode={mode!r} applies no decay.")
    if optimizer_name == "adam" and rule.acts in (Acts.GRADIENT, Acts.LOSS) and lam > 0:
        warn(
            f"optimizer 'adam' with mode={mode!r} puts λ·w into the gradient, which Adam divides by "
            "its adaptive denominator √v, so weights with large gradients are decayed less "
            "(Loshchilov & Hutter 2019); if AdamW was meant, use mode='decoupled'."
        )
    if optimizer_name is not None and optimizer_name not in rule.optimizers:
        warn(
            f"mode={mode!r} with optimizer {optimizer_name!r} is refused by reg.optimizer(): "
            f"{rule.optimizer_hint}."
        )
    if optimizer_weight_decay > 0 and rule.decays and lam > 0:
        warn(
            f"the optimizer's own weight_decay={optimizer_weight_decay:g} is applied on top of "
            f"mode={mode!r} with λ={lam:g}: the same weights are regularized twice."
        )
    if active:
        for flag, what, why in (
            (
                "is_norm",
                "normalization parameter",
                "pulling a norm's gain toward 0 fights the normalization instead of limiting capacity",
            ),
            (
                "is_bias",
                "bias",
                "a bias does not scale with the input, so shrinking it constrains offsets, not capacity",
            ),
            (
                "is_embedding",
                "embedding",
                "every row shrinks on every step while rare tokens' rows seldom get gradient, "
                "so rare-token embeddings are pushed toward zero",
            ),
        ):
            # a norm's bias is reported once, as a norm parameter
            hit = [i.name for i in decayed if getattr(i, flag) and not (flag == "is_bias" and i.is_norm)]
            if hit:
                fix = "matrices_no_embedding" if flag == "is_embedding" else "no_bias_norm"
                warn(
                    f"{len(hit)} {what} tensor(s) are decayed ({_names(hit)}) under "
                    f"decay_set={plan.decay_set!r}: {why}; consider decay_set={fix!r} or an exclude regex."
                )
        if not decayed:
            warn("the decay set is empty, so the regularization strength has no effect on any parameter.")
    for (fld, pat), names in plan.frozen_hits.items():
        warn(
            f"{fld} regex {show_regex(pat)} matches frozen parameter(s) ({_names(names)}): it has no effect there "
            "because parameters with requires_grad=False are never decayed."
        )
    for pat in plan.idle_multipliers:
        if ("multipliers", pat) not in plan.frozen_hits:
            warn(
                f"multipliers regex {show_regex(pat)} only matches parameters outside the decay set, "
                "so its factor changes nothing."
            )

    usual = rule.usual_range or {}
    scaled = rule.acts is Acts.DECOUPLED
    key = f"{mode}/{decay_scaling}" if scaled else mode
    if lam > 0 and (decay_scaling if scaled else "") in usual:
        lo, hi = usual[decay_scaling if scaled else ""]
        if not lo <= lam <= hi:
            warn(
                f"weight_decay={lam:g} is outside the usual range {lo:g}..{hi:g} for {key}: "
                "far above it the decay dominates the loss, far below it has no measurable effect."
            )
    if scaled and lam > 0 and rule.reads != "second_moment":
        per_step = lam if decay_scaling == "schedule" else (lr * lam if lr is not None else None)
        if per_step is not None and per_step >= 1:
            warn(
                f"the per-step decay at the peak lr is {per_step:g} >= 1, so the factor 1 - {per_step:g} "
                "zeroes or flips the sign of every decayed weight."
            )
    if tau_steps is not None:
        if steps is not None and tau_steps > steps:
            warn(
                f"the decay timescale τ = {_steps(tau_steps)} steps is longer than the run ({steps:,} steps): "
                "the weights never forget their initialization, so the decay acts only as a mild "
                "shrink (Wang & Aitchison 2024 relate the best τ to the run length)."
            )
        if steps_per_epoch is not None and tau_steps < steps_per_epoch:
            warn(
                f"the decay timescale τ = {_steps(tau_steps)} steps is shorter than one epoch "
                f"({steps_per_epoch:,} steps): the weights forget examples seen earlier in the same "
                "epoch (Wang & Aitchison 2024)."
            )
    return AuditReport(rows, summary, warnings)


def _schedule_text(name: str, warmup: int) -> str:
    """The λ schedule in words ('' when λ is constant): its formula and its warm-up."""
    if name == "constant" and not warmup:
        return ""
    ramp = f"; first a linear warm-up from λ/{warmup} to λ over {warmup} steps" if warmup else ""
    return f"{name}: {WEIGHT_DECAY_SCHEDULES[name].formula}{ramp} (τ is at the peak λ)"


def _steps(x: float) -> str:
    return f"{x:,.0f}" if x >= 10 else f"{x:.3g}"


def _names(names: list[str], k: int = 3) -> str:
    return ", ".join(names[:k]) + (f", ... ({len(names)} in all)" if len(names) > k else "")


@dataclass
class ComparisonRow:
    """One unique parameter and each compared decay set's decision about it (with the reason)."""

    name: str
    shape: tuple[int, ...]
    numel: int
    trainable: bool
    decayed: dict[str, bool]
    reasons: dict[str, str]
    aliases: tuple[str, ...] = ()

    @property
    def disagree(self) -> bool:
        """True when the compared sets do not all make the same decision."""
        return len(set(self.decayed.values())) > 1


@dataclass
class DecaySetComparison:
    """Several decay sets' decisions on one model, per parameter; render() prints it, to_dict() serialises it."""

    model: str
    sets: tuple[str, ...]
    rows: list[ComparisonRow]

    @property
    def disagreements(self) -> list[ComparisonRow]:
        """The rows where the compared sets disagree."""
        return [r for r in self.rows if r.disagree]

    def decayed_share(self, decay_set: str) -> float:
        """The share of trainable parameters (by numel) that `decay_set` decays."""
        trainable = sum(r.numel for r in self.rows if r.trainable)
        return sum(r.numel for r in self.rows if r.decayed[decay_set]) / trainable if trainable else 0.0

    def summary(self) -> str:
        """One line: on how many tensors (and parameters) the sets disagree."""
        rows, diff = [r for r in self.rows if r.trainable], self.disagreements
        names = ", ".join(self.sets)
        if not diff:
            return f"{names} agree on all {len(rows)} trainable tensors of {self.model}"
        return (f"{names} disagree on {len(diff)} of {len(rows)} trainable tensors of {self.model} "
                f"({sum(r.numel for r in diff):,} of {sum(r.numel for r in rows):,} parameters)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form of the comparison."""
        rows = [dict(asdict(r), shape=list(r.shape), aliases=list(r.aliases), disagree=r.disagree) for r in self.rows]
        return {"model": self.model, "sets": list(self.sets), "rows": rows, "summary": self.summary(),
                "decayed_share": {s: self.decayed_share(s) for s in self.sets}}

    def render(self, console: Any = None) -> None:
        """Print the comparison as a rich table (disagreeing rows marked), then the one-line summary."""
        print_comparison(self, console)


def compare_decay_sets(model: nn.Module, sets: str | Sequence[str]) -> DecaySetComparison:
    """Each named decay set's decision for every unique parameter of `model` (the sets as defined: no exclude)."""
    names = decay_set_names(sets if isinstance(sets, str) else tuple(sets))
    plans = {s: build_plan(model, s) for s in names}
    first = plans[names[0]].params
    rows = [
        ComparisonRow(
            name=info.name,
            shape=info.shape,
            numel=info.numel,
            trainable=info.trainable,
            decayed={s: plans[s].params[k].decayed for s in names},
            reasons={s: plans[s].params[k].reason for s in names},
            aliases=info.aliases,
        )
        for k, info in enumerate(first)  # every plan lists model.named_parameters() in the same order
    ]
    return DecaySetComparison(type(model).__name__, names, rows)


def print_comparison(comparison: DecaySetComparison, console: Any = None) -> None:
    """Print `comparison` with rich: a column per set, `≠` and the sets' reasons on rows where they disagree."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"decay sets compared on {comparison.model}: {', '.join(comparison.sets)}",
                  title_justify="left", show_footer=True)
    # the names keep their width (a cut name hides which parameter it is); the reasons wrap instead
    longest = max((len(r.name) for r in comparison.rows), default=9)
    table.add_column("parameter", footer="decayed share", no_wrap=True, min_width=min(longest, 60))
    table.add_column("shape")
    for s in comparison.sets:
        table.add_column(s, justify="center", footer=f"{100 * comparison.decayed_share(s):.1f}%")
    table.add_column("differ", justify="center")
    table.add_column("kept out by (where they differ)")
    for r in comparison.rows:
        # the exclusion is what explains a difference; "tied to" is the same for every set
        why = "; ".join(f"{s}: {r.reasons[s].split('; tied to ')[0]}" for s in comparison.sets
                        if not r.decayed[s]) if r.disagree else ""
        table.add_row(r.name, "x".join(map(str, r.shape)) or "scalar",
                      *("yes" if r.decayed[s] else "-" for s in comparison.sets),
                      "≠" if r.disagree else "", why, style="bold" if r.disagree else None)
    console.print(table)
    console.print(comparison.summary())
