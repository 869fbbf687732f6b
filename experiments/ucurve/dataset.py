"""One dataset of the experiment: its ten sweeps, its curves and their checks, its figure; run in a process of its
own so that two datasets train side by side (one torch thread each)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from experiments.common import Experiment
from experiments.ucurve.curves import Curve, build_curve, over_regularization, summary_row, u_shape
from experiments.ucurve.figures import draw
from experiments.ucurve.settings import FAMILIES
from experiments.ucurve.sweeps import STRATEGIES, run_family, sweep_key
from experiments.ucurve.testsplit import TestSplit


def same_start(exp: Experiment, dataset: str) -> bool:
    """Every sweep of the dataset drew the same tokenizer and initial weights (so the baseline, trained once in the
    dropout sweep, is every curve's λ = 0, and two λ differ by λ alone)."""
    digests = set()
    for strategy in STRATEGIES:
        for family in FAMILIES:
            shared = exp.runs / sweep_key(dataset, strategy, family) / "shared"
            digests.add(tuple(hashlib.sha256((shared / name).read_bytes()).hexdigest()
                              for name in ("tokenizer.json", "init.safetensors")))
    return len(digests) == 1


def versus_zero(curve: Curve, tests: TestSplit, pairs: bool) -> dict[str, Any]:
    """Each rule's chosen λ against λ = 0 on the test split: per-example loss (and BLEU) paired bootstraps."""
    base = curve.points[0]
    out: dict[str, Any] = {}
    for rule in ("min", "1se"):
        point = curve.chosen(rule)
        if point.x == 0 or point.run is None or base.run is None:
            out[rule] = None  # CV chose λ = 0 itself: nothing to compare
            continue
        entry = {"x": point.x, "loss": tests.paired(point.run, base.run)}
        if pairs:
            entry["bleu"] = tests.bleu(point.run, base.run)
        out[rule] = entry
    return out


def one_dataset(exp: Experiment, settings: dict[str, Any], dataset: str, tests: TestSplit) -> dict[str, Any]:
    """Every sweep of one dataset (CV first, then the whole-split grids), its curves, checks and figure."""
    cv = {family: run_family(exp, settings, dataset, family, "cv") for family in FAMILIES}
    grid_roots: dict[str, Path] = {}
    for family in FAMILIES:
        run_family(exp, settings, dataset, family, "grid")
        grid_roots[family] = exp.runs / sweep_key(dataset, "grid", family)
    arch = settings["datasets"][dataset]["model"]["arch"]
    pairs = arch != "decoder"
    curves = [build_curve(dataset, family, cv, grid_roots) for family in FAMILIES]
    for curve in curves:
        for point in curve.points:
            point.test_loss = tests.loss(point.run) if point.run is not None else None
    exp.save_figure(draw(dataset, arch, curves, settings["folds"]), f"ucurve-{dataset}")
    families = {}
    for curve in curves:
        families[curve.family] = {**summary_row(curve), "u_shape": u_shape(curve),
                                  "over_regularization": over_regularization(curve, tests.paired),
                                  "versus_zero": versus_zero(curve, tests, pairs)}
    return {"arch": arch, "same_start": same_start(exp, dataset), "families": families,
            "sweeps_wall_s": {k: v for k, v in exp.sweep_wall_s.items() if k.startswith(f"{dataset}-")}}


def dataset_job(exp: Experiment, settings: dict[str, Any], dataset: str
                ) -> tuple[dict[str, Any], dict[str, float], list[float]]:
    """`one_dataset` in a worker process: its results and what the worker's copy of `exp` measured."""
    tests = TestSplit(exp.runs / "test-split", settings["bleu_examples"], settings["resamples"])
    return one_dataset(exp, settings, dataset, tests), exp.sweep_wall_s, exp.load_samples
