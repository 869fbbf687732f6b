"""The report's figures (matplotlib, Agg, no pyplot state): U-curve, gap, learning curves, norms, steady state."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import matplotlib
import numpy as np
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator

from decaylab.regularization.rules import RULES
from decaylab.report.collect import HIGHER_IS_BETTER, Point, RunData, SweepData, finite

# No pyplot anywhere: Figure objects render through the Agg canvas when saved, whatever backend the caller uses.

CHOSEN_COLOR = "#f2b90c"
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
         "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.25,
         "figure.dpi": 110}
METRIC_LABELS = {"best_val_loss": "validation loss (nats/token)", "bleu": "BLEU", "chrf": "chrF",
                 "gap": "generalization gap (val − train loss)"}
# viridis without its pale yellow end, so every λ stays visible on white.
LAMBDA_CMAP = ListedColormap(matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, 256)))
DROPOUT_STYLES = ("-", "-.", (0, (5, 1)), (0, (1, 1)))


def mode_color(mode: str) -> str:
    """The registered rule's colour (λ = 0 is black); a fixed one for a name the registry does not know."""
    rule = RULES.get(mode)
    return rule.color if rule is not None else f"C{sum(map(ord, mode)) % 10}"  # str hash() differs per process


def mode_label(mode: str) -> str:
    """The registered rule's legend label; the name itself for a name the registry does not know."""
    rule = RULES.get(mode)
    return rule.label if rule is not None else mode


F = TypeVar("F", bound=Callable[..., Figure])


