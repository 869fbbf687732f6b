"""The figure: the same validation-loss curves against τ_epoch and against λ, one curve per training-set size."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from experiments.common import new_figure

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def draw(sizes: list[dict[str, Any]], metric: str, title: str) -> Figure:
    """Left: val loss minus each curve's own minimum against τ_epoch; right: the same points against λ. Losses of
    two sizes differ in level (each size trains its own BPE vocabulary), so each curve is shown from its minimum;
    error bars are the SE over seeds; a hollow marker is each curve's refined minimum, dotted lines λ = 0."""
    fig = new_figure(10.5, 4.0)
    by_tau, by_lam = fig.subplots(1, 2, sharey=True)
    for size, color in zip(sizes, COLORS, strict=False):
        best = size["minimum"][metric]
        floor = min(best["mean"])
        shifted = [v - floor for v in best["mean"]]
        label = f"{size['label']} ({size['steps_per_epoch']:.1f} steps/epoch)"
        for axis, xs, star in ((by_tau, size["curve"]["taus"], best["tau"]),
                               (by_lam, size["curve"]["lambdas"], best["lambda"])):
            axis.errorbar(xs, shifted, yerr=best["se"], fmt="o-", color=color, capsize=3, label=label)
            axis.axvline(star, color=color, ls="--", lw=1)
            zero = sum(size["curve"]["zero"][metric]) / len(size["curve"]["zero"][metric]) - floor
            axis.axhline(zero, color=color, ls=":", lw=0.8)
    for axis in (by_tau, by_lam):
        axis.set_xscale("log")
        axis.xaxis.set_minor_formatter(NullFormatter())  # log axes over < 2 decades label minor ticks, overlapping
    taus = sizes[0]["curve"]["taus"]
    by_tau.set_xticks(taus, [f"{t:g}" for t in taus])
    by_tau.set_xlabel("τ_epoch = 1/(η·λ·steps per epoch)  [epochs]")
    by_lam.set_xlabel("λ (AdamW, decay × lr)")
    by_tau.set_ylabel(f"val loss − its curve's minimum ({'end of training' if metric == 'end' else 'best epoch'})")
    by_tau.set_title("against τ_epoch (dashed: each curve's minimum)")
    by_lam.set_title("against λ (dotted: λ = 0)")
    by_tau.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    return fig
