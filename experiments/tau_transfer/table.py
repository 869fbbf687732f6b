"""The docs' tables from a results.json: `python -m experiments.tau_transfer.table PATH/results.json`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def curves(results: dict[str, Any], metric: str = "end") -> str:
    """Val loss (seed mean ± SE) per τ for each size (and the wide model), with λ, τ* and λ*."""
    runs = [*results["sizes"], *([results["wide"]] if "wide" in results else [])]
    lines = ["| run | steps/epoch | " + " | ".join(f"τ = {t:g}" for t in runs[0]["curve"]["taus"])
             + " | λ = 0 | τ* (epochs) | λ* |", "| --- | ---: |" + " ---: |" * (len(runs[0]["curve"]["taus"]) + 3)]
    for r in runs:
        best = r["minimum"][metric]
        se = best["se"] or [0.0] * len(best["mean"])
        cells = [f"{'**' if i == best['index'] else ''}{m:.3f}{'**' if i == best['index'] else ''} ± {e:.3f}"
                 for i, (m, e) in enumerate(zip(best["mean"], se, strict=True))]
        zero = sum(r["curve"]["zero"][metric]) / len(r["curve"]["zero"][metric])
        edge = " (edge)" if best["edge"] else ""
        lines.append(f"| {r['label']} | {r['steps_per_epoch']:.2f} | " + " | ".join(cells)
                     + f" | {zero:.3f} | {best['tau']:.3g}{edge} | {best['lambda']:.3g} |")
    lines.append("")
    lines += [f"λ of each τ, {r['label']}: " + ", ".join(f"{lam:.3g}" for lam in r["curve"]["lambdas"]) for r in runs]
    return "\n".join(lines)


def ratios(results: dict[str, Any], metric: str = "end") -> str:
    """τ*(b)/τ*(a) and λ*(b)/λ*(a) per comparison: point estimate, bootstrap 16–84 %, per seed, aligning ratio."""
    lines = ["| change | τ* ratio | 16–84 % | per seed | λ* ratio | λ fixed would give τ × | whole-curve τ ratio "
             "(RMS at 1 / at h) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, per in results["ratios"].items():
        r = per[metric]
        q = r["bootstrap"]["tau_ratio"]
        seeds = ", ".join(f"{p['tau_ratio']:.2f}" for p in r["per_seed"])
        a = r["aligning"]
        lines.append(f"| {name} | {r['tau']:.2f} | {q[1]:.2f}–{q[2]:.2f} | {seeds} | {r['lambda']:.3f} | "
                     f"{r['tau'] * r['lambda']:.3f} | {a['ratio']:.2f} ({a['rms_tau']:.3f} / {a['rms_lambda']:.3f}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    data = json.loads(Path(sys.argv[1]).read_text())
    for metric in ("end", "best"):
        print(f"\n{metric}:\n\n{curves(data['results'], metric)}\n\n{ratios(data['results'], metric)}")
    print(f"\n{data['verdict']}\nwall {data['wall_s']:.0f} s, sweeps {data['sweeps_wall_s']:.0f} s, "
          f"load {data['load_average']}")