def styled(draw: F) -> F:
    """Run a figure function inside the report's rc style (rcParams are read as artists are made)."""

    @functools.wraps(draw)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with matplotlib.rc_context(STYLE):
            return draw(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def to_png(figure: Figure, dpi: int = 130) -> bytes:
    """The figure as PNG bytes, drawn in the report's style (ticks are made at draw time and read rcParams)."""
    import io

    buffer = io.BytesIO()
    with matplotlib.rc_context(STYLE):
        figure.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return buffer.getvalue()


def new_figure(width: float, height: float) -> Figure:
    """A pyplot-free figure with constrained layout."""
    return Figure(figsize=(width, height), layout="constrained")


class LambdaAxis:
    """A log λ axis whose left edge holds λ = 0, one decade below the smallest λ > 0 and marked by a break."""

    def __init__(self, lambdas: Sequence[float]) -> None:
        positive = sorted(v for v in lambdas if v > 0)
        self.has_zero = any(v == 0 for v in lambdas)
        self.low = math.floor(math.log10(positive[0])) if positive else 0
        self.high = math.ceil(math.log10(positive[-1])) if positive else 0
        self.max = positive[-1] if positive else 1.0
        self.min = positive[0] if positive else 1.0
        self.zero = 10.0 ** (self.low - 1)

    def x(self, lam: float) -> float:
        """Where λ sits on the axis."""
        return self.zero if lam == 0 else lam

    def apply(self, ax: Any) -> None:
        """Log scale, decade ticks, the `0` tick and the axis break."""
        ax.set_xscale("log")
        ticks = [10.0 ** k for k in range(self.low, self.high + 1)]
        labels = [f"$10^{{{k}}}$" for k in range(self.low, self.high + 1)]
        left = (self.zero if self.has_zero else self.min) / 10 ** 0.35
        if self.has_zero:
            ticks, labels = [self.zero, *ticks], ["0", *labels]
            cut = math.sqrt(self.zero * 10.0 ** self.low)
            ax.axvline(cut, color="#888888", lw=0.8, ls=(0, (2, 2)), zorder=0)
            ax.text(cut, 0.0, "//", transform=ax.get_xaxis_transform(), ha="center", va="center",
                    fontsize=10, color="#555555", bbox={"fc": "white", "ec": "none", "pad": 0.5}, clip_on=False)
        ax.set_xticks(ticks, labels)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlim(left, max(self.max, 10.0 ** self.low) * 10 ** 0.35)
        ax.set_xlabel("λ (log scale; λ = 0 at the left edge)")


@dataclass
class Curve:
    """The points of one line of the U-curve: one mode at one dropout, λ > 0, sorted by λ."""

    mode: str
    dropout: float | None
    points: list[Point]

    def label(self, several_dropouts: bool) -> str:
        """The legend entry: the rule's registered label (and the dropout when several are compared)."""
        name = mode_label(self.mode)
        return f"{name}, p = {self.dropout:g}" if several_dropouts and self.dropout is not None else name


def curves(points: list[Point]) -> list[Curve]:
    """Group the λ > 0 points into one curve per (mode, dropout)."""
    found: dict[tuple[str, Any], list[Point]] = {}
    for p in points:
        if p.lam > 0:
            found.setdefault((p.mode, p.dropout), []).append(p)
    return [Curve(mode, dropout, sorted(ps, key=lambda p: p.lam)) for (mode, dropout), ps in found.items()]


def _dropout_style(dropouts: list[Any], dropout: Any) -> Any:
    return DROPOUT_STYLES[dropouts.index(dropout) % len(DROPOUT_STYLES)] if dropout in dropouts else "-"


def _plot_metric(ax: Any, sweep: SweepData, name: str, axis: LambdaAxis, with_train: bool) -> None:
    """One panel: the metric's mean ± SE per curve, the λ = 0 points, optionally the training loss."""
    dropouts = sorted({p.dropout for p in sweep.points}, key=lambda d: d or 0.0)
    several = len(dropouts) > 1
    zeros = {p.dropout: p for p in sweep.points if p.lam == 0 and p.mean(name) is not None}
    for curve in curves(sweep.points):
        pts = [p for p in curve.points if p.mean(name) is not None]
        if not pts:
            continue
        color, style = mode_color(curve.mode), _dropout_style(dropouts, curve.dropout)
        xs, ys = [p.lam for p in pts], [p.mean(name) for p in pts]
        errors = [p.se(name) or 0.0 for p in pts]
        ax.errorbar(xs, ys, yerr=errors if any(errors) else None, color=color, ls=style, marker="o", ms=4,
                    capsize=3, lw=1.6, label=curve.label(several))
        faded = [p for p in pts if p.status != "done"]
        if faded:
            ax.plot([p.lam for p in faded], [p.mean(name) for p in faded], ls="none", marker="o", ms=6,
                    mfc="white", mec=color, zorder=4)
        zero = zeros.get(curve.dropout)
        if zero is not None:  # a dotted bridge across the axis break to the shared baseline
            ax.plot([axis.zero, xs[0]], [zero.mean(name), ys[0]], color=color, ls=":", lw=1)
        if with_train:
            train = [(p.lam, p.mean("train_loss")) for p in pts if p.mean("train_loss") is not None]
            if train:
                ax.plot([t[0] for t in train], [t[1] for t in train], color=color, ls="--", lw=1, marker=".",
                        alpha=0.75)
                if zero is not None and zero.mean("train_loss") is not None:
                    ax.plot([axis.zero, train[0][0]], [zero.mean("train_loss"), train[0][1]], color=color,
                            ls=":", lw=0.8, alpha=0.6)
    for dropout, zero in zeros.items():
        label = f"λ = 0, p = {dropout:g}" if several and dropout is not None else "λ = 0 (no decay)"
        se = zero.se(name)
        ax.errorbar([axis.zero], [zero.mean(name)], yerr=[se] if se else None, color=mode_color("none"),
                    marker="s", ms=5, capsize=3, ls="none", label=label, zorder=5)
        if with_train and zero.mean("train_loss") is not None:
            ax.plot([axis.zero], [zero.mean("train_loss")], marker="s", ms=5, mfc="white",
                    mec=mode_color("none"), ls="none", zorder=5)


def _mark_choice(ax: Any, sweep: SweepData, name: str, axis: LambdaAxis, selection_panel: bool) -> None:
    """The chosen λ (a vertical line everywhere, a star and the 1-SE band on the selection metric's panel)."""
    chosen, best = sweep.chosen, sweep.best
    if chosen is not None:
        ax.axvline(axis.x(chosen.lam), color="#8a6d00", ls="--", lw=1, zorder=1)
    if not selection_panel:
        return
    if best is not None and best.se(name):
        mean, se = best.mean(name), best.se(name)
        low, high = (mean - se, mean) if sweep.metric in HIGHER_IS_BETTER else (mean, mean + se)
        ax.axhspan(low, high, color=CHOSEN_COLOR, alpha=0.18, lw=0, label="within 1 SE of the best", zorder=0)
    if best is not None and chosen is not None and best.key != chosen.key:
        ax.axvline(axis.x(best.lam), color="#888888", ls=":", lw=1, zorder=1)
        ax.plot([axis.x(best.lam)], [best.mean(name)], marker="D", ms=7, mfc="none", mec="#444444", ls="none",
                label=f"lowest mean (λ = {best.lam:g})", zorder=6)
    if chosen is not None and chosen.mean(name) is not None:
        ax.plot([axis.x(chosen.lam)], [chosen.mean(name)], marker="*", ms=17, mfc=CHOSEN_COLOR, mec="black",
                ls="none", zorder=7, label=f"chosen λ = {chosen.lam:g} ({sweep.rule})")


def _tau_axis(ax: Any, sweep: SweepData, axis: LambdaAxis) -> None:
    """A τ sweep's second axis on top: each point's timescale in epochs at the λ it gave (∞ at λ = 0)."""
    ticks = {axis.x(p.lam): f"{p.tau:g}" for p in sweep.points if p.tau is not None}
    if not ticks:
        return
    if any(p.lam == 0 for p in sweep.points):
        ticks[axis.zero] = "∞"
    top = ax.secondary_xaxis("top")
    top.set_xticks(list(ticks), list(ticks.values()))
    top.xaxis.set_minor_locator(NullLocator())
    top.set_xlabel("τ (epochs): the swept timescale that gave λ", fontsize=9)


@styled
def u_curve(sweep: SweepData) -> Figure:
    """Validation and training loss against λ, a zoom on the validation loss, BLEU/chrF when present; choice marked.

    The training loss shares the main panel so that the gap is visible; since the gap is often much larger than the
    differences between λ values, the side column repeats the validation loss on its own scale.
    """
    text = [m for m in ("bleu", "chrf") if any(p.mean(m) is not None for p in sweep.points)]
    side_metrics = ["best_val_loss", *text]
    fig = new_figure(11.0, 2.2 + 1.45 * len(side_metrics))
    grid = fig.add_gridspec(len(side_metrics), 2, width_ratios=[1.75, 1.0])
    main = fig.add_subplot(grid[:, 0])
    side = [fig.add_subplot(grid[i, 1]) for i in range(len(side_metrics))]
    axis = LambdaAxis([p.lam for p in sweep.points])
    spread = f"mean ± SE over {sweep.repeats} {sweep.repeats_word}" if sweep.repeats > 1 else \
        "one split, no error bars"
    for ax, name in [(main, "best_val_loss"), *zip(side, side_metrics, strict=True)]:
        _plot_metric(ax, sweep, name, axis, with_train=ax is main)
        _mark_choice(ax, sweep, name, axis, selection_panel=name == sweep.metric_field)
        axis.apply(ax)
        ax.set_ylabel("loss (nats/token)" if ax is main else METRIC_LABELS[name].split(" (")[0])
    main.set_title(f"validation and training loss against λ ({spread})")
    _tau_axis(main, sweep, axis)
    for ax, name in zip(side, side_metrics, strict=True):
        ax.set_title("validation loss on its own scale" if name == "best_val_loss"
                     else f"{METRIC_LABELS[name]} on the validation sample", fontsize=9)
        if ax is not side[-1]:
            ax.set_xlabel("")
    handles, labels = main.get_legend_handles_labels()
    handles += [Line2D([], [], color="#555555", lw=1.6), Line2D([], [], color="#555555", lw=1, ls="--")]
    labels += ["validation loss (best epoch)", "training loss, eval mode (same epoch)"]
    main.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, frameon=False)
    return fig


