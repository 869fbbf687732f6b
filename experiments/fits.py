"""The experiments' small statistics: the minimum of a curve sampled on a log grid, and a line with its SE."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def log_argmin(lambdas: Sequence[float], values: Sequence[float], refine: bool = True) -> tuple[float, int]:
    """The λ (> 0) of the lowest value, and its index; with `refine`, the vertex of a parabola in log λ through the
    lowest point and its two neighbours, kept inside them (an edge minimum is returned as is)."""
    lams = np.asarray(lambdas, dtype=float)
    vals = np.asarray(values, dtype=float)
    if lams.ndim != 1 or lams.shape != vals.shape or len(lams) == 0 or (lams <= 0).any():
        raise ValueError("log_argmin: needs equally long λ > 0 and values")
    order = np.argsort(lams)
    lams, vals = lams[order], vals[order]
    i = int(np.nanargmin(vals))
    if not refine or i == 0 or i == len(lams) - 1:
        return float(lams[i]), int(order[i])
    x = np.log(lams[i - 1:i + 2])
    a, b, _ = np.polyfit(x, vals[i - 1:i + 2], 2)
    if a <= 0:
        return float(lams[i]), int(order[i])
    vertex = min(max(-b / (2 * a), x[0]), x[2])
    return float(math.exp(vertex)), int(order[i])


def fit_line(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Least-squares y = intercept + slope·x with the slope's standard error (residual variance over n − 2
    degrees of freedom; NaN with two points, where a line fits exactly)."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(xa)
    if n < 2 or xa.shape != ya.shape:
        raise ValueError("fit_line: needs at least two (x, y) points")
    sxx = float(((xa - xa.mean()) ** 2).sum())
    if sxx == 0:
        raise ValueError("fit_line: x has no spread")
    slope = float(((xa - xa.mean()) * (ya - ya.mean())).sum() / sxx)
    intercept = float(ya.mean() - slope * xa.mean())
    residual = ya - (intercept + slope * xa)
    se = math.sqrt(float((residual ** 2).sum()) / (n - 2) / sxx) if n > 2 else math.nan
    return {"slope": slope, "slope_se": se, "intercept": intercept, "points": n}
