"""The report's data handling and figures on hand-made sweep rows (no training, milliseconds each)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
from matplotlib.image import imread

from decaylab.report import findings, plots
from decaylab.report.collect import RunData, SweepData, build_points, furthest_rows, mean_se


def row(mode: str, lam: float, fold: int | None, loss: float, gap: float = 0.1, dropout: float = 0.1,
        status: str = "done", **extra: object) -> dict:
    key = f"{mode}-{lam:g}-p{dropout:g}" + (f"-fold{fold + 1}" if fold is not None else "")
    return {"trial": key, "mode": mode, "lambda": lam, "dropout": dropout, "fold": fold, "best_val_loss": loss,
            "gap": gap, "status": status, "epochs": 3.0, "best_epoch": 2.0, **extra}


def cv_sweep(summary: dict | None = None) -> SweepData:
    """λ = 0, 1e-3, 1e-2 (decoupled), 3 folds; 1e-3 is best, 1e-2 within one SE of it."""
    losses = {0.0: [5.0, 5.2, 5.1], 1e-3: [4.8, 5.0, 4.9], 1e-2: [4.85, 5.05, 4.95]}
    rows = [row("none" if lam == 0 else "decoupled", lam, k, v, bleu=10 + 100 * lam)
            for lam, values in losses.items() for k, v in enumerate(values)]
    summary = summary or {"chosen": {"lambda": 1e-2, "mode": "decoupled", "dropout": 0.1, "rule": "1se",
                                     "metric": "loss"}}
    return SweepData(Path("s"), {"spec": {"strategy": "cv"}}, rows, summary, build_points(rows, None), {}, None)


def test_mean_and_standard_error() -> None:
    assert mean_se([]) == (None, None)
    assert mean_se([2.0]) == (2.0, None)
    mean, se = mean_se([1.0, 2.0, 3.0])
    assert mean == 2.0 and math.isclose(se, 1.0 / math.sqrt(3))


def test_points_aggregate_folds_and_derive_the_training_loss() -> None:
    sweep = cv_sweep()
    assert [(p.mode, p.lam, p.n_done) for p in sweep.points] == [("none", 0.0, 3), ("decoupled", 1e-3, 3),
                                                                   ("decoupled", 1e-2, 3)]
    best = sweep.best
    assert best is not None and best.lam == 1e-3 and math.isclose(best.mean("train_loss"), 4.9 - 0.1)
    assert sweep.chosen is not None and sweep.chosen.lam == 1e-2
    assert {p.lam for p in sweep.within_one_se()} == {1e-3, 1e-2}
    assert sweep.repeats == 3 and sweep.metric_field == "best_val_loss"


def test_paired_difference_counts_the_folds_won() -> None:
    sweep = cv_sweep()
    chosen, zero = sweep.chosen, sweep.baseline()
    diff, se, wins, n = findings.paired_difference(sweep, chosen, zero)
    assert math.isclose(diff, -0.15) and (wins, n) == (3, 3) and se is not None and se < 1e-9
    verdict = findings.sweep_verdict(sweep, {"loss": 4.0, "bleu": 12.5}, [("λ = 0", 30.0), ("chosen", 33.0)])
    assert verdict.headline == "decoupled λ = 0.01"
    values = {f.label: f.value for f in verdict.facts}
    assert values["difference chosen − λ = 0"].startswith("−0.1500") and "(better)" in values[
        "difference chosen − λ = 0"]
    assert values["λ within 1 SE of the best"] == "0.001, 0.01"
    assert values["final model on the test split"] == "loss 4.0000, bleu 12.50"


def test_higher_is_better_metrics_pick_the_maximum() -> None:
    sweep = cv_sweep({"chosen": {"lambda": 1e-2, "mode": "decoupled", "rule": "min", "metric": "bleu"}})
    assert sweep.metric_field == "bleu" and sweep.best is not None and sweep.best.lam == 1e-2


def test_halving_rows_keep_each_trials_furthest_rung_and_table_status() -> None:
    rows = [row("decoupled", 1e-3, None, 5.0, rung=0), row("decoupled", 1e-2, None, 5.5, rung=0),
            row("decoupled", 1e-3, None, 4.5, rung=1)]
    kept = furthest_rows(rows)
    assert [(r["lambda"], r["rung"]) for r in kept] == [(1e-3, 1), (1e-2, 0)]
    table = [{"lambda": 1e-2, "mode": "decoupled", "dropout": 0.1, "status": "eliminated"}]
    points = build_points(kept, table)
    assert {p.lam: p.status for p in points} == {1e-3: "done", 1e-2: "eliminated"}


def test_lambda_axis_puts_zero_one_decade_left_of_the_grid() -> None:
    axis = plots.LambdaAxis([0.0, 1e-5, 1e-3, 0.1])
    assert axis.x(0.0) == 1e-6 and axis.x(1e-3) == 1e-3
    fig = plots.new_figure(4, 3)
    ax = fig.subplots()
    axis.apply(ax)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[0] == "0" and labels[1:] == [f"$10^{{{k}}}$" for k in range(-5, 0)]
    assert ax.get_xlim()[0] < 1e-6 < 1e-5 < ax.get_xlim()[1]


def _png(figure) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    pixels = imread(io.BytesIO(buffer.getvalue()), format="png")
    assert pixels.shape[0] > 100 and float(pixels.std()) > 0.05


def test_figures_for_several_modes_and_dropouts_without_folds() -> None:
    rows = []
    for dropout in (0.0, 0.3):
        rows.append(row("none", 0.0, None, 5.0 - dropout, dropout=dropout))
        for mode in ("coupled", "l1", "decoupled"):
            rows += [row(mode, lam, None, 4.5 + abs(math.log10(lam) + 3) / 10, dropout=dropout, chrf=30.0)
                     for lam in (1e-4, 1e-3, 1e-2)]
    sweep = SweepData(Path("s"), {}, rows, {"chosen": {"lambda": 1e-3, "mode": "l1", "dropout": 0.3,
                                                       "rule": "min", "metric": "loss"}},
                      build_points(rows, None), {}, None)
    assert sweep.chosen is not None and (sweep.chosen.mode, sweep.chosen.dropout) == ("l1", 0.3)
    assert len(plots.curves(sweep.points)) == 6
    for figure in (plots.u_curve(sweep), plots.gap_curve(sweep)):
        _png(figure)
    assert findings.points_table(sweep)["rows"][0]["cells"][0]["text"] == "none"


def test_layer_norm_bars_hatch_what_is_not_decayed() -> None:
    series = [("λ = 0", {"w": 2.0, "b": 1.0}, "#222222"), ("chosen", {"w": 1.0, "b": 1.0}, "#1f77b4")]
    figure = plots.layer_norm_bars(series, {"w": True, "b": False})
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["b  (not decayed)", "w"]
    assert any(text.get_text() == "-50 %" for text in ax.texts)
    _png(figure)


@pytest.mark.parametrize("value, text", [(None, "–"), (0.0, "0.0000"), (1.23456, "1.2346"), (2e-5, "2e-05"),
                                         (float("nan"), "nan"), (12, "12")])
def test_numbers_on_the_page(value: object, text: str) -> None:
    assert findings.fmt(value) == text


def steady_run(angles: list[float], predicted: float | None, mode: str = "decoupled", decay: float = 0.01
               ) -> RunData:
    """A run whose evaluations (steps 10, 20, …) logged these angular updates against one prediction, decaying the
    weights by `decay` per step."""
    history = [{"step": 10 * (i + 1), "epoch": float(i + 1), "val_loss": 5.0, "decay_factor": 1.0 - decay,
                "angle": a, "angle_min": a / 2,
                "angle_max": 2 * a, "angle_pred": predicted, "update_ratio": 3 * a, "update_ratio_min": a,
                "update_ratio_max": 4 * a, "update_ratio_pred": None if predicted is None else 10 * predicted}
               for i, a in enumerate(angles)]
    return RunData(Path("r"), {"regularization": {"mode": mode, "weight_decay": 0.1 if predicted else 0.0}}, {},
                   history)


def test_steady_state_finding_is_about_the_last_quarter() -> None:
    # far at first, within 20 % of 0.01 over the last quarter (steps 80–100 of 100): reached
    reached = findings.steady_finding(steady_run([0.05, 0.03, 0.02, 0.015, 0.012, 0.011, 0.011, 0.0105, 0.0095,
                                                  0.0102], 0.01))
    assert reached is not None and reached.startswith("reached: over the last quarter (steps 80–100, 3 evaluations)")
    assert "0.95–1.05× its equilibrium value (within 20%) after 2 relaxation times" in reached  # 100 steps × 2 × 0.01
    assert "‖u‖/‖w‖ at 0.31× √(2λ/η)" in reached  # the median of 0.315, 0.285 and 0.306
    # one late evaluation 25 % off: not reached
    missed = findings.steady_finding(steady_run([0.05, 0.02, 0.011, 0.0125], 0.01))
    assert missed is not None and missed.startswith("not reached") and "1.10–1.25×" in missed
    # within 20 %, but 100 steps decaying by 0.001 are a fifth of the norm's relaxation time: the prediction may only
    # be passing by
    short = findings.steady_finding(steady_run([0.02, 0.015, 0.01, 0.0105], 0.01, decay=0.001))
    assert short is not None and short.startswith("too short to tell") and "after 0.08 relaxation times" in short
    none = findings.steady_finding(steady_run([0.05, 0.02], None, mode="none"))
    assert none is not None and none.startswith("no equilibrium predicted (λ = 0")
    assert findings.steady_finding(RunData(Path("r"), {}, {}, [{"step": 1, "val_loss": 1.0}])) is None
    verdict = findings.run_verdict(steady_run([0.01, 0.01], 0.01))
    assert any(f.label == "steady state (rotational equilibrium)" for f in verdict.facts)


def test_steady_state_figure_draws_measured_and_predicted_lines() -> None:
    runs = [("λ = 0", steady_run([0.05, 0.02, 0.01], None, mode="none"), "#222222"),
            ("decoupled λ = 0.1", steady_run([0.05, 0.02, 0.011], 0.01), "#1f77b4")]
    figure = plots.steady_state(runs)
    ratio, angle = figure.axes[:2]
    assert angle.get_yscale() == "log" and ratio.get_yscale() == "log"
    styles = [line.get_linestyle() for line in angle.get_lines()]
    assert styles.count("-") == 2 and styles.count("--") == 1  # two runs measured, one prediction (λ > 0)
    dashed = [line for line in angle.get_lines() if line.get_linestyle() == "--"][0]
    assert list(dashed.get_ydata()) == [0.01, 0.01, 0.01]
    _png(figure)
    many = [(f"λ = {k}", steady_run([0.02, 0.01], 0.01), f"C{k}") for k in range(8)]
    _png(plots.steady_state(many, plots.lambda_colors([0.0, 1e-3, 1e-1])[0]))  # a colour bar instead of a legend