@styled
def gap_curve(sweep: SweepData) -> Figure:
    """Generalization gap (validation − eval-mode training loss at the best epoch) against λ."""
    fig = new_figure(7.5, 3.4)
    ax = fig.subplots()
    axis = LambdaAxis([p.lam for p in sweep.points])
    _plot_metric(ax, sweep, "gap", axis, with_train=False)
    _mark_choice(ax, sweep, "gap", axis, selection_panel=False)
    ax.axhline(0.0, color="#888888", lw=0.8)
    axis.apply(ax)
    ax.set_ylabel("val loss − train loss (nats/token)")
    ax.set_title("generalization gap at the best epoch (smaller = less overfitting)")
    ax.legend(loc="best", framealpha=0.9)
    return fig


def _lambda_norm(lambdas: Sequence[float]) -> LogNorm | None:
    """A log-λ colour scale over the positive λ values (None when there are none)."""
    positive = [v for v in lambdas if v > 0]
    if not positive:
        return None
    low, high = min(positive), max(positive)
    return LogNorm(low, high if high > low else low * 10)


def _color_of(lam: float, norm: LogNorm | None) -> Any:
    return mode_color("none") if lam == 0 or norm is None else LAMBDA_CMAP(float(norm(lam)))


def lambda_colors(lambdas: Sequence[float]) -> tuple[LogNorm | None, Callable[[float], Any]]:
    """The log-λ colour scale of a sweep and the colour of a λ on it (black for λ = 0), as the λ figures use."""
    norm = _lambda_norm(lambdas)
    return norm, lambda lam: _color_of(lam, norm)


