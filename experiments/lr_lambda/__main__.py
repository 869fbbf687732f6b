"""Learning rate × λ heatmaps of the final validation loss for Adam + L2, AdamW (decay × η and decay × schedule),
SGD + L2 and SGDW (decay × schedule) on one small translation task; the slope of log λ* against log η for each,
beside the timescale view's prediction (families.py). Each (family, η) is one grid sweep, its λ values trained
at once as one stacked model (decaylab's vectorized engine)."""

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

# A GRU encoder-decoder small enough for a 2-core CPU, on 400 bible-en-es pairs; 12 epochs at a constant learning
# rate, gradient norm clipped at 1 (decaylab's default).
BASE = ["data.name=bible-en-es", "data.max_examples=400", "data.max_valid_examples=200", "data.max_test_examples=300",
        "data.max_words=20", "tokenizer.vocab_size=800", "model.embed_dim=32", "model.hidden=64",
        "model.bidirectional=false", "model.dropout=0", "train.epochs=12", "train.schedule=constant", "seed=0"]
FULL = {
    "base": BASE,
    "lrs": {"adam": [0.00316, 0.01, 0.0316, 0.1], "sgd": [0.1, 0.316, 1.0]},
    "grids": {"adam_l2": (1e-6, 1e-3), "adamw_lr": (0.0316, 31.6), "adamw_schedule": (3.16e-4, 0.316),
              "sgd_l2": (1e-5, 1e-2), "sgdw_schedule": (1e-5, 1e-2)},
    "families": ["adam_l2", "adamw_lr", "adamw_schedule", "sgd_l2", "sgdw_schedule"],
}
QUICK = {
    "base": [*(o for o in BASE if not o.startswith(("data.max_examples", "train.epochs", "data.max_test"))),
             "data.max_examples=80", "data.max_test_examples=40", "train.epochs=2"],
    "lrs": {"adam": [0.01, 0.0316], "sgd": [0.316, 1.0]},
    "grids": {"adam_l2": (1e-4, 1e-3), "adamw_lr": (0.1, 1.0), "adamw_schedule": (1e-3, 1e-2),
              "sgd_l2": (1e-4, 1e-3), "sgdw_schedule": (1e-3, 3.16e-3)},
    "families": ["adam_l2", "adamw_lr", "sgdw_schedule"],
}
# The verdict's rule, fixed before the run: a family's fitted slope agrees with its prediction when it lies within
# two standard errors of it, or within 0.25 of it when the SE is smaller than that (three η give one degree of
# freedom, so the SE itself is rough).
TOLERANCE = 0.25
SIBLING = {"adamw_lr": "adam_l2", "adamw_schedule": "adam_l2", "sgdw_schedule": "sgd_l2"}  # same run at λ = 0


def sweep_key(family: Family, lr: float) -> str:
    """The folder of one (family, η) sweep."""
    return f"{family.key}-lr{lr:g}"


def cells(exp: Experiment, settings: dict[str, Any], family: Family, lr: float) -> list[dict[str, Any]]:
    """Train (or read back) one (family, η) sweep: each λ's final and best validation loss and its run folder.
    λ = 0 is trained unless the family's sibling, whose λ = 0 is the very same run, is part of the experiment."""
    config = load_config(None, [*settings["base"], *family.overrides(lr)])
    key = sweep_key(family, lr)
    shared_zero = not family.zero and SIBLING.get(family.key) in settings["families"]
    exp.sweep(key, config=config, strategy="grid", lambdas=list(family.lambdas), modes=family.mode,
              no_zero=shared_zero, vectorized=True, final=False, quiet=True)
    store = SweepStore(exp.runs / key)
    found = []
    for row in store.rows():
        history = read_jsonl(store.run_dir(row["trial"]) / "metrics.jsonl")
        final = float(history[-1]["val_loss"]) if history and row["status"] == "done" else math.inf
        found.append({"lambda": row["lambda"], "lr": lr, "status": row["status"], "final_val_loss": final,
                      "best_val_loss": row.get("best_val_loss"),
                      "decay_norm": float(history[-1]["decay_norm"]) if history else None,
                      "run": str(store.run_dir(row["trial"]).relative_to(exp.runs))})  # under runs/
    return sorted(found, key=lambda c: c["lambda"])


def optimum(rows: list[dict[str, Any]], baseline: dict[str, Any] | None) -> dict[str, Any]:
    """λ* on the grid (refined by a parabola in log λ) and whether it is trustworthy: not at an edge of the grid,
    and better than no decay."""
    positive = [r for r in rows if r["lambda"] > 0 and math.isfinite(r["final_val_loss"])]
    if not positive:
        return {"lambda_star": None, "edge": True, "beats_zero": False, "grid_argmin": None}
    lams = [r["lambda"] for r in positive]
    lam, index = log_argmin(lams, [r["final_val_loss"] for r in positive])
    best = positive[index]
    zero = baseline["final_val_loss"] if baseline is not None else math.inf
    return {"lambda_star": lam, "grid_argmin": best["lambda"], "best_final_val_loss": best["final_val_loss"],
            "edge": index in (0, len(positive) - 1), "beats_zero": best["final_val_loss"] < zero}


