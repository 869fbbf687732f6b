"""Learning rate × λ heatmaps of the final validation loss for Adam + L2, AdamW, SGD + L2 and SGDW under a cosine
schedule, on one small translation task; the slope of log λ* against log η for each, beside the timescale view's
prediction (families.py), with AdamW read in both of its parameterizations (decay × η as torch, decay × schedule
as Loshchilov & Hutter). Each (family, η) is one grid sweep, its λ values × seeds trained at once as one stacked
model (decaylab's vectorized engine)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from decaylab.config import load_config
from decaylab.evaluation.significance import compare_runs
from decaylab.files import read_jsonl
from decaylab.sweep.store import SweepStore
from experiments.common import Experiment, start
from experiments.fits import fit_line, log_argmin
from experiments.lr_lambda.families import Family, families
from experiments.lr_lambda.figures import heatmaps, slopes

# A GRU encoder-decoder small enough for a 2-core CPU, on 400 bible-en-es pairs; 24 epochs (216 steps) under
# L&H's cosine schedule after a linear warmup of 22 steps, gradient norm clipped at 1 (decaylab's default).
# The first version (constant η, 12 epochs, one seed, results in results/first_version/) could not tell the two
# AdamW scalings apart and left its smallest η undertrained; hence the schedule, the longer run, two seeds and five
# η per optimizer inside the range where both train (a pilot at λ = 0, 24 epochs: Adam η = 0.005 ends at 4.86
# nats and 0.08 at 6.47 after overfitting, 4.62 with decoupled λ = 1; SGD η = 0.125 stalls at 5.66 and η = 2 blows
# up to 57 nats mid-run).
BASE = ["data.name=bible-en-es", "data.max_examples=400", "data.max_valid_examples=200", "data.max_test_examples=300",
        "data.max_words=20", "tokenizer.vocab_size=800", "model.embed_dim=32", "model.hidden=64",
        "model.bidirectional=false", "model.dropout=0", "train.epochs=24", "train.schedule=cosine",
        "train.warmup_steps=22", "seed=0"]
FULL = {
    "base": BASE,
    "seeds": 2,
    "lrs": {"adam": [0.005, 0.01, 0.02, 0.04, 0.08], "sgd": [0.25, 0.354, 0.5, 0.707, 1.0]},
    "grids": {"adam_l2": (1e-5, 1e-2), "adamw_lr": (0.0316, 31.6), "sgd_l2": (3.16e-6, 3.16e-3),
              "sgdw_schedule": (1e-5, 1e-2)},
    "families": ["adam_l2", "adamw_lr", "adamw_schedule", "sgd_l2", "sgdw_schedule"],
}
QUICK = {
    "base": [*(o for o in BASE if not o.startswith(("data.max_examples", "train.epochs", "data.max_test",
                                                    "train.warmup"))),
             "data.max_examples=80", "data.max_test_examples=40", "train.epochs=2", "train.warmup_steps=1"],
    "seeds": 2,
    "lrs": {"adam": [0.01, 0.0316], "sgd": [0.316, 1.0]},
    "grids": {"adam_l2": (1e-4, 1e-3), "adamw_lr": (0.1, 1.0), "sgdw_schedule": (1e-3, 3.16e-3)},
    "families": ["adam_l2", "adamw_lr", "adamw_schedule", "sgdw_schedule"],
}
# The verdict's rule, fixed before the run: a family's fitted slope agrees with its prediction when it lies within
# two standard errors of it, or within 0.25 of it when the SE is smaller than that.
TOLERANCE = 0.25
SIBLING = {"adamw_lr": "adam_l2", "adamw_schedule": "adam_l2", "sgdw_schedule": "sgd_l2"}  # same run at λ = 0


def sweep_key(family: Family, lr: float) -> str:
    """The folder of one (family, η) sweep."""
    return f"{family.key}-lr{lr:g}"


def cells(exp: Experiment, settings: dict[str, Any], family: Family, lr: float) -> list[dict[str, Any]]:
    """Train (or read back) one (family, η) sweep: per λ the final validation loss of each seed and their mean, the
    best-epoch loss, the decayed weights' norm and each seed's run folder. λ = 0 is trained unless the family's
    sibling, whose λ = 0 is the very same run, is part of the experiment."""
    config = load_config(None, [*settings["base"], *family.overrides(lr)])
    key = sweep_key(family, lr)
    shared_zero = not family.zero and SIBLING.get(family.key) in settings["families"]
    exp.sweep(key, config=config, strategy="grid", lambdas=list(family.lambdas), modes=family.mode,
              no_zero=shared_zero, vectorized=True, final=False, quiet=True, seeds=settings["seeds"])
    store = SweepStore(exp.runs / key)
    by_lambda: dict[float, list[dict[str, Any]]] = {}
    for row in sorted(store.rows(), key=lambda r: r.get("seed", 0)):
        history = read_jsonl(store.run_dir(row["trial"]) / "metrics.jsonl")
        final = float(history[-1]["val_loss"]) if history and row["status"] == "done" else math.inf
        if not math.isfinite(final):
            final = math.inf  # a diverged run (NaN) ranks last
        by_lambda.setdefault(row["lambda"], []).append({
            "seed": row.get("seed", 0), "final": final, "best": row.get("best_val_loss"),
            "decay_norm": float(history[-1]["decay_norm"]) if history else math.nan,
            "run": str(store.run_dir(row["trial"]).relative_to(exp.runs))})  # under runs/
    return [{"lambda": lam, "lr": lr, "final_val_loss": float(np.mean([r["final"] for r in runs])),
             "final_per_seed": [r["final"] for r in runs], "seeds": [r["seed"] for r in runs],
             "best_val_loss": float(np.mean([r["best"] if r["best"] is not None else math.inf for r in runs])),
             "decay_norm": float(np.mean([r["decay_norm"] for r in runs])), "run": runs[0]["run"],
             "runs": [r["run"] for r in runs]}
            for lam, runs in sorted(by_lambda.items())]


def reexpressed(rows: list[dict[str, Any]], lr: float) -> list[dict[str, Any]]:
    """AdamW × η's cells at peak η as AdamW × schedule's: the same runs, λ_schedule = η·λ (families.py)."""
    return [{**r, "lambda": float(f"{r['lambda'] * lr:.6g}")} for r in rows]


def optimum(rows: list[dict[str, Any]], baseline: dict[str, Any] | None, seed: int | None = None) -> dict[str, Any]:
    """λ* on the grid (refined by a parabola in log λ) of the seed mean, or of one seed (its index), and whether it
    is trustworthy: not at an edge of the grid, and better than no decay."""
    def loss(row: dict[str, Any]) -> float:
        return row["final_val_loss"] if seed is None else row["final_per_seed"][seed]

    positive = [r for r in rows if r["lambda"] > 0 and math.isfinite(loss(r))]
    if not positive:
        return {"lambda_star": None, "edge": True, "beats_zero": False, "grid_argmin": None}
    lam, index = log_argmin([r["lambda"] for r in positive], [loss(r) for r in positive])
    best = positive[index]
    zero = loss(baseline) if baseline is not None else math.inf
    return {"lambda_star": lam, "grid_argmin": best["lambda"], "best_final_val_loss": loss(best),
            "edge": index in (0, len(positive) - 1), "beats_zero": loss(best) < zero}


def slope_of(points: list[dict[str, Any]]) -> dict[str, Any]:
    """log10 λ* against log10 η over the η whose λ* is interior and beats λ = 0 (NaN with fewer than two)."""
    usable = [p for p in points if p["lambda_star"] is not None and not p["edge"] and p["beats_zero"]]
    if len(usable) < 2:
        return {"slope": math.nan, "slope_se": math.nan, "intercept": math.nan, "points": len(usable)}
    return fit_line([math.log10(p["lr"]) for p in usable], [math.log10(p["lambda_star"]) for p in usable])


def agrees(fit: dict[str, float], prediction: float | None) -> bool | None:
    """The verdict's rule (TOLERANCE above); None without a prediction or a slope."""
    if prediction is None or not math.isfinite(fit.get("slope", math.nan)):
        return None
    se = fit["slope_se"] if math.isfinite(fit["slope_se"]) else 0.0
    return abs(fit["slope"] - prediction) <= max(2 * se, TOLERANCE)