def _families(sweep: SweepData) -> list[tuple[str, list[Point]]]:
    """Small-multiple panels: one per curve (mode, dropout), each with its λ = 0 baseline first."""
    several = len({p.dropout for p in sweep.points}) > 1
    panels = []
    for curve in curves(sweep.points):
        zero = sweep.baseline(curve.dropout)
        members = ([zero] if zero is not None else []) + curve.points
        panels.append((curve.label(several), members))
    if not panels and sweep.points:
        panels.append(("λ = 0", [p for p in sweep.points if p.lam == 0]))
    return panels


def _history(run: RunData, key: str) -> tuple[list[float], list[float]]:
    rows = [r for r in run.history if finite(r.get("epoch")) and finite(r.get(key))]
    return [float(r["epoch"]) for r in rows], [float(r[key]) for r in rows]


def _train_key(run: RunData) -> str:
    return "train_eval_loss" if any(finite(r.get("train_eval_loss")) for r in run.history) else "train_loss"


def _panel_grid(n: int, width: float = 4.3, height: float = 3.2) -> tuple[Figure, list[Any]]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    if n == 1:  # one panel gets the page's width instead of a third of it
        width, height = 7.5, 3.9
    fig = new_figure(width * cols + 1.0, height * rows + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


@styled
def learning_curves(sweep: SweepData) -> Figure:
    """Train and validation loss per epoch for each λ, coloured by log λ, the best epoch marked."""
    families = _families(sweep)
    fig, axes = _panel_grid(len(families))
    norm = _lambda_norm([p.lam for p in sweep.points])
    for ax, (title, members) in zip(axes, families, strict=True):
        for point in members:
            run = sweep.run_of(point)
            if run is None:
                continue
            color = _color_of(point.lam, norm)
            epochs, val = _history(run, "val_loss")
            ax.plot(epochs, val, color=color, lw=1.5)
            tx, ty = _history(run, _train_key(run))
            ax.plot(tx, ty, color=color, lw=0.9, ls="--", alpha=0.7)
            best = run.best
            if best is not None and finite(best.get("epoch")):
                ax.plot([best["epoch"]], [best["val_loss"]], marker="o", ms=6, mfc=color, mec="white", mew=1.2,
                        ls="none", zorder=5)
        ax.set_title(title)
        ax.set_xlabel("epoch")
    axes[0].set_ylabel("loss (nats/token)")
    folds = f" (the first of each λ's {sweep.repeats_word})" if sweep.repeats > 1 else ""
    fig.legend([Line2D([], [], color="#444444", lw=1.5), Line2D([], [], color="#444444", lw=0.9, ls="--"),
                Line2D([], [], marker="o", color="#444444", ls="none"),
                Line2D([], [], color=mode_color("none"), lw=1.5)],
               ["validation", "training (eval mode)", "best epoch = kept checkpoint", "λ = 0"],
               loc="outside lower center", ncol=4, frameon=False)
    fig.suptitle(f"learning curves per λ{folds}", fontsize=10)
    _colorbar(fig, axes, norm)
    return fig


def _colorbar(fig: Figure, axes: list[Any], norm: LogNorm | None) -> None:
    if norm is None:
        return
    from matplotlib.cm import ScalarMappable

    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=LAMBDA_CMAP), ax=axes, shrink=0.9, pad=0.01)
    bar.set_label("λ (log scale)")


