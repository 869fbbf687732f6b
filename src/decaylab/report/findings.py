"""The page's words and tables as plain data: the verdict (which λ, how sure), the per-λ and per-trial tables."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from decaylab.report.collect import HIGHER_IS_BETTER, Point, RunData, SweepData, finite, mean_se

METRIC_NAMES = {"loss": "validation loss", "bleu": "validation BLEU", "chrf": "validation chrF"}
RULES = {"min": "lowest mean", "1se": "largest λ within one standard error of the lowest mean (1-SE rule)"}


def fmt(value: Any, digits: int = 4) -> str:
    """A number for the page: fixed digits for ordinary sizes, λ-style `g` for tiny or huge ones."""
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
        return f"{value:.3g}"
    return f"{value:.{digits}f}"


def fmt_lambda(lam: float | None) -> str:
    """λ as the user typed it: 0, 0.001, 1e-05."""
    return "–" if lam is None else f"{lam:g}"


def signed(value: float) -> str:
    """A difference with its sign: +0.0123, −0.0456."""
    text = fmt(abs(value))
    return f"+{text}" if value > 0 else f"−{text}" if value < 0 else text


def pm(mean: float | None, se: float | None, digits: int = 4) -> str:
    """`mean ± se` (just the mean when there is no SE)."""
    return fmt(mean, digits) if se is None else f"{fmt(mean, digits)} ± {fmt(se, digits)}"


@dataclass
class Fact:
    """One line of the verdict box."""

    label: str
    value: str
    note: str = ""


@dataclass
class Verdict:
    """The answer at the top of the page."""

    headline: str
    subline: str
    facts: list[Fact] = field(default_factory=list)
    warning: str = ""


def paired_rows(a: list[dict], b: list[dict], name: str, higher_is_better: bool = False
                ) -> tuple[float | None, float | None, int, int]:
    """Mean ± SE of (a − b) on the field `name` over the (fold, seed) pairs both finished, and in how many of them
    a is better."""

    def pair(row: dict) -> tuple:
        return row.get("fold"), row.get("seed")

    by_pair = {pair(r): r.get(name) for r in b if r.get("status") == "done" and finite(r.get(name))}
    diffs = [float(r[name]) - float(by_pair[pair(r)]) for r in a
             if r.get("status") == "done" and finite(r.get(name)) and pair(r) in by_pair]
    sign = -1.0 if higher_is_better else 1.0
    wins = sum(1 for d in diffs if sign * d < 0)
    mean, se = mean_se(diffs)
    return mean, se, wins, len(diffs)


def paired_difference(sweep: SweepData, a: Point, b: Point) -> tuple[float | None, float | None, int, int]:
    """`paired_rows` of two points of a sweep on its selection metric."""
    return paired_rows(a.rows, b.rows, sweep.metric_field, sweep.metric in HIGHER_IS_BETTER)


def compared_points(sweep: SweepData) -> tuple[Point | None, Point | None]:
    """The λ = 0 baseline and the model it is compared with (the chosen point, or the best λ > 0 when 0 won)."""
    chosen = sweep.chosen
    baseline = sweep.baseline(chosen.dropout if chosen else None)
    if chosen is not None and chosen.lam > 0:
        return baseline, chosen
    name = sweep.metric_field
    sign = -1.0 if sweep.metric in HIGHER_IS_BETTER else 1.0
    positive = [p for p in sweep.points if p.lam > 0 and p.mean(name) is not None]
    return baseline, (min(positive, key=lambda p: sign * p.mean(name)) if positive else None)


def sweep_verdict(sweep: SweepData, test: dict[str, Any] | None, sample_chrf: list[tuple[str, float]]) -> Verdict:
    """Which λ, how sure, and what it does to the text, in a few lines."""
    chosen, name, metric = sweep.chosen, sweep.metric_field, sweep.metric
    folds = sweep.repeats
    strategy = sweep.spec.get("strategy", "grid")
    if chosen is None:
        return Verdict("No λ chosen yet", f"{len(sweep.rows)} trial(s) recorded; summary.json is not written "
                       "(the sweep is unfinished or failed): the plots show what has finished so far.")
    headline = ("λ = 0: no weight decay is best" if chosen.lam == 0
                else chosen.label() if chosen.tau is not None else f"{chosen.mode} λ = {fmt_lambda(chosen.lam)}")
    if chosen.dropout is not None and len({p.dropout for p in sweep.points}) > 1:
        headline += f", dropout {chosen.dropout:g}"
    subline = (f"chosen by {RULES.get(sweep.rule, sweep.rule)} on {METRIC_NAMES.get(metric, metric)}; "
               f"{strategy} search, {len(sweep.points)} settings"
               + (f" × {folds} {sweep.repeats_word}" if folds > 1 else ""))
    facts = [Fact(f"{METRIC_NAMES.get(metric, metric)} at the chosen λ", pm(chosen.mean(name), chosen.se(name)),
                  f"mean ± SE over {chosen.n_done} {sweep.repeats_word}" if folds > 1
                  else "one validation split")]
    baseline = sweep.baseline(chosen.dropout)
    if baseline is not None and baseline is not chosen:
        facts.append(Fact(f"{METRIC_NAMES.get(metric, metric)} at λ = 0", pm(baseline.mean(name), baseline.se(name))))
        diff, se, wins, n = paired_difference(sweep, chosen, baseline)
        if diff is not None:
            sign = -1.0 if metric in HIGHER_IS_BETTER else 1.0
            word = "better" if sign * diff < 0 else "worse" if sign * diff > 0 else "equal"
            sure = (f"paired over {sweep.repeats_word}: chosen better in {wins} of {n}" if n > 1
                    else "one split, no error bars (use --strategy cv or --seeds for them)")
            if se:
                sure += f"; |Δ| = {abs(diff) / se:.1f} SE"
            facts.append(Fact("difference chosen − λ = 0", f"{signed(diff)}{' ± ' + fmt(se) if se else ''} ({word})",
                              sure))
    band = sweep.within_one_se()
    if band and folds > 1:
        lams = sorted({p.lam for p in band})
        facts.append(Fact("λ within 1 SE of the best", ", ".join(fmt_lambda(v) for v in lams),
                          "all of these are statistically indistinguishable from the best"))
    if test:
        shown = [f"{key.replace('_', ' ')} {fmt(test[key], 2 if key in ('bleu', 'chrf', 'ppl') else 4)}"
                 for key in ("loss", "ppl", "bits_per_character", "bleu", "chrf") if finite(test.get(key))]
        if shown:
            facts.append(Fact("final model on the test split", ", ".join(shown), "retrained with the chosen λ, "
                              "evaluated once"))
    if len(sample_chrf) == 2:
        (a_label, a), (b_label, b) = sample_chrf
        facts.append(Fact("chrF on the 5 sample sentences", f"{a_label}: {a:.1f} → {b_label}: {b:.1f}",
                          "see Samples below"))
    warning = ""
    if folds == 1 and strategy in ("grid", "halving"):
        warning = "No folds: differences between λ values have no error bars; small ones may be noise."
    return Verdict(headline, subline, facts, warning)


# A run reached its rotational equilibrium when, over the last quarter of its steps, every evaluation's angular update
# was within 20 % of the predicted one, and the run lasted at least one relaxation time of its weight norms (before
# that, a value near the prediction may be the initial rotation passing by). docs/regularization.md, "Steady state".
EQUILIBRIUM_TOLERANCE = 0.2
LAST_PART = 0.25


def relaxations(rows: list[dict[str, Any]]) -> float | None:
    """Σ_t 2·d_t over the run's steps, d_t = 1 − decay_factor (trapezoids between evaluations): how many relaxation
    times of ‖w‖² (which relaxes at rate 2·d per step) the run has lasted; None without decay factors."""
    points = [(0.0, None)] + [(float(r["step"]), 1.0 - float(r["decay_factor"])) for r in rows
                              if finite(r.get("step")) and finite(r.get("decay_factor"))]
    if len(points) < 2:
        return None
    points[0] = (0.0, points[1][1])  # before the first evaluation: its decay
    return sum((b[0] - a[0]) * (a[1] + b[1]) for a, b in zip(points, points[1:], strict=False))


def steady_finding(run: RunData) -> str | None:
    """One line: whether the run's angular update reached its predicted equilibrium (None: no diagnostics logged)."""
    rows = [r for r in run.history if finite(r.get("angle")) and finite(r.get("step"))]
    if not rows:
        return None
    mode = run.regularization.get("mode", "?")
    last_step = float(rows[-1]["step"])
    late = [r for r in rows if float(r["step"]) >= (1.0 - LAST_PART) * last_step]
    with_pred = [r for r in late if finite(r.get("angle_pred")) and r["angle_pred"] > 0]
    if not with_pred:
        why = "λ = 0" if mode == "none" or not (run.regularization.get("weight_decay") or 0) else f"mode {mode}"
        return (f"no equilibrium predicted ({why}; the prediction covers decoupled decay with Adam or heavy-ball SGD); "
                f"last angular update {fmt(rows[-1]['angle'])} rad per step")
    ratios = [r["angle"] / r["angle_pred"] for r in with_pred]
    within = all(abs(x - 1.0) <= EQUILIBRIUM_TOLERANCE for x in ratios)
    lasted = relaxations(run.history)
    long_enough = lasted is not None and lasted >= 1.0
    verdict = "reached" if within and long_enough else "not reached" if not within else "too short to tell"
    first, end = int(with_pred[0]["step"]), int(with_pred[-1]["step"])
    span = f"steps {first:,}–{end:,}" if first != end else f"step {end:,}"
    text = (f"{verdict}: over the last quarter ({span}, {len(ratios)} evaluation{'s' if len(ratios) > 1 else ''}) "
            f"the angular update was {min(ratios):.2f}–{max(ratios):.2f}× its equilibrium value "
            f"({'within' if within else 'not always within'} {EQUILIBRIUM_TOLERANCE:.0%})")
    if lasted is not None:
        text += f" after {lasted:.2g} relaxation times of the weight norm (Σ 2ηλ)"
    updates = [r["update_ratio"] / r["update_ratio_pred"] for r in with_pred
               if finite(r.get("update_ratio")) and finite(r.get("update_ratio_pred")) and r["update_ratio_pred"] > 0]
    if updates:
        text += f"; ‖u‖/‖w‖ at {statistics.median(updates):.2f}× √(2λ/η)"
    return text


