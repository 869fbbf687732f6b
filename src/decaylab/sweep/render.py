"""The sweep table as the CLI prints it (rich)."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def tau_text(tau: float | None) -> str:
    """τ in epochs for a table cell; the λ = 0 baseline of a τ sweep has τ = ∞."""
    return "∞" if tau is None else f"{tau:.3g}"


def render_table(summary: dict[str, Any], title: str) -> None:
    """Print the per-point table (mean ± SE), the chosen row marked, and the final test metrics."""
    from rich.console import Console
    from rich.table import Table

    chosen = summary["chosen"]
    metric = chosen["metric"]
    table = Table(title=title)
    show_dropout = len({row["dropout"] for row in summary["table"]}) > 1
    taus = (summary.get("spec") or {}).get("taus") is not None  # a τ sweep: τ beside the λ it gives
    columns = ["", "mode"] + (["τ (epochs)"] if taus else []) + ["λ"] + (["dropout"] if show_dropout else []) + [
        f"{metric} mean", "± SE", "n", "epochs", "status"]
    for column in columns:
        table.add_column(column, justify="right" if column not in ("", "mode", "status") else "left")
    digits = 4 if metric == "loss" else 2
    for row in summary["table"]:
        mark = "★" if (row["mode"], row["lambda"], row["dropout"]) == \
            (chosen["mode"], chosen["lambda"], chosen["dropout"]) else ""
        mean = _fmt(row["mean"], digits) if row["mean"] is not None else (
            f"({_fmt(row.get('partial'), digits)})" if row.get("partial") is not None else "")
        cells = [mark, row["mode"]] + ([tau_text(row.get("tau"))] if taus else []) + [f"{row['lambda']:.3g}"] + (
            [f"{row['dropout']:g}"] if show_dropout else [])
        table.add_row(*cells, mean, _fmt(row["se"], digits), str(row["n_folds"]), f"{row.get('epochs') or 0:g}",
                      row["status"])
    console = Console()
    console.print(table)
    tau = f"τ = {chosen['tau']:g} epochs, " if chosen.get("tau") is not None else ""
    dropout = f", dropout {chosen['dropout']:g}" if chosen["dropout"] is not None else ""  # None: not swept
    console.print(f"chosen: mode {chosen['mode']}, {tau}λ = {chosen['lambda']:g}{dropout} "
                  f"(rule {chosen['rule']}, metric {metric}); compute {summary['compute_s']:.0f} s", highlight=False)
    if taus and summary.get("steps_per_epoch"):
        console.print(f"λ from τ on the training split's {summary['steps_per_epoch']:.4g} steps per epoch at the peak "
                      "lr (each trial derives its own from the data it trains on)", highlight=False)
    halving = summary.get("halving")
    if halving:
        console.print(f"successive halving trained {halving['epochs_trained']:g} of {halving['epochs_full_grid']} "
                      f"epochs of the full grid ({halving['compute_fraction']:.0%}); about "
                      f"{halving['estimated_saved_s']:.0f} s saved", highlight=False)
    final = summary.get("final")
    if final and final.get("test"):
        from decaylab.evaluation.evaluate import result_line

        test = final["test"]
        if summary.get("objective"):  # an objective reports whichever test metrics it has
            line = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in test.items()
                             if k != "split")
        else:
            line = result_line(test)
        console.print(f"final model {final['run']}: test {line}", highlight=False)
