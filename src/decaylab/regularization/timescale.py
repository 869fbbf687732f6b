"""λ through its timescale τ: decoupled decay makes the weights an exponential moving average of their updates.

A step that multiplies the decayed weights by 1 − c_t·λ and then adds an update averages the updates with timescale
τ_iter = 1/(c_t·λ) steps; in epochs, τ_epoch = τ_iter / (steps per epoch). Wang & Aitchison (ICML 2025, PMLR 267,
arXiv 2405.13698) show AdamW's weights are such an EMA with τ_iter = 1/(η·λ), find the best τ_epoch roughly constant
as model and dataset size change, and give the guideline: τ not (much) shorter than one epoch (the average should
cover every example) and not (much) longer than the whole run (early updates should be forgotten).

With a schedule, c_t changes; decaylab fixes τ at the schedule's peak lr (c_peak, where every decay scaling is
defined against η_max), so λ = 1/(c_peak·τ_iter):
- `lr` (torch AdamW, c_t = η_t): c_peak = η_max, λ = 1/(η_max·τ_iter);
- `schedule` (c_t = η_t/η_max): c_peak = 1, λ = 1/τ_iter;
- `corrected` (AdamC, c_t = η_t²/η_max): c_peak = η_max, λ = 1/(η_max·τ_iter) as for `lr`; as the lr anneals its
  timescale grows with 1/η_t² where `lr`'s grows with 1/η_t.
Coupled decay has this timescale only under plain SGD without momentum, where it is the same update as decoupled
`lr` decay (Loshchilov & Hutter, ICLR 2019, Proposition 1). Nothing here uses a constant that these sources do not
give. Data only (no torch): config validation reads it.
"""

from __future__ import annotations

from .rules import DECAY_SCALING_RULES, Acts, get_rule

SOURCE = "Wang & Aitchison, ICML 2025, arXiv 2405.13698"
RULE = "τ_iter = 1/(c_peak·λ) steps, τ_epoch = τ_iter / steps per epoch"
GUIDELINE = "τ_epoch between about one epoch and the total number of epochs of the run"


def timescale_problem(mode: str, optimizer: str, momentum: float) -> str | None:
    """Why λ of `mode` has no EMA timescale with this optimizer (one line), or None when it has one."""
    rule = get_rule(mode)
    if rule.acts is Acts.NOWHERE:
        return f"mode={mode!r} decays nothing, so there is no timescale to set; use regularization.mode=decoupled"
    if not rule.timescale:
        if rule.acts is Acts.LOSS:
            return (f"mode={mode!r} adds a penalty whose gradient λ·w is clipped with the task gradient (and "
                    "rescaled by Adam), so no step shrinks the weights by a set factor and τ has no meaning; use "
                    "mode=decoupled")
        return (f"mode={mode!r} has no EMA timescale (no step multiplies the weights by 1 − c_t·λ); use "
                "mode=decoupled")
    if rule.acts is Acts.GRADIENT:
        if optimizer != "sgd":
            return (f"mode={mode!r} with optimizer {optimizer!r}: Adam divides λ·w by √v̂ with the gradient, so the "
                    "shrink per step differs from weight to weight and has no timescale (Loshchilov & Hutter 2019); "
                    "use mode=decoupled")
        if momentum:
            return (f"mode={mode!r} with SGD momentum {momentum:g}: λ·w enters the momentum buffer and acts on later "
                    "steps too, so the shrink per step is not η·λ (coupled equals decoupled only without momentum, "
                    "Loshchilov & Hutter 2019, Prop. 1); set train.momentum=0 or use mode=decoupled")
    return None


def peak_coefficient(decay_scaling: str, peak_lr: float) -> float:
    """c_t of the decay scaling at the schedule's peak (η_t = η_max)."""
    return DECAY_SCALING_RULES[decay_scaling].coefficient(peak_lr, peak_lr)


def lambda_for_tau(tau_epochs: float, steps_per_epoch: float, decay_scaling: str, peak_lr: float
                   ) -> tuple[float, float]:
    """(λ, τ_iter): the λ whose decay at the peak lr averages over τ_iter = tau_epochs·steps_per_epoch steps."""
    tau_iter = tau_epochs * steps_per_epoch
    return 1.0 / (peak_coefficient(decay_scaling, peak_lr) * tau_iter), tau_iter


def tau_for_lambda(lam: float, steps_per_epoch: float, decay_scaling: str, peak_lr: float) -> float:
    """τ_epoch of λ > 0 at the peak lr: 1/(c_peak·λ) steps, in epochs."""
    return 1.0 / (peak_coefficient(decay_scaling, peak_lr) * lam) / steps_per_epoch


def timescale_formula(decay_scaling: str) -> str:
    """The derivation under a decay scaling as text, e.g. `λ = 1/(η_max·τ_iter)`."""
    at_peak = DECAY_SCALING_RULES[decay_scaling].at_peak
    return "λ = 1/τ_iter" if at_peak == "1" else f"λ = 1/({at_peak}·τ_iter)"


def guideline_taus(run_epochs: float, n: int) -> list[float]:
    """`n` τ values in epochs, log-spaced over the guideline's span from one epoch to the whole run (both ends
    included, 3 significant digits, so a printed τ gives exactly its printed λ)."""
    lo, hi = sorted((1.0, run_epochs))
    values = [lo * (hi / lo) ** (i / max(1, n - 1)) for i in range(n)]
    return sorted({float(f"{v:.3g}") for v in values})
