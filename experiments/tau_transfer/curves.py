"""A τ sweep's validation-loss curve per seed, the minimum of the seed-mean curve on the τ and λ axes, and the
bootstrap over seeds of the ratio of two sizes' minima."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from decaylab.files import read_jsonl
from decaylab.sweep.store import SweepStore
from experiments.fits import log_argmin

METRICS = ("end", "best")  # the val loss after the last epoch (primary), and at the best epoch (the sweep's own)


def read_curves(folder: Path) -> dict[str, Any]:
    """Per seed and τ point: λ, the val loss at the end of training and at its best epoch; λ = 0 apart."""
    store = SweepStore(folder)
    rows = [r for r in read_jsonl(store.trials_file) if r["status"] == "done"]
    taus = sorted({r["tau"] for r in rows if r.get("tau") is not None})
    seeds = sorted({r["seed"] for r in rows})
    end = {m: np.full((len(seeds), len(taus)), math.nan) for m in METRICS}
    zero = {m: np.full(len(seeds), math.nan) for m in METRICS}
    lambdas = [math.nan] * len(taus)
    for r in rows:
        s = seeds.index(r["seed"])
        last = read_jsonl(folder / r["run"] / "metrics.jsonl")[-1]
        values = {"end": last["val_loss"], "best": r["best_val_loss"]}
        for m in METRICS:
            if r.get("tau") is None:
                zero[m][s] = values[m]
            else:
                end[m][s, taus.index(r["tau"])] = values[m]
        if r.get("tau") is not None:
            lambdas[taus.index(r["tau"])] = r["lambda"]
    summary = store.summary() or {}
    return {"taus": taus, "lambdas": lambdas, "seeds": seeds, "steps_per_epoch": summary.get("steps_per_epoch"),
            "loss": {m: end[m].tolist() for m in METRICS}, "zero": {m: zero[m].tolist() for m in METRICS}}


def minimum(curve: dict[str, Any], metric: str, seeds: list[int] | None = None) -> dict[str, Any]:
    """τ* and λ* of the seed-mean curve (log-grid parabola vertex), whether it sits at a grid edge, and whether
    λ = 0 (τ = ∞) did better than every τ on the grid."""
    loss = np.asarray(curve["loss"][metric])
    rows = loss if seeds is None else loss[seeds]
    mean = rows.mean(axis=0)
    tau, i = log_argmin(curve["taus"], mean)
    lam, _ = log_argmin(curve["lambdas"], mean)
    zero = float(np.mean(np.asarray(curve["zero"][metric])[seeds] if seeds is not None else curve["zero"][metric]))
    return {"tau": tau, "lambda": lam, "index": i, "edge": i in (0, len(mean) - 1), "loss": float(mean[i]),
            "zero_better": bool(zero < mean[i]), "mean": mean.tolist(),
            "se": (rows.std(axis=0, ddof=1) / math.sqrt(len(rows))).tolist() if len(rows) > 1 else None}


def bootstrap_ratio(small: dict[str, Any], large: dict[str, Any], metric: str, draws: int, seed: int
                    ) -> dict[str, Any]:
    """τ*(large)/τ*(small) and λ*(large)/λ*(small) over `draws` resamplings of each size's seeds (with
    replacement, independently): their 16/84 % and 2.5/97.5 % quantiles."""
    rng = np.random.default_rng(seed)
    taus, lams = [], []
    for _ in range(draws):
        a = minimum(small, metric, list(rng.integers(0, len(small["seeds"]), len(small["seeds"]))))
        b = minimum(large, metric, list(rng.integers(0, len(large["seeds"]), len(large["seeds"]))))
        taus.append(b["tau"] / a["tau"])
        lams.append(b["lambda"] / a["lambda"])
    q = (2.5, 16, 84, 97.5)
    return {"draws": draws, "quantiles": list(q), "tau_ratio": np.percentile(taus, q).tolist(),
            "lambda_ratio": np.percentile(lams, q).tolist()}


def per_seed_ratios(small: dict[str, Any], large: dict[str, Any], metric: str) -> list[dict[str, float]]:
    """For each seed both sizes share, paired by seed: that seed's own τ* and λ* ratios."""
    out = []
    for seed in sorted(set(small["seeds"]) & set(large["seeds"])):
        a = minimum(small, metric, [small["seeds"].index(seed)])
        b = minimum(large, metric, [large["seeds"].index(seed)])
        out.append({"seed": seed, "tau_ratio": b["tau"] / a["tau"], "lambda_ratio": b["lambda"] / a["lambda"]})
    return out


def aligning_ratio(a: dict[str, Any], b: dict[str, Any], metric: str, h: float, step: float = 0.125
                   ) -> dict[str, Any]:
    """Which τ ratio r between 1 (τ transfers) and h (λ transfers) lays b's whole seed-mean curve best onto a's: b
    moved to τ/r (log-linear interpolation) with a free vertical offset (two sizes' losses differ in level), RMS
    over the points of a that b covers under both hypotheses (one fixed set, so no r wins by dropping a point).
    Every point counts, not just the minimum: descriptive, beside the verdict."""
    xa, ya = np.log2(a["taus"]), np.asarray(a["loss"][metric]).mean(axis=0)
    xb, yb = np.log2(b["taus"]), np.asarray(b["loss"][metric]).mean(axis=0)
    lo, hi = sorted((0.0, math.log2(h)))
    common = (xa >= xb[0] - lo - 1e-9) & (xa <= xb[-1] - hi + 1e-9)

    def rms(log_r: float) -> float:
        diff = ya[common] - np.interp(xa[common], xb - log_r, yb)
        return float(np.sqrt(np.mean((diff - diff.mean()) ** 2)))

    if common.sum() < 3:
        return {"ratio": None, "points": int(common.sum())}
    grid = np.linspace(0.0, math.log2(h), max(1, math.ceil(abs(math.log2(h)) / step)) + 1)  # both ends exact
    errors = [rms(g) for g in grid]
    i = int(np.argmin(errors))
    return {"ratio": float(2 ** grid[i]), "rms": errors[i], "rms_tau": rms(0.0), "rms_lambda": rms(math.log2(h)),
            "h": h, "points": int(common.sum()), "step_log2": step}