@styled
def norm_curves(sweep: SweepData) -> Figure:
    """Norm of the decayed parameters over training, one line per λ."""
    families = _families(sweep)
    fig, axes = _panel_grid(len(families))
    norm = _lambda_norm([p.lam for p in sweep.points])
    for ax, (title, members) in zip(axes, families, strict=True):
        for point in members:
            run = sweep.run_of(point)
            if run is None:
                continue
            epochs, values = _history(run, "decay_norm")
            ax.plot(epochs, values, color=_color_of(point.lam, norm), lw=1.5)
            if values:
                ax.plot([epochs[-1]], [values[-1]], marker="o", ms=3.5, color=_color_of(point.lam, norm))
        ax.set_title(title)
        ax.set_xlabel("epoch")
    axes[0].set_ylabel("‖decayed parameters‖₂")
    fig.suptitle("norm of the decay set over training (black: λ = 0)", fontsize=10)
    _colorbar(fig, axes, norm)
    return fig


@styled
def layer_norm_bars(series: list[tuple[str, dict[str, float], str]], decayed: dict[str, bool] | None) -> Figure:
    """Final per-tensor L2 norms, one bar per series (label, norms, colour); undecayed tensors hatched."""
    names = sorted({name for _, norms, _ in series for name in norms})
    fig = new_figure(8.5, 0.9 + 0.21 * len(names) * max(1, len(series)) ** 0.5)
    ax = fig.subplots()
    height = 0.82 / max(1, len(series))
    rows = {name: len(names) - 1 - j for j, name in enumerate(names)}  # first name on top
    for i, (label, norms, color) in enumerate(series):
        offset = (len(series) - 1) / 2 * height - i * height
        values = [norms.get(name, 0.0) for name in names]
        bars = ax.barh([rows[n] + offset for n in names], values, height=height * 0.92, color=color, label=label)
        for bar, name in zip(bars, names, strict=True):
            if decayed and not decayed.get(name, True):
                bar.set_hatch("///")
                bar.set_alpha(0.5)
    top = max((v for _, norms, _ in series for v in norms.values()), default=1.0)
    if len(series) == 2:  # how much the second model's tensor shrank or grew against the first's
        first, second = series[0][1], series[1][1]
        for name in names:
            if first.get(name):
                change = 100.0 * (second.get(name, 0.0) / first[name] - 1.0)
                ax.text(max(first[name], second.get(name, 0.0)) + 0.01 * top, rows[name], f"{change:+.0f} %",
                        va="center", fontsize=7, color="#8a1c1c" if change < -0.5 else "#555555")
    ax.set_xlim(0, top * 1.12)
    ax.set_yticks([rows[n] for n in names], [n if not decayed or decayed.get(n, True) else f"{n}  (not decayed)"
                                             for n in names], fontsize=7.5)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.set_xlabel("L2 norm of the tensor in the best checkpoint")
    ax.grid(axis="y", visible=False)
    fig.legend(loc="outside lower center", ncol=len(series), frameon=False)
    ax.set_title("final per-tensor norms (hatched: outside the decay set)")
    return fig


