"""The docs' tables from a results.json: `python -m experiments.lr_lambda.table PATH/results.json`."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from experiments.fits import fit_line


def _cell(p: dict[str, Any]) -> str:
    """λ* of one η (bold when it enters the fit), its seed-mean final loss; why it is left out otherwise."""
    if p["lambda_star"] is None:
        return "–"
    why = [w for w, bad in (("edge", p["edge"]), ("≥ λ = 0", not p["beats_zero"])) if bad]
    star = f"{p['lambda_star']:.2g}" if why else f"**{p['lambda_star']:.2g}**"
    return f"{star}{', ' + ', '.join(why) if why else ''} ({p['best_final_val_loss']:.3f})"


def _slope(r: dict[str, Any]) -> str:
    fit = r["fit"]
    if not math.isfinite(fit["slope"]):
        return f"– ({fit['points']} η)"
    se = f" ± {fit['slope_se']:.2f}" if math.isfinite(fit["slope_se"]) else ""
    seeds = ", ".join("–" if not math.isfinite(f["slope"]) else f"{f['slope']:+.2f}" for f in r["fit_per_seed"])
    return f"{fit['slope']:+.2f}{se}, {fit['points']} η (seeds: {seeds})"


def optima(results: dict[str, Any], optimizer: str) -> str:
    """Per η: each family's λ* (seed mean, refined) and its final validation loss, λ = 0's, the slopes."""
    families = {k: r for k, r in results["results"]["families"].items() if r["optimizer"] == optimizer}
    head = ["η", *(f"{r['label']}" for r in families.values()), "λ = 0"]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " --- |" * len(families) + " ---: |"]
    first = next(iter(families.values()))
    for i, p in enumerate(first["per_lr"]):
        zero = p["baseline"]["final_val_loss"] if p["baseline"] else math.nan
        lines.append(f"| {p['lr']:g} | " + " | ".join(_cell(r["per_lr"][i]) for r in families.values())
                     + f" | {zero:.3f} |")
    lines.append("| **slope** (predicted) | " + " | ".join(
        f"{_slope(r)} ({'none' if r['prediction'] is None else format(r['prediction'], '+.0f')})"
        for r in families.values()) + " | |")
    return "\n".join(lines)


def paired(results: dict[str, Any]) -> str:
    """The best AdamW cell against the best Adam + L2 cell on the test split, one line per seed."""
    rows = results["results"].get("paired_test") or []
    lines = ["| seed | AdamW (λ, η) | Adam + L2 (λ, η) | test loss A | test loss B | A − B | 95 % CI | p |",
             "| ---: | --- | --- | ---: | ---: | ---: | --- | ---: |"]
    for r in rows:
        a, b = r["system_a"], r["system_b"]
        lines.append(f"| {r['training_seed']} | {a['lambda']:g}, {a['lr']:g} | {b['lambda']:g}, {b['lr']:g} | "
                     f"{r['a']:.3f} | {r['b']:.3f} | {r['difference']:+.3f} | [{r['ci_low']:+.3f}, "
                     f"{r['ci_high']:+.3f}] | {r['p_value']:.3f} |")
    return "\n".join(lines)


def derived(results: dict[str, Any]) -> str:
    """What the docs read off the tables: AdamW's τ_iter = 1/(η·λ*) per η, and each family's slope without its
    smallest η (whose row may be flat) over the η the fit uses, both from the seed-mean λ*."""
    families = results["results"]["families"]
    lines = []
    if "adamw_lr" in families:
        taus = ", ".join(f"η {p['lr']:g}: {1 / (p['lr'] * p['lambda_star']):.0f}"
                         for p in families["adamw_lr"]["per_lr"] if p["lambda_star"])
        lines.append(f"AdamW τ_iter = 1/(η·λ*) in steps: {taus}")
    for r in families.values():
        points = [p for p in r["per_lr"][1:] if p["lambda_star"] is not None and not p["edge"] and p["beats_zero"]]
        if len(points) >= 2:
            fit = fit_line([math.log10(p["lr"]) for p in points], [math.log10(p["lambda_star"]) for p in points])
            lines.append(f"{r['label']}: slope without the smallest η {fit['slope']:+.2f} ({len(points)} η)")
    return "\n".join(lines)


def main(path: str) -> None:
    """Print the tables of one results.json."""
    results = json.loads(Path(path).read_text(encoding="utf-8"))
    for optimizer in ("adam", "sgd"):
        print(optima(results, optimizer), end="\n\n")
    print(paired(results), end="\n\n")
    print(derived(results), end="\n\n")
    print(results["verdict"])


if __name__ == "__main__":
    main(sys.argv[1])
