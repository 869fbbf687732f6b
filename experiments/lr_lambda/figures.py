"""The lr × λ figures: one heatmap of the final validation loss per family, and λ* against η with the fits."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from experiments.common import new_figure


def heatmaps(results: dict[str, dict[str, Any]]) -> Figure:
    """Rows η, columns λ (λ = 0 first, from the family's own sweep or its sibling's), colour the final validation
    loss above the row's best (0 to 0.3 nats; worse cells saturate): η moves the whole row's level far more than λ
    does, and λ*'s place in each row is the question. The row's best loss is in its label; a white dot marks each
    η's best λ > 0, a red cross a diverged run."""
    n = len(results)
    fig = new_figure(4.4 * n, 3.7)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, r in zip(axes, results.values(), strict=True):
        lams = [0.0, *r["lambdas"]]
        lrs = [p["lr"] for p in r["per_lr"]]
        values = np.full((len(lrs), len(lams)), np.nan)
        for i, p in enumerate(r["per_lr"]):
            by_lambda = {c["lambda"]: c["final_val_loss"] for c in p["cells"]}
            if p["baseline"] is not None:
                by_lambda.setdefault(0.0, p["baseline"]["final_val_loss"])
            for j, lam in enumerate(lams):
                values[i, j] = by_lambda.get(lam, np.nan)
        best = np.array([np.min(row[np.isfinite(row)]) for row in values])
        image = ax.imshow(np.where(np.isfinite(values), values - best[:, None], np.nan), origin="lower",
                          aspect="auto", cmap="viridis_r", norm=Normalize(0.0, 0.3))
        for i, p in enumerate(r["per_lr"]):
            for j in range(len(lams)):
                if values[i, j] == math.inf:
                    ax.plot(j, i, "x", color="red", ms=8)
            if p["grid_argmin"] is not None:
                ax.plot(lams.index(p["grid_argmin"]), i, "o", color="white", ms=7, mec="black")
        ax.set_xticks(range(len(lams)), ["0"] + [f"{v:.2g}" for v in r["lambdas"]], rotation=60, fontsize=7)
        ax.set_yticks(range(len(lrs)), [f"{v:g}\n({b:.2f})" for v, b in zip(lrs, best, strict=True)], fontsize=8)
        ax.set_xlabel("λ")
        ax.set_ylabel("learning rate η (row's best loss)")
        ax.set_title(r["label"], fontsize=9)
        fig.colorbar(image, ax=ax, label="final val. loss − row's best", shrink=0.9)
    return fig


def slopes(results: dict[str, dict[str, Any]]) -> Figure:
    """log λ* against log η per family (filled: the seed mean's, used in the fit; open: at a grid edge or not better
    than λ = 0; grey dots: each seed's), the fitted line, and the predicted slope through the data's centre
    (dashed)."""
    n = len(results)
    fig = new_figure(3.4 * n, 3.3)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, r in zip(axes, results.values(), strict=True):
        xs, ys = [], []
        for p in r["per_lr"]:
            if p["lambda_star"] is None:
                continue
            for seed in p.get("per_seed", []):  # each seed's own λ*, small and grey
                if seed["lambda_star"] is not None:
                    ax.plot(p["lr"], seed["lambda_star"], ".", color="0.55", ms=5)
            used = not p["edge"] and p["beats_zero"]
            ax.plot(p["lr"], p["lambda_star"], "o", color="#1f77b4", mfc="#1f77b4" if used else "none", ms=8)
            if used:
                xs.append(math.log10(p["lr"]))
                ys.append(math.log10(p["lambda_star"]))
        fit = r["fit"]
        grid_x = np.linspace(min(math.log10(p["lr"]) for p in r["per_lr"]),
                             max(math.log10(p["lr"]) for p in r["per_lr"]), 20)
        if math.isfinite(fit["slope"]):
            error = f" ± {fit['slope_se']:.2f}" if math.isfinite(fit["slope_se"]) else " (2 points, no SE)"
            ax.plot(10 ** grid_x, 10 ** (fit["intercept"] + fit["slope"] * grid_x), color="#1f77b4",
                    label=f"fit: {fit['slope']:+.2f}{error}")
        if r["prediction"] is not None and ys:
            centre = (float(np.mean(xs)), float(np.mean(ys)))
            ax.plot(10 ** grid_x, 10 ** (centre[1] + r["prediction"] * (grid_x - centre[0])), "k--",
                    label=f"predicted slope {r['prediction']:+.0f}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        lo, hi = min(r["lambdas"]), max(r["lambdas"])  # a view's grid moves with η: the union of its rows
        ax.set_ylim(lo / 2, hi * 2)
        ax.set_xlabel("learning rate η")
        ax.set_ylabel("λ* (final validation loss)")
        ax.set_title(r["label"], fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return fig