def evaluations(run: RunData) -> dict[str, dict[str, Any]]:
    """eval.json's results by split (`decaylab evaluate` keys them by split)."""
    return {str(k): v for k, v in (run.eval or {}).items() if isinstance(v, dict)}


def run_verdict(run: RunData) -> Verdict:
    """The headline numbers of a single run."""
    reg = run.regularization
    mode, lam = reg.get("mode", "?"), reg.get("weight_decay")
    headline = "no weight decay" if mode == "none" else f"{mode} λ = {fmt_lambda(lam)}"
    if mode != "none" and finite(reg.get("tau_epochs")) and finite(lam):  # λ derived from the timescale τ
        headline = f"{mode} τ = {reg['tau_epochs']:g} epochs (λ = {lam:.4g})"
    extras = [f"decay set {reg.get('decay_set', '?')}"]
    if finite(reg.get("l1")) and reg["l1"] > 0:
        extras.append(f"L1 λ₁ = {reg['l1']:g}")
    dropout = (run.config.get("model") or {}).get("dropout")
    if finite(dropout):
        extras.append(f"dropout {dropout:g}")
    best = run.best
    facts = []
    if best is not None:
        last = run.history[-1]
        facts.append(Fact("best validation loss", f"{fmt(best['val_loss'])} (ppl {fmt(best.get('val_ppl'), 2)})",
                          f"epoch {best.get('epoch', 0):g} of {last.get('epoch', 0):g}; its checkpoint is kept"))
        facts.append(Fact("generalization gap there", fmt(best.get("gap")), "val − eval-mode train loss"))
        if finite(best.get("bleu")):
            facts.append(Fact("validation sample BLEU / chrF", f"{fmt(best['bleu'], 2)} / {fmt(best.get('chrf'), 2)}"))
    for split, result in evaluations(run).items():
        shown = [f"{key} {fmt(result[key], 2 if key in ('bleu', 'chrf', 'ppl') else 4)}"
                 for key in ("loss", "ppl", "bleu", "chrf") if finite(result.get(key))]
        facts.append(Fact(f"{split} split (eval.json)", ", ".join(shown)))
    steady = steady_finding(run)
    if steady is not None:
        facts.append(Fact("steady state (rotational equilibrium)", steady, "see Steady state below"))
    subline = ", ".join(extras) + f"; {len(run.history)} evaluations"
    return Verdict(headline, subline, facts)


