"""Per dataset, one panel per regularizer: CV mean ± SE against the strength, the test loss of the models trained on
the whole training split, and the CV choices (rules min and 1-SE) and the test optimum marked."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure

from experiments.common import new_figure
from experiments.ucurve.curves import Curve

CV, TEST = "#1f77b4", "#ff7f0e"


def _label(x: float) -> str:
    return f"{x:g}"


def draw(dataset: str, arch: str, curves: list[Curve], folds: int) -> Figure:
    """A row of panels, one per curve. λ = 0 (the baseline) is drawn as dotted lines on the log-λ panels."""
    fig = new_figure(3.6 * len(curves), 3.8)
    axes = fig.subplots(1, len(curves))
    for i, (ax, curve) in enumerate(zip(axes, curves, strict=True)):
        _panel(ax, curve, folds, legend=i == 0)
    fig.suptitle(f"{dataset} ({arch}): {folds}-fold CV validation loss (mean ± SE, left axis) and test loss of "
                 "the model trained on the whole training split (right axis)", fontsize=9)
    return fig


def _panel(ax: Any, curve: Curve, folds: int, legend: bool) -> None:
    log = curve.family != "dropout"
    shown = [p for p in curve.points if p.x > 0 or not log]
    base = curve.points[0]
    ax.errorbar([p.x for p in shown], [p.cv_mean for p in shown], yerr=[p.cv_se or 0 for p in shown], fmt="o-",
                color=CV, capsize=3, ms=4, label=f"CV ({folds} folds)")
    twin = ax.twinx()
    tested = [p for p in shown if p.test_loss is not None]
    twin.plot([p.x for p in tested], [p.test_loss for p in tested], "s--", color=TEST, ms=3, label="test")
    if log:
        ax.axhline(base.cv_mean, color=CV, lw=0.8, ls=":", label="CV at λ = 0")
        if base.test_loss is not None:
            twin.axhline(base.test_loss, color=TEST, lw=0.8, ls=":", label="test at λ = 0")
        ax.set_xscale("log")
    marks = []
    for rule, marker, color in (("min", "v", "#d62728"), ("1se", "^", "#9467bd")):
        point = curve.chosen(rule)
        marks.append(f"{rule} {_label(point.x)}")
        if point.x > 0 or not log:
            ax.plot([point.x], [point.cv_mean], marker, ms=10, mfc="none", mew=2, color=color,
                    label=f"CV choice ({rule})")
    best = curve.test_optimal()
    marks.append(f"test-opt {_label(best.x)}")
    if (best.x > 0 or not log) and best.test_loss is not None:
        twin.plot([best.x], [best.test_loss], "*", ms=13, color="#2ca02c", label="test optimum")
    for axis in (ax, twin):  # absolute losses on the ticks, not an offset (+5.12) in the corner
        axis.ticklabel_format(axis="y", useOffset=False)
    ax.set_title(f"{curve.family}: " + ", ".join(marks), fontsize=8)
    ax.set_xlabel("dropout p" if not log else f"λ ({curve.family})")
    ax.set_ylabel("validation loss (nats/token)", color=CV, fontsize=8)
    twin.set_ylabel("test loss (nats/token)", color=TEST, fontsize=8)
    if legend:  # one legend for the row: the panels share their marks
        handles, labels = ax.get_legend_handles_labels()
        more, more_labels = twin.get_legend_handles_labels()
        ax.legend(handles + more, labels + more_labels, fontsize=6, loc="best")