def agrees(fit: dict[str, float], prediction: float | None) -> bool | None:
    """The verdict's rule (TOLERANCE above); None without a prediction or a slope."""
    if prediction is None or not math.isfinite(fit.get("slope", math.nan)):
        return None
    se = fit["slope_se"] if math.isfinite(fit["slope_se"]) else 0.0
    return abs(fit["slope"] - prediction) <= max(2 * se, TOLERANCE)


def family_result(exp: Experiment, settings: dict[str, Any], family: Family,
                  grid: dict[str, dict[float, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Per η: the cells, λ* and its flags; the slope fitted over the η whose λ* is interior and beats λ = 0."""
    per_lr = []
    for lr in settings["lrs"][family.lrs]:
        rows = grid[family.key][lr]
        sibling = grid.get(SIBLING.get(family.key, family.key), {}).get(lr, rows)
        baseline = next((r for r in sibling if r["lambda"] == 0), None)
        per_lr.append({"lr": lr, "baseline": baseline, "cells": rows, **optimum(rows, baseline)})
    usable = [p for p in per_lr if p["lambda_star"] is not None and not p["edge"] and p["beats_zero"]]
    fit = (fit_line([math.log10(p["lr"]) for p in usable], [math.log10(p["lambda_star"]) for p in usable])
           if len(usable) >= 2 else {"slope": math.nan, "slope_se": math.nan, "intercept": math.nan,
                                     "points": len(usable)})
    every = [p for p in per_lr if p["lambda_star"] is not None]
    fit_all = (fit_line([math.log10(p["lr"]) for p in every], [math.log10(p["lambda_star"]) for p in every])
               if len(every) >= 2 else None)
    best = dict(min((c for p in per_lr for c in p["cells"] if c["lambda"] > 0),
                    key=lambda c: c["final_val_loss"]))
    return {"label": family.label, "optimizer": family.optimizer, "mode": family.mode, "scaling": family.scaling,
            "lambdas": list(family.lambdas), "prediction": family.prediction, "why": family.why,
            "per_lr": per_lr, "fit": fit, "fit_all_points": fit_all, "agrees": agrees(fit, family.prediction),
            "best_cell": best}


def verdict(results: dict[str, dict[str, Any]]) -> str:
    """Reproduced when every family with a prediction agrees, partly when some do, else not; with the slopes."""
    judged = {k: r["agrees"] for k, r in results.items() if r["prediction"] is not None}
    shown = "; ".join(f"{r['label']}: slope {r['fit']['slope']:+.2f} ± {r['fit']['slope_se']:.2f} "
                      f"(predicted {'–' if r['prediction'] is None else format(r['prediction'], '+.0f')}, "
                      f"{r['fit']['points']} η)" for r in results.values())
    yes = sum(1 for v in judged.values() if v)
    word = ("reproduced" if judged and yes == len(judged) else "partly reproduced" if yes else "not reproduced")
    return f"{word}: {yes} of {len(judged)} predicted slopes agree (within 2 SE or ±{TOLERANCE}); {shown}"


def paired_test(exp: Experiment, results: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The best AdamW cell against the best Adam + L2 cell on the test split, paired per sentence."""
    if "adam_l2" not in results or not ({"adamw_lr", "adamw_schedule"} & results.keys()):
        return None
    adamw = min((results[k]["best_cell"] for k in ("adamw_lr", "adamw_schedule") if k in results),
                key=lambda c: c["final_val_loss"])
    adam = results["adam_l2"]["best_cell"]
    test = compare_runs(exp.runs / adamw["run"], exp.runs / adam["run"], "test", checkpoint="last")
    return {"system_a": {"family": "AdamW", **{k: adamw[k] for k in ("lambda", "lr", "run")}},
            "system_b": {"family": "Adam + L2", **{k: adam[k] for k in ("lambda", "lr", "run")}}, **test.to_dict()}


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
    assert exp.args is not None
    if exp.args.only:  # a helper process: train these families' sweeps (last η first) and leave the rest
        for family in reversed([f for f in chosen if f.key in exp.args.only.split(",")]):
            for lr in reversed(settings["lrs"][family.lrs]):
                cells(exp, settings, family, lr)
        return {}
    grid = {f.key: {lr: cells(exp, settings, f, lr) for lr in settings["lrs"][f.lrs]} for f in chosen}
    results = {f.key: family_result(exp, settings, f, grid) for f in chosen}
    paired = paired_test(exp, results)
    exp.save_figure(heatmaps(results), "heatmaps")
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