def family_result(settings: dict[str, Any], family: Family,
                  grid: dict[str, dict[float, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Per η: the cells, λ* (seed mean and per seed) and its flags; the slope fitted over the η whose λ* is
    interior and beats λ = 0, for the seed mean and for each seed."""
    per_lr = []
    for lr in settings["lrs"][family.lrs]:
        rows = (reexpressed(grid[family.view_of][lr], lr) if family.view_of else grid[family.key][lr])
        sibling = grid.get(SIBLING.get(family.key, family.key), {}).get(lr, rows)
        baseline = next((r for r in sibling if r["lambda"] == 0), None)
        seeds = len(rows[0]["final_per_seed"]) if rows else 0
        per_lr.append({"lr": lr, "baseline": baseline, "cells": rows, **optimum(rows, baseline),
                       "per_seed": [optimum(rows, baseline, s) for s in range(seeds)]})
    fit = slope_of(per_lr)
    seeds = min((len(p["per_seed"]) for p in per_lr), default=0)
    per_seed_fit = [slope_of([{"lr": p["lr"], **p["per_seed"][s]} for p in per_lr]) for s in range(seeds)]
    every = [p for p in per_lr if p["lambda_star"] is not None]
    fit_all = (fit_line([math.log10(p["lr"]) for p in every], [math.log10(p["lambda_star"]) for p in every])
               if len(every) >= 2 else None)
    best = dict(min((c for p in per_lr for c in p["cells"] if c["lambda"] > 0),
                    key=lambda c: c["final_val_loss"]))
    lambdas = sorted({c["lambda"] for p in per_lr for c in p["cells"] if c["lambda"] > 0})
    return {"label": family.label, "optimizer": family.optimizer, "mode": family.mode, "scaling": family.scaling,
            "lambdas": lambdas, "view_of": family.view_of, "prediction": family.prediction, "why": family.why,
            "per_lr": per_lr, "fit": fit, "fit_per_seed": per_seed_fit, "fit_all_points": fit_all,
            "agrees": agrees(fit, family.prediction), "best_cell": best}


def verdict(results: dict[str, dict[str, Any]]) -> str:
    """Reproduced when every family with a prediction agrees, partly when some do, else not; with the slopes."""
    viewed = {r["view_of"] for r in results.values() if r["view_of"]}
    # a family read again through a view is judged once, there (AdamW: the two scalings' predictions are one claim)
    judged = {k: r["agrees"] for k, r in results.items() if r["prediction"] is not None and k not in viewed}
    shown = "; ".join(f"{r['label']}: slope {r['fit']['slope']:+.2f} ± {r['fit']['slope_se']:.2f} "
                      f"(predicted {'–' if r['prediction'] is None else format(r['prediction'], '+.0f')}, "
                      f"{r['fit']['points']} η)" for r in results.values())
    yes = sum(1 for v in judged.values() if v)
    word = ("reproduced" if judged and yes == len(judged) else "partly reproduced" if yes else "not reproduced")
    return (f"{word}: {yes} of {len(judged)} predicted slopes agree (within 2 SE or ±{TOLERANCE}; AdamW's two "
            f"scalings are one claim, judged once); {shown}")


def paired_test(exp: Experiment, results: dict[str, dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The best AdamW cell against the best Adam + L2 cell (seed-mean final validation loss) on the test split,
    paired per sentence, one comparison per seed (the two cells' runs of that seed)."""
    if "adam_l2" not in results or "adamw_lr" not in results:
        return None
    adamw, adam = results["adamw_lr"]["best_cell"], results["adam_l2"]["best_cell"]
    found = []
    for seed, run_a, run_b in zip(adamw["seeds"], adamw["runs"], adam["runs"], strict=True):
        test = compare_runs(exp.runs / run_a, exp.runs / run_b, "test", checkpoint="last")
        found.append({**test.to_dict(), "training_seed": seed,  # test.to_dict()'s "seed" is the bootstrap's
                      "system_a": {"family": "AdamW", "lambda": adamw["lambda"], "lr": adamw["lr"], "run": run_a},
                      "system_b": {"family": "Adam + L2", "lambda": adam["lambda"], "lr": adam["lr"], "run": run_b}})
    return found


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--only", default=None, metavar="FAMILY,...",
                        help="only train these families' sweeps, from the last one back, and write no results: a "
                             "second process beside the main command shares the work (it waits for a sweep the "
                             "other one is training)")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run (or continue) the experiment; write results.json and the figures; return the results."""
    exp = start("lr_lambda", __doc__ or "", argv, _options)
    if exp.threads is None:  # small GEMMs: one thread each is faster than two fighting over a shared machine
        torch.set_num_threads(1)
    settings = QUICK if exp.quick else FULL
    chosen = [f for f in families(settings["grids"]) if f.key in settings["families"]]
    trained = [f for f in chosen if f.view_of is None]
    assert exp.args is not None
    if exp.args.only:  # a helper process: train these families' sweeps (last η first) and leave the rest
        for family in reversed([f for f in trained if f.key in exp.args.only.split(",")]):
            for lr in reversed(settings["lrs"][family.lrs]):
                cells(exp, settings, family, lr)
        return {}
    grid = {f.key: {lr: cells(exp, settings, f, lr) for lr in settings["lrs"][f.lrs]} for f in trained}
    results = {f.key: family_result(settings, f, grid) for f in chosen}
    paired = paired_test(exp, results)
    exp.save_figure(heatmaps({k: r for k, r in results.items() if not r["view_of"]}), "heatmaps")
    exp.save_figure(slopes(results), "slopes")
    exp.write_results({**settings, "threads": torch.get_num_threads(), "tolerance": TOLERANCE,
                       "families": {k: {"optimizer": r["optimizer"], "mode": r["mode"], "scaling": r["scaling"],
                                        "lambdas": r["lambdas"]} for k, r in results.items()}},
                      {"families": results, "paired_test": paired,
                       "sweeps": {k: v for k, v in exp.sweep_wall_s.items()}}, verdict(results))
    return {"families": results, "paired_test": paired, "cells": int(np.sum([len(c) for g in grid.values()
                                                                                for c in g.values()]))}


if __name__ == "__main__":
    main()
