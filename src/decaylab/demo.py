"""`decaylab demo`: the seed's story on real data, λ = 0 overfits, λ > 0 holds; prints the evidence."""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from importlib import resources
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from decaylab.config import load_config
from decaylab.data.splits import load_splits
from decaylab.evaluation.metrics import text_metrics
from decaylab.generation import translate
from decaylab.report import write_report
from decaylab.runfolder.load import load_trained
from decaylab.training import Trainer
from decaylab.ui import console as make_console

DEMO_CONFIG = Path(str(resources.files("decaylab") / "configs" / "demo.yaml"))
# (label, overrides): the unregularized baseline and decoupled weight decay at the demo's λ.
DEMO_RUNS = [
    ("lambda-0", ["regularization.mode=none", "regularization.weight_decay=0.0"]),
    ("lambda-decoupled", []),
]


def _show(label: str, row: dict[str, Any]) -> None:
    """Progress line of one demo run (the runs train side by side, so each line names its run)."""
    print(f"[{label}] epoch {row['epoch']:5.1f}  train {row['train_loss']:.3f}  val {row['val_loss']:.3f}  "
          f"gap {row['gap']:+.3f}  |w_decay| {row['decay_norm']:.1f}", file=sys.stderr, flush=True)


def _train_one(label: str, overrides: list[str], output: Path, quiet: bool) -> dict[str, Any]:
    """Train one demo run (in a worker process) and return its history."""
    cfg = load_config(DEMO_CONFIG, overrides)
    result = Trainer(cfg, output / label, quiet=True, on_evaluate=None if quiet else partial(_show, label)).fit()
    return {"history": result.history, "mode": cfg.regularization.mode, "lambda": cfg.regularization.weight_decay}


def run_demo(output: Path, overrides: list[str], quiet: bool = False) -> list[dict]:
    """Train the demo runs side by side into `output/<label>`, then print the comparison and sample translations."""
    console = make_console()
    started = time.perf_counter()
    base = load_config(DEMO_CONFIG, overrides)
    splits = load_splits(base.data)
    reg = base.regularization
    console.print(f"[bold]decaylab demo[/bold]: {splits.origin}, {splits.sizes()} pairs; config {DEMO_CONFIG}\n"
                  f"training λ = 0 and {reg.mode} λ = {reg.weight_decay:g} ({reg.decay_set}) side by side")
    # Two single-threaded processes train faster in total than one two-threaded run after the other.
    workers = max(1, min(len(DEMO_RUNS), os.cpu_count() or 1))
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_train_one, label, overrides + run + [f"train.threads={threads}"], output, quiet)
                   for label, run in DEMO_RUNS]
        results = [future.result() for future in futures]
    rows = []
    sample = splits.valid[: base.train.bleu_examples or 200]
    for (label, _), result in zip(DEMO_RUNS, results, strict=True):
        trained = load_trained(output / label, "best")
        hyps = translate(trained.model, trained.tokenizer, [p.source for p in sample], method="greedy",
                         device=trained.device)
        scores = text_metrics(hyps, [p.target for p in sample])
        history = result["history"]
        best = min(history, key=lambda row: row["val_loss"])
        rows.append({"label": label, "mode": result["mode"], "lambda": result["lambda"],
                     "best_val_loss": best["val_loss"], "val_ppl": best["val_ppl"], "bleu": scores.bleu,
                     "chrf": scores.chrf, "gap": best["gap"], "best_epoch": best["epoch"],
                     "final_val_loss": history[-1]["val_loss"], "final_gap": history[-1]["gap"],
                     "hyps": hyps[:3], "sample": sample[:3], "bleu_pairs": len(sample),
                     "signature": scores.bleu_signature})
    _print_table(console, rows)
    _print_samples(console, rows)
    reports = [write_report(output / label) for label, _ in DEMO_RUNS]
    console.print("\nreports: " + ", ".join(str(path) for path in reports))
    console.print(f"\ndemo wall time {time.perf_counter() - started:.0f} s; runs in {output}/")
    return rows


def _print_table(console: Console, rows: list[dict]) -> None:
    table = Table(title="validation, best checkpoint of each run")
    for column in ("run", "mode", "λ", "best val loss", "val ppl", "BLEU", "chrF", "gap", "best epoch",
                   "final val loss", "final gap"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r["label"], r["mode"], f"{r['lambda']:g}", f"{r['best_val_loss']:.4f}", f"{r['val_ppl']:.2f}",
                      f"{r['bleu']:.2f}", f"{r['chrf']:.2f}", f"{r['gap']:+.4f}", f"{r['best_epoch']:.0f}",
                      f"{r['final_val_loss']:.4f}", f"{r['final_gap']:+.4f}")
    console.print(table)
    console.print(f"BLEU/chrF: greedy, best checkpoint, first {rows[0]['bleu_pairs']} validation pairs; "
                  f"{rows[0]['signature']}")
    console.print("gap = val loss − training loss in eval mode (nats/token); a final val loss above the best "
                  "means the run overfit after its best epoch.")


def _print_samples(console: Console, rows: list[dict]) -> None:
    for i, pair in enumerate(rows[0]["sample"]):
        console.print(f"\n[bold]source[/bold]           {pair.source}\n[bold]reference[/bold]        {pair.target}",
                      highlight=False)
        for r in rows:
            console.print(f"[bold]{r['label']:<16}[/bold] {r['hyps'][i]}", highlight=False)