@styled
def run_curves(run: RunData) -> Figure:
    """A single run: training / validation loss, the gap, and BLEU/chrF when evaluated."""
    has_text = any(finite(r.get("bleu")) or finite(r.get("chrf")) for r in run.history)
    fig = new_figure(11.0, 3.4)
    axes = fig.subplots(1, 3 if has_text else 2)
    ax = axes[0]
    for key, label, style in (("train_loss", "training (running, train mode)", ":"),
                              ("train_eval_loss", "training (eval mode)", "--"), ("val_loss", "validation", "-")):
        xs, ys = _history(run, key)
        if xs:
            ax.plot(xs, ys, ls=style, lw=1.5, label=label, color={"-": "C0", "--": "C1", ":": "#999999"}[style])
    best = run.best
    if best is not None and finite(best.get("epoch")):
        ax.axvline(best["epoch"], color="#8a6d00", ls="--", lw=1)
        ax.plot([best["epoch"]], [best["val_loss"]], marker="*", ms=14, mfc=CHOSEN_COLOR, mec="black", ls="none",
                label=f"best epoch {best['epoch']:g} (kept)")
    ax.set(xlabel="epoch", ylabel="loss (nats/token)", title="learning curves")
    ax.legend(loc="best", framealpha=0.9)
    xs, ys = _history(run, "gap")
    axes[1].plot(xs, ys, color="C3", lw=1.5)
    axes[1].axhline(0.0, color="#888888", lw=0.8)
    axes[1].set(xlabel="epoch", ylabel="val − train loss", title="generalization gap")
    if has_text:
        for key, color in (("bleu", "C2"), ("chrf", "C4")):
            xs, ys = _history(run, key)
            if xs:
                axes[2].plot(xs, ys, color=color, lw=1.5, marker=".", label=key.replace("chrf", "chrF").upper()
                             if key == "bleu" else "chrF")
        axes[2].set(xlabel="epoch", ylabel="score", title="greedy BLEU / chrF on validation sample")
        axes[2].legend(loc="best")
    return fig


@styled
def run_norms(run: RunData) -> Figure:
    """A single run: decayed, non-decayed and total weight norm over training."""
    fig = new_figure(10.0, 3.4)
    ax = fig.subplots()
    for key, label, color in (("decay_norm", "decayed parameters", "C0"),
                              ("nodecay_norm", "not decayed", "C1"), ("weight_norm", "all parameters", "#555555")):
        xs, ys = _history(run, key)
        if xs:
            ax.plot(xs, ys, lw=1.5, color=color, label=label)
    ax.set(xlabel="epoch", ylabel="L2 norm", title="weight norms over training")
    ax.legend(loc="best", framealpha=0.9)
    return fig


def _by_step(run: RunData, *keys: str) -> list[list[float]]:
    """Step and each of `keys` over the evaluations where all of them are numbers."""
    rows = [r for r in run.history if finite(r.get("step")) and all(finite(r.get(k)) for k in keys)]
    return [[float(r["step"]) for r in rows], *[[float(r[k]) for r in rows] for k in keys]]


@styled
def steady_state(series: list[tuple[str, RunData, Any]], norm: LogNorm | None = None) -> Figure:
    """‖u‖/‖w‖ against Defazio's steady state and the angular update against its rotational equilibrium, per run.

    `series`: (label, run, colour); solid lines are the median over the decayed matrices with their min–max band,
    dashed lines of the same colour the prediction (absent where none applies).
    """
    fig = new_figure(11.0, 3.9)
    axes = fig.subplots(1, 2)
    panels = ((axes[0], "update_ratio", "‖u‖ / ‖w‖ (u: the step direction)",
               "step direction over weight: measured vs √(2λ/η) (Defazio 2025)"),
              (axes[1], "angle", "angle between w_t and w_t+1 (rad)",
               "angular update per step vs its equilibrium (Kosson et al. 2024)"))
    for ax, key, ylabel, title in panels:
        drawn = False
        for label, run, color in series:
            xs, ys = _by_step(run, key)
            if not xs:
                continue
            drawn = True
            ax.plot(xs, ys, color=color, lw=1.5, marker=".", ms=4, label=label)
            band = _by_step(run, f"{key}_min", f"{key}_max")
            if band[0]:
                ax.fill_between(band[0], band[1], band[2], color=color, alpha=0.12, lw=0)
            px, py = _by_step(run, f"{key}_pred")
            if px:
                ax.plot(px, py, color=color, lw=1.1, ls="--")
        if drawn:
            ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, "not measured for these rules", transform=ax.transAxes, ha="center", va="center",
                    color="#777777")
        ax.set(xlabel="step", ylabel=ylabel, title=title)
    handles, labels = max((ax.get_legend_handles_labels() for ax in axes), key=lambda found: len(found[0]))
    if norm is not None and len(series) > 6:  # many λ: a colour scale instead of one legend entry each
        _colorbar(fig, list(axes), norm)
        handles, labels = [], []
    handles += [Line2D([], [], color="#555555", lw=1.1, ls="--"),
                Line2D([], [], color="#555555", lw=6, alpha=0.2)]
    labels += ["prediction (same colour)", "min–max over the decayed matrices"]
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), frameon=False)
    return fig