@dataclass
class Column:
    """A table column: row key, header, digits (None: text; 0: shortest form, e.g. epochs 14 or 2.5)."""

    key: str
    header: str
    digits: int | None = 4
    numeric: bool = True


# Columns that say nothing when every row has the same value (e.g. one dropout for the whole sweep).
HIDE_WHEN_CONSTANT = ("dropout", "rung", "budget", "lr")


def cell(row: dict[str, Any], column: Column) -> dict[str, Any]:
    """Display text and sort key of one table cell."""
    value = row.get(column.key)
    if column.key == "fold" and isinstance(value, int):
        value = value + 1
    if not finite(value) or column.digits is None:
        return {"text": "–" if value is None else str(value), "sort": "" if value is None else value}
    if column.digits == 0:
        return {"text": f"{value:g}", "sort": value}
    return {"text": fmt(float(value), column.digits), "sort": value}


def table(rows: list[dict[str, Any]], columns: list[Column]) -> dict[str, Any]:
    """Headers and cells, leaving out columns that are empty in every row (or constant, for a few)."""
    used = [c for c in columns if any(r.get(c.key) is not None for r in rows)
            and not (c.key in HIDE_WHEN_CONSTANT and len({repr(r.get(c.key)) for r in rows}) < 2)]
    return {"headers": [c.header for c in used], "numeric": [c.numeric for c in used],
            "rows": [{"cells": [cell(r, c) for c in used], "mark": r.get("_mark", "")} for r in rows]}


