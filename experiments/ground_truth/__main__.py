"""Does decaylab's CV pick the λ theory says is best? Ridge on a linear teacher with label noise, where λ* is known
exactly (task.py); one 5-fold CV sweep per teacher, over a log grid with ratio 2."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from decaylab.files import read_jsonl
from decaylab.sweep.selection import choose
from decaylab.sweep.store import SweepStore
from experiments.common import Experiment, start
from experiments.ground_truth.figures import draw
from experiments.ground_truth.objective import fit
from experiments.ground_truth.task import expected_test_loss, make_task, optimal_lambda, population_loss, ridge

FULL = {"dim": 20, "examples": 100, "sigma2": 1.0, "teacher_norm2": 1.0, "folds": 5, "seeds": 20,
        "grid_exponents": [-9, 3], "ratio": 2.0, "draws": 4000}
QUICK = {**FULL, "seeds": 2, "grid_exponents": [-4, 1], "draws": 300}
# The verdict's thresholds, fixed before the run: the share of teachers whose CV choice (rule min) lies within
# one grid step of λ* for the fold's training size.
REPRODUCED, PARTLY = 0.8, 0.5


def grid(settings: dict[str, Any]) -> list[float]:
    """The λ > 0 of the sweep: ratio^k for k in the exponent range (λ = 0 is added by the sweep)."""
    lo, hi = settings["grid_exponents"]
    return [settings["ratio"] ** k for k in range(lo, hi + 1)]


def steps(lam: float, target: float, ratio: float) -> float:
    """How many grid steps λ lies from the target (signed; 0 for λ = 0 is −inf)."""
    return math.log(lam / target) / math.log(ratio) if lam > 0 else -math.inf


def convergence(store: SweepStore) -> dict[str, float]:
    """Worst distance to the closed-form minimizer and worst gradient norm over every trial (and the final)."""
    dist, grad = 0.0, 0.0
    for folder in [*sorted((store.root / "trials").iterdir()), store.final]:
        for row in read_jsonl(folder / "metrics.jsonl"):
            dist, grad = max(dist, row["closed_form_distance"]), max(grad, row["grad_norm"])
    return {"max_closed_form_distance": dist, "max_grad_norm": grad}


def one_teacher(exp: Experiment, settings: dict[str, Any], seed: int, lam_fold: float, lam_full: float
                ) -> dict[str, Any]:
    """One CV sweep (rule min; the 1-SE choice by decaylab's own rule on the same table) and what it chose."""
    params = {k: settings[k] for k in ("dim", "examples", "sigma2", "teacher_norm2")} | {"data_seed": 1000 + seed}
    summary = exp.sweep(f"teacher{seed}", objective=fit, strategy="cv", folds=settings["folds"],
                        examples=settings["examples"], lambdas=grid(settings), modes="l2", rule="min", seed=seed,
                        params=params, regularization={"decay_set": "all"})
    table = summary["table"]
    chosen = {"min": summary["chosen"]["lambda"], "1se": choose(table, "1se", "loss")["lambda"]}
    task = make_task(params["dim"], params["examples"], params["sigma2"], params["teacher_norm2"], 1000 + seed)
    oracle = population_loss(ridge(task.x, task.y, lam_full), task)
    ratio = settings["ratio"]
    return {
        "teacher": seed, "table": [{k: r[k] for k in ("lambda", "mode", "mean", "se", "n_folds")} for r in table],
        "chosen": chosen,
        "steps_from_optimum": {rule: steps(lam, lam_fold, ratio) for rule, lam in chosen.items()},
        "within_one_step": {rule: abs(steps(lam, lam_fold, ratio)) <= 1 + 1e-9 for rule, lam in chosen.items()},
        "test_loss": {rule: population_loss(ridge(task.x, task.y, lam), task) for rule, lam in chosen.items()},
        "final_test_loss": summary["final"]["test"]["loss"], "oracle_test_loss": oracle,
        "convergence": convergence(SweepStore(exp.runs / f"teacher{seed}")),
        "sweep_wall_s": summary["wall_s"],
    }


def verdict(share: float, settings: dict[str, Any], lam_fold: float) -> str:
    """Reproduced / partly / not, with the share it rests on."""
    word = "reproduced" if share >= REPRODUCED else "partly reproduced" if share >= PARTLY else "not reproduced"
    return (f"{word}: the 5-fold CV choice (rule min) lies within one grid step (×{settings['ratio']:g}) of "
            f"λ* = {lam_fold:.4g} for {share:.0%} of {settings['seeds']} teachers (threshold {REPRODUCED:.0%} "
            f"for reproduced, {PARTLY:.0%} for partly)")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run (or continue) the experiment; write results.json and the figure; return the results."""
    exp = start("ground_truth", __doc__ or "", argv)
    settings = QUICK if exp.quick else FULL
    d, n, s2, t2 = (settings[k] for k in ("dim", "examples", "sigma2", "teacher_norm2"))
    m = n * (settings["folds"] - 1) // settings["folds"]  # what each CV trial trains on
    lam_fold, lam_full = optimal_lambda(d, m, s2, t2), optimal_lambda(d, n, s2, t2)
    teachers = [one_teacher(exp, settings, seed, lam_fold, lam_full) for seed in range(settings["seeds"])]
    # The theory checked: expected test loss for a fixed teacher (seed 0's) by Monte Carlo on a fine grid.
    fine = np.exp(np.linspace(math.log(grid(settings)[0]), math.log(grid(settings)[-1]), 121))
    teacher0 = make_task(d, n, s2, t2, 1000).teacher
    curve = expected_test_loss(fine, d, m, s2, teacher0, draws=settings["draws"])
    mc_argmin = float(fine[int(np.argmin(curve))])
    share = {rule: float(np.mean([t["within_one_step"][rule] for t in teachers])) for rule in ("min", "1se")}
    worst = {k: max(t["convergence"][k] for t in teachers) for k in ("max_closed_form_distance", "max_grad_norm")}
    results = {
        "lambda_star_fold": lam_fold, "lambda_star_full": lam_full, "train_size_fold": m,
        "monte_carlo": {"train_size": m, "argmin": mc_argmin, "argmin_over_lambda_star": mc_argmin / lam_fold,
                        "draws": settings["draws"], "lambdas": fine.tolist(), "expected_test_loss": curve.tolist()},
        "share_within_one_step": share,
        "median_steps": {r: float(np.median([t["steps_from_optimum"][r] for t in teachers])) for r in ("min", "1se")},
        "mean_regret": {r: float(np.mean([t["test_loss"][r] - t["oracle_test_loss"] for t in teachers]))
                        for r in ("min", "1se")},
        "convergence": worst, "teachers": teachers,
    }
    figure = draw(teachers, results, settings, grid(settings))
    exp.save_figure(figure, "cv_vs_optimum")
    exp.write_results({**settings, "grid": grid(settings), "rule": "min (1se by decaylab.sweep.selection.choose)",
                       "mode": "l2", "decay_set": "all"}, results, verdict(share["min"], settings, lam_fold))
    return results


if __name__ == "__main__":
    main()
