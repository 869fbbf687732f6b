"""`run_demo`: λ = 0 against the config's λ, paired over seeds, trained as one vectorized seed-repeated grid."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from decaylab.config import load_config
from decaylab.data.splits import load_splits
from decaylab.demo.compare import Paired, add_test_losses, paired, per_seed
from decaylab.demo.show import print_comparison, print_runs, print_samples, text_evidence
from decaylab.errors import UserError
from decaylab.report import write_report
from decaylab.sweep.api import sweep
from decaylab.ui import console as make_console

CONFIGS = Path(str(resources.files("decaylab") / "configs"))
DEMO_CONFIG = CONFIGS / "demo_lm.yaml"  # the default story: a small decoder LM that overfits 200 speeches
DEMO_SEEDS = 5  # seeds 0–4
EXPLORATION_SEEDS = "100–103"  # the seeds of the sweep that fixed λ in configs/demo_lm.yaml


@dataclass
class DemoResult:
    """What the demo printed: the per-seed lines, the paired differences and the two seed-0 runs' evidence."""

    path: Path
    lam: float
    mode: str
    decay_set: str
    seeds: list[int]
    lines: list[dict[str, Any]]
    val: Paired
    test: Paired
    lam_source: str = ""
    runs: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0


def lambda_source(config: Path, overrides: list[str]) -> str:
    """Where the compared λ came from, for the printed comparison (a λ chosen on these runs would flatter them)."""
    if Path(config) == DEMO_CONFIG and not any(o.startswith("regularization.") for o in overrides):
        return (f"fixed in {DEMO_CONFIG.name} beforehand by a separate sweep on this validation split with other "
                f"seeds ({EXPLORATION_SEEDS}; the command is in the config's comment), not chosen on these runs")
    return "as given in the config and --set; the demo did not choose it on these runs"


def run_demo(output: Path, overrides: list[str], quiet: bool = False, config: Path = DEMO_CONFIG,
             seeds: int = DEMO_SEEDS, overwrite: bool = False) -> DemoResult:
    """Train λ = 0 and the config's λ with `seeds` seeds each into the sweep folder `output`, print the paired
    comparison (validation and test), samples of the first seed's two runs, and write the sweep's report."""
    if seeds < 2:
        raise UserError(f"--seeds: the comparison needs a standard error, so at least 2 seeds (got {seeds})")
    console = make_console()
    started = time.perf_counter()
    base = load_config(config, overrides)
    reg = base.regularization
    if reg.weight_decay <= 0:
        raise UserError(f"{config}: regularization.weight_decay must be > 0 for the demo to compare it with λ = 0")
    splits = load_splits(base.data)
    unit = "documents" if base.data.kind == "text" else "pairs"
    console.print(f"[bold]decaylab demo[/bold]: {splits.origin}, {splits.sizes()} {unit}; config {config}\n"
                  f"training λ = 0 and {reg.mode} λ = {reg.weight_decay:g} ({reg.decay_set}), seeds "
                  f"{base.seed}–{base.seed + seeds - 1}, as one stacked model of {2 * seeds} replicas")
    result = sweep(base, strategy="grid", lambdas=[reg.weight_decay], modes=[reg.mode], seeds=seeds,
                   vectorized=True, final=False, output=output, quiet=quiet, overwrite=overwrite)
    rows = [dict(row) for row in result.trials]
    add_test_losses(output, rows)
    zero = [r for r in rows if r["lambda"] == 0.0]
    decayed = [r for r in rows if r["lambda"] > 0.0]
    demo = DemoResult(output, reg.weight_decay, reg.mode, reg.decay_set, sorted({r["seed"] for r in rows}),
                      per_seed(decayed, zero), paired(decayed, zero, "best_val_loss"),
                      paired(decayed, zero, "test_loss"))
    demo.lam_source = lambda_source(config, overrides)
    print_comparison(console, base, splits, demo)
    first = min(demo.seeds)
    for label, group in (("lambda-0", zero), (f"{reg.mode}-{reg.weight_decay:g}", decayed)):
        row = next(r for r in group if r["seed"] == first)
        demo.runs.append({"label": label, "row": row, **text_evidence(output / str(row["run"]), splits, base)})
    print_runs(console, demo.runs, first)
    print_samples(console, demo.runs)
    console.print(f"\nreport: {write_report(output)}")
    demo.wall_s = time.perf_counter() - started
    console.print(f"\ndemo wall time {demo.wall_s:.0f} s; sweep folder {output}/ (one run folder per trial)")
    return demo
