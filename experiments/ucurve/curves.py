"""One regularizer's curve on one dataset: CV mean ± SE and the test loss at every strength, what the rules choose,
the test-optimal strength, and the checks of the verdict (U shape, over-regularization, within one grid step)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from decaylab.sweep.selection import choose
from decaylab.sweep.store import SweepStore
from experiments.ucurve.settings import OVER_SE, U_SE


@dataclass
class Point:
    """One strength x (λ, or p for dropout; 0 is the shared baseline) of one curve."""

    x: float
    mode: str
    cv_mean: float
    cv_se: float | None
    n_folds: int
    run: Path | None = None  # the grid sweep's trial: trained on the whole training split
    test_loss: float | None = None


@dataclass
class Curve:
    """A regularizer's points, sorted by strength, with the baseline (x = 0) first."""

    dataset: str
    family: str
    points: list[Point] = field(default_factory=list)

    def index(self, x: float) -> int:
        """The position of strength x on the curve (exact match: the values come from the same grid)."""
        return next(i for i, p in enumerate(self.points) if math.isclose(p.x, x, rel_tol=1e-9, abs_tol=0.0))

    def at(self, x: float) -> Point:
        """The point of strength x."""
        return self.points[self.index(x)]

    def chosen(self, rule: str) -> Point:
        """decaylab's own rule (sweep.selection.choose) on this curve's CV table."""
        table = [{"lambda": p.x, "mode": p.mode, "dropout": 0.0, "mean": p.cv_mean, "se": p.cv_se,
                  "status": "done"} for p in self.points]
        row = choose(table, rule, "loss")
        return self.at(row["lambda"])

    def test_optimal(self) -> Point:
        """The strength whose full-training-split model has the lowest test loss."""
        scored = [p for p in self.points if p.test_loss is not None]
        return min(scored, key=lambda p: (p.test_loss, p.x))

    def above(self, x: float, factor: float) -> Point | None:
        """The grid point `factor`× above x (λ only), if the grid has it."""
        if self.family == "dropout" or x <= 0:
            return None
        return next((p for p in self.points if p.x > 0 and abs(math.log10(p.x / (x * factor))) < 1e-3), None)


def table_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """A sweep summary's finished table rows."""
    return [r for r in summary["table"] if r.get("status") == "done" and r.get("mean") is not None]


def build_curve(dataset: str, family: str, cv: dict[str, dict[str, Any]], grid_roots: dict[str, Path]) -> Curve:
    """The curve from the CV summaries (`cv[family]`, the baseline from `cv["dropout"]`) and the grid sweeps'
    trial folders (`grid_roots`, by family)."""
    rows = table_rows(cv["dropout"])
    if family == "dropout":
        points = [Point(r["dropout"], "dropout" if r["dropout"] > 0 else "none", r["mean"], r["se"],
                        r["n_folds"]) for r in rows]
    else:
        points = [Point(0.0, "none", r["mean"], r["se"], r["n_folds"]) for r in rows if r["dropout"] == 0]
        points += [Point(r["lambda"], family, r["mean"], r["se"], r["n_folds"]) for r in table_rows(cv[family])]
    points.sort(key=lambda p: p.x)
    runs = _grid_runs(grid_roots["dropout"], dropout_axis=True)
    if family != "dropout":
        runs = {0.0: runs[0.0], **_grid_runs(grid_roots[family], dropout_axis=False)}
    for p in points:
        p.run = runs.get(p.x)
    return Curve(dataset, family, points)


def _grid_runs(root: Path, dropout_axis: bool) -> dict[float, Path]:
    """Finished grid trials by strength (p for the dropout sweep, λ otherwise)."""
    rows = [r for r in SweepStore(root).rows() if r.get("status") == "done"]
    return {float(r["dropout"] if dropout_axis else r["lambda"]): root / r["run"] for r in rows}


def steps_between(curve: Curve, a: float, b: float) -> int:
    """Grid steps from a to b along the curve (λ = 0 counts as the step below the smallest λ > 0)."""
    return curve.index(b) - curve.index(a)


def u_shape(curve: Curve) -> dict[str, Any]:
    """U-shaped: the CV minimum strictly inside the grid, and both λ = 0 and the strong end (100× the minimum when
    the grid has it, else the largest strength) worse by more than U_SE of the minimum's SE."""
    best = curve.chosen("min")
    se = best.cv_se or 0.0
    i = curve.index(best.x)
    strong = curve.above(best.x, 100.0) or curve.points[-1]
    left = curve.points[0].cv_mean - best.cv_mean
    right = strong.cv_mean - best.cv_mean
    interior = 0 < i < len(curve.points) - 1
    return {"interior": interior, "min": best.x, "min_se": se, "strong_end": strong.x,
            "zero_minus_min": left, "strong_minus_min": right,
            "zero_minus_min_se": left / se if se else math.inf, "strong_minus_min_se": right / se if se else math.inf,
            "u_shaped": bool(interior and left > U_SE * se and right > U_SE * se)}


def over_regularization(curve: Curve, paired: Any) -> dict[str, Any]:
    """10× and 100× above the CV optimum: CV mean − optimum in units of the optimum's SE (hurts: > OVER_SE), and
    the test loss of those models against the optimum's (`paired(run_a, run_b)`, a paired bootstrap)."""
    best = curve.chosen("min")
    out: dict[str, Any] = {"optimum": best.x}
    for factor in (10.0, 100.0):
        point = curve.above(best.x, factor)
        if point is None:
            out[f"{factor:g}x"] = None
            continue
        delta = point.cv_mean - best.cv_mean
        se = best.cv_se or 0.0
        entry: dict[str, Any] = {"x": point.x, "cv_delta": delta, "cv_delta_se": delta / se if se else math.inf,
                                 "hurts": bool(delta > OVER_SE * se)}
        if point.run is not None and best.run is not None:
            entry["test"] = paired(point.run, best.run)
        out[f"{factor:g}x"] = entry
    return out


def summary_row(curve: Curve) -> dict[str, Any]:
    """The curve as JSON: every point, the choices, the test optimum and their distance in grid steps."""
    test_opt = curve.test_optimal()
    chosen = {rule: curve.chosen(rule).x for rule in ("min", "1se")}
    steps = {rule: steps_between(curve, test_opt.x, x) for rule, x in chosen.items()}
    return {
        "points": [{"x": p.x, "mode": p.mode, "cv_mean": p.cv_mean, "cv_se": p.cv_se, "n_folds": p.n_folds,
                    "test_loss": p.test_loss} for p in curve.points],
        "chosen": chosen, "test_optimal": test_opt.x, "steps_to_test_optimal": steps,
        "within_one_step": {rule: abs(s) <= 1 for rule, s in steps.items()},
    }
