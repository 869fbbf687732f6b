"""The experiment's sweeps: per dataset and regularizer, a k-fold CV sweep (what CV chooses) and a grid sweep on the
whole training split (the models scored on the test split), each resumable through the framework."""

from __future__ import annotations

from typing import Any

from decaylab.config import build_config
from experiments.common import Experiment
from experiments.ucurve.settings import base_config, grid

STRATEGIES = ("cv", "grid")


def sweep_key(dataset: str, strategy: str, family: str) -> str:
    """The sweep's folder under runs/."""
    return f"{dataset}-{strategy}-{family}"


def run_family(exp: Experiment, settings: dict[str, Any], dataset: str, family: str, strategy: str
               ) -> dict[str, Any]:
    """One sweep: a mode's λ grid without λ = 0, or, for `dropout`, λ = 0 at every p (its p = 0 point is every
    curve's λ = 0 baseline, trained once). Stacked (vectorized) replicas, no final model: the grid sweep's trials
    are the full-training-split models of every point, the chosen ones included."""
    options: dict[str, Any] = {"config": build_config(base_config(settings, dataset), origin=f"ucurve {dataset}"),
                               "strategy": strategy, "rule": "min", "final": False, "vectorized": True}
    if strategy == "cv":
        options["folds"] = settings["folds"]
    if family == "dropout":
        options.update(lambdas=[0.0], dropouts=grid(settings, "dropout"))
    else:
        options.update(lambdas=grid(settings, family), modes=[family], no_zero=True)
    return exp.sweep(sweep_key(dataset, strategy, family), **options)
