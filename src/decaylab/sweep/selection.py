"""From trial rows to the per-point table (mean ± standard error) and the chosen point (rule `min` or `1se`)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from decaylab.errors import UserError

# trials.jsonl field that holds each metric's value for one trial.
METRIC_FIELDS = {"loss": "best_val_loss", "bleu": "bleu", "chrf": "chrf"}


def higher_is_better(metric: str) -> bool:
    """BLEU and chrF grow with quality; loss shrinks."""
    return metric in ("bleu", "chrf")


def mean_se(values: list[float]) -> tuple[float, float | None]:
    """Mean and standard error (sample std / √n); the error is None for a single value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def build_table(rows: Iterable[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """One row per (λ, mode, dropout): mean and SE of the metric over the finished trials (folds) of that point
    (and its τ, in epochs, for a point of a τ sweep)."""
    rows = list(rows)
    taus = any("tau" in row for row in rows)  # a τ sweep: every entry says its τ (None: the λ = 0 baseline, τ = ∞)
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["mode"], row["lambda"], row["dropout"]), []).append(row)
    table = []
    for (mode, lam, dropout), members in groups.items():
        done = [r for r in members if r.get("status") == "done" and _finite(r.get(METRIC_FIELDS[metric]))]
        entry: dict[str, Any] = {"lambda": lam, "mode": mode, "dropout": dropout, "mean": None, "se": None,
                                 "n_folds": len(done), "status": "done" if done else members[-1].get("status")}
        if taus:
            entry = {"lambda": lam, "tau": members[0].get("tau"), **entry}
        if done:
            entry["mean"], entry["se"] = mean_se([float(r[METRIC_FIELDS[metric]]) for r in done])
            entry["epochs"] = max(r.get("epochs") or 0 for r in done)
        else:
            entry["epochs"] = max(r.get("epochs") or 0 for r in members)
            values = [r.get(METRIC_FIELDS[metric]) for r in members if _finite(r.get(METRIC_FIELDS[metric]))]
            entry["partial"] = (min(values) if not higher_is_better(metric) else max(values)) if values else None
        table.append(entry)
    table.sort(key=lambda e: (e["dropout"], e["mode"] != "none", e["mode"], e["lambda"]))
    return table


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _score(entry: dict[str, Any], metric: str) -> float:
    """Lower is better whatever the metric."""
    return -entry["mean"] if higher_is_better(metric) else entry["mean"]


def choose(table: list[dict[str, Any]], rule: str, metric: str) -> dict[str, Any]:
    """The chosen table row: `min` = best mean; `1se` = largest λ within one SE of the best on the best's curve.

    A curve is one (mode, dropout) with the λ = 0 baseline of that dropout at its start, so the 1-SE rule
    only trades λ against λ within one kind of regularization; λ values of different modes are not comparable.
    """
    candidates = [e for e in table if e["status"] == "done" and e["mean"] is not None]
    if not candidates:
        raise UserError("no trial finished, so there is nothing to choose from (see trials.jsonl)")
    best = min(candidates, key=lambda e: (_score(e, metric), e["lambda"]))
    if rule == "min":
        return best
    threshold = _score(best, metric) + (best["se"] or 0.0)
    if best["mode"] != "none":
        curves = [best["mode"]]
    else:  # the baseline lies on every curve of its dropout: take the curve whose best λ > 0 is best
        others = [e for e in candidates if e["mode"] != "none" and e["dropout"] == best["dropout"]]
        curves = [min(others, key=lambda e: _score(e, metric))["mode"]] if others else []
    on_curve = [e for e in candidates if e["dropout"] == best["dropout"] and (e["mode"] in curves or e is best)]
    within = [e for e in on_curve if _score(e, metric) <= threshold + 1e-12]
    return max(within, key=lambda e: (e["lambda"], -_score(e, metric)))


def history_value(history: list[dict[str, Any]], metric: str) -> float:
    """A trial's metric so far: the best val loss, or BLEU/chrF of the best-val-loss evaluation (its checkpoint)."""
    best = min(history, key=lambda row: row["val_loss"])
    return float(best["val_loss"] if metric == "loss" else best[metric])


def compute_seconds(rows: list[dict[str, Any]]) -> float:
    """Training seconds behind `rows`: each run folder once, for its longest row (a halving survivor's rungs are
    one run whose wall_s accumulates); the replicas of one vectorized stack ran at the same time, so a stack counts
    once, for its own wall time (`stack_wall_s`)."""
    per_run: dict[str, float] = {}
    for row in rows:
        key, seconds = (row["stack"], row.get("stack_wall_s")) if row.get("stack") else (row["run"], row.get("wall_s"))
        per_run[key] = max(per_run.get(key, 0.0), seconds or 0.0)
    return sum(per_run.values())