# A τ sweep's timescale (epochs) beside λ; λ sweeps have no τ, so the column is left out.
TAU_COLUMN = Column("tau", "τ (epochs)", 0)
TRIAL_COLUMNS = [Column("trial", "trial", None, False), Column("mode", "mode", None, False), TAU_COLUMN,
                 Column("lambda", "λ", 0), Column("dropout", "dropout", 0), Column("fold", "fold", None),
                 Column("seed", "seed", None), Column("rung", "rung", None), Column("epochs", "epochs", 0),
                 Column("best_epoch", "best epoch", 0),
                 Column("best_val_loss", "best val loss"), Column("val_ppl", "val ppl", 2),
                 Column("bleu", "BLEU", 2), Column("chrf", "chrF", 2), Column("gap", "gap"),
                 Column("wall_s", "wall s", 1), Column("status", "status", None, False)]


def trials_table(sweep: SweepData) -> dict[str, Any]:
    """Every trial row, the chosen point's rows marked."""
    chosen = sweep.chosen
    rows = []
    for row in sweep.rows:
        mark = ""
        if chosen is not None and (row.get("mode"), row.get("lambda"), row.get("dropout")) == chosen.key:
            mark = "chosen"
        rows.append({**row, "tau": row.get("tau", "∞" if sweep.taus else None), "_mark": mark})
    return table(rows, TRIAL_COLUMNS)


def tau_cell(sweep: SweepData, point: Point) -> float | str | None:
    """A point's τ in epochs for a table: ∞ for the λ = 0 baseline of a τ sweep, nothing in a λ sweep."""
    if point.tau is not None:
        return point.tau
    return "∞" if sweep.taus else None


def points_table(sweep: SweepData) -> dict[str, Any]:
    """One row per setting: mean ± SE of the selection metric and the other aggregates, with the choice marked."""
    chosen, best, band = sweep.chosen, sweep.best, {p.key for p in sweep.within_one_se()}
    name = sweep.metric_field
    rows = []
    for p in sweep.points:
        marks = []
        if chosen is not None and p.key == chosen.key:
            marks.append("★ chosen")
        if best is not None and p.key == best.key:
            marks.append("lowest mean" if sweep.metric not in HIGHER_IS_BETTER else "highest mean")
        if p.key in band and sweep.repeats > 1:
            marks.append("within 1 SE")
        rows.append({"mode": p.mode, "tau": tau_cell(sweep, p), "lambda": p.lam, "dropout": p.dropout,
                     "selection": pm(p.mean(name), p.se(name)), "train_loss": p.mean("train_loss"),
                     "gap": p.mean("gap"), "bleu": p.mean("bleu"), "chrf": p.mean("chrf"), "n": p.n_done,
                     "status": p.status, "marks": ", ".join(marks),
                     "_mark": "chosen" if chosen is not None and p.key == chosen.key else ""})
    columns = [Column("mode", "mode", None, False), TAU_COLUMN, Column("lambda", "λ", 0),
               Column("dropout", "dropout", 0),
               Column("selection", f"{METRIC_NAMES.get(sweep.metric, sweep.metric)} (mean ± SE)", None),
               Column("train_loss", "train loss"), Column("gap", "gap"), Column("bleu", "BLEU", 2),
               Column("chrf", "chrF", 2), Column("n", "folds done", None), Column("status", "status", None, False),
               Column("marks", "", None, False)]
    return table(rows, columns)


HISTORY_COLUMNS = [Column("step", "step", None), Column("epoch", "epoch", 0), Column("train_loss", "train loss"),
                   Column("train_eval_loss", "train loss (eval)"), Column("val_loss", "val loss"),
                   Column("val_ppl", "val ppl", 2), Column("gap", "gap"), Column("bleu", "BLEU", 2),
                   Column("chrf", "chrF", 2), Column("decay_norm", "‖decayed‖", 3),
                   Column("nodecay_norm", "‖not decayed‖", 3), Column("lr", "lr", 0),
                   Column("wall_s", "wall s", 1)]


def history_table(run: RunData) -> dict[str, Any]:
    """Every evaluation of a run, the best one marked."""
    best = run.best
    return table([{**row, "_mark": "chosen" if row is best else ""} for row in run.history], HISTORY_COLUMNS)


SHORT_NUMBERS = {"ppl": 2, "bleu": 2, "chrf": 2, "train_wall_s": 1, "wall_s": 1}


def key_values(data: dict[str, Any]) -> list[tuple[str, str]]:
    """A flat dict as (key, formatted value) pairs, nested values left out."""
    return [(k, fmt(v, SHORT_NUMBERS.get(k, 4)) if isinstance(v, float) else str(v)) for k, v in data.items()
            if not isinstance(v, (dict, list))]
