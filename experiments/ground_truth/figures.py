"""The ground-truth figure: one teacher's CV curve against the exact expectation, and every teacher's choice."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from matplotlib.figure import Figure

from experiments.common import new_figure


def draw(teachers: list[dict[str, Any]], results: dict[str, Any], settings: dict[str, Any],
         lambdas: list[float]) -> Figure:
    """Left: teacher 0's CV mean ± SE per λ, the Monte Carlo expected test loss at the fold's training size, λ* and
    the choices. Right: how many grid steps from λ* each teacher's choice fell, per rule."""
    fig = new_figure(10.5, 4.0)
    left, right = fig.subplots(1, 2)
    t0 = teachers[0]
    rows = [r for r in t0["table"] if r["lambda"] > 0]
    left.errorbar([r["lambda"] for r in rows], [r["mean"] for r in rows], yerr=[r["se"] or 0 for r in rows],
                  fmt="o-", color="#1f77b4", capsize=3, label=f"CV mean ± SE, teacher 0 ({settings['folds']} folds)")
    zero = next((r for r in t0["table"] if r["lambda"] == 0), None)
    if zero is not None:
        left.axhline(zero["mean"], color="#1f77b4", lw=0.8, ls=":", label="CV at λ = 0")
    mc = results["monte_carlo"]
    left.plot(mc["lambdas"], mc["expected_test_loss"], color="#2ca02c",
              label=f"expected test loss, m = {mc['train_size']} (Monte Carlo)")
    left.axvline(results["lambda_star_fold"], color="k", ls="--", lw=1,
                 label=f"λ* = σ²d/(m‖w*‖²) = {results['lambda_star_fold']:.3g}")
    for rule, marker in (("min", "v"), ("1se", "^")):
        lam = t0["chosen"][rule]
        if lam > 0:
            mean = next(r["mean"] for r in rows if r["lambda"] == lam)
            left.plot([lam], [mean], marker, ms=11, mfc="none", mew=2, color="#d62728", label=f"CV choice ({rule})")
    left.set_xscale("log")
    left.set_xlabel("λ (decaylab l2: ½λ‖w‖² on the mean loss)")
    left.set_ylabel("held-out ½·MSE")
    left.set_title("teacher 0")
    left.legend(fontsize=7)
    offsets = range(-4, 5)
    width = 0.38
    for shift, rule, color in ((-width / 2, "min", "#d62728"), (width / 2, "1se", "#9467bd")):
        counts = Counter(max(-4, min(4, round(t["steps_from_optimum"][rule]))) if math.isfinite(
            t["steps_from_optimum"][rule]) else -4 for t in teachers)
        right.bar([o + shift for o in offsets], [counts.get(o, 0) for o in offsets], width, color=color,
                  label=f"rule {rule}: {results['share_within_one_step'][rule]:.0%} within ±1 step")
    right.axvspan(-1.5, 1.5, color="0.9", zorder=0)
    right.set_xticks(list(offsets))
    right.set_xlabel(f"grid steps (×{settings['ratio']:g}) from λ* to the CV choice (±4: at or beyond)")
    right.set_ylabel("teachers")
    right.set_title(f"{len(teachers)} teachers")
    right.legend(fontsize=8)
    return fig
