"""`decaylab demo`: the seed's story on real data, λ = 0 overfits, λ > 0 holds; prints the evidence.

Two stories: translation pairs with the GRU encoder-decoder (`configs/demo.yaml`), and `--lm`, language modelling
of Shakespeare's plays with the decoder-only Transformer (`configs/demo_lm.yaml`).
"""

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

from decaylab.config import Config, load_config
from decaylab.data.io import Pair
from decaylab.data.splits import Splits, load_splits
from decaylab.evaluation.evaluate import evaluate_run
from decaylab.evaluation.metrics import text_metrics
from decaylab.generation import continue_prompts, translate
from decaylab.report import write_report
from decaylab.report.samples import prompt_pairs
from decaylab.runfolder.load import load_trained
from decaylab.training import Trainer
from decaylab.ui import console as make_console

DEMO_CONFIG = Path(str(resources.files("decaylab") / "configs" / "demo.yaml"))
DEMO_LM_CONFIG = Path(str(resources.files("decaylab") / "configs" / "demo_lm.yaml"))
# (label, overrides): the unregularized baseline and decoupled weight decay at the demo's λ.
DEMO_RUNS = [
    ("lambda-0", ["regularization.mode=none", "regularization.weight_decay=0.0"]),
    ("lambda-decoupled", []),
]


def _show(label: str, row: dict[str, Any]) -> None:
    """Progress line of one demo run (the runs train side by side, so each line names its run)."""
    print(f"[{label}] epoch {row['epoch']:5.1f}  train {row['train_loss']:.3f}  val {row['val_loss']:.3f}  "
          f"gap {row['gap']:+.3f}  |w_decay| {row['decay_norm']:.1f}", file=sys.stderr, flush=True)


def _train_one(config: Path, label: str, overrides: list[str], output: Path, quiet: bool) -> dict[str, Any]:
    """Train one demo run (in a worker process) and return its history."""
    cfg = load_config(config, overrides)
    result = Trainer(cfg, output / label, quiet=True, on_evaluate=None if quiet else partial(_show, label)).fit()
    return {"history": result.history, "mode": cfg.regularization.mode, "lambda": cfg.regularization.weight_decay}


def run_demo(output: Path, overrides: list[str], quiet: bool = False, config: Path = DEMO_CONFIG) -> list[dict]:
    """Train the demo runs side by side into `output/<label>`, then print the comparison and samples."""
    console = make_console()
    started = time.perf_counter()
    base = load_config(config, overrides)
    splits = load_splits(base.data)
    reg = base.regularization
    unit = "documents" if base.data.kind == "text" else "pairs"
    console.print(f"[bold]decaylab demo[/bold]: {splits.origin}, {splits.sizes()} {unit}; config {config}\n"
                  f"training λ = 0 and {reg.mode} λ = {reg.weight_decay:g} ({reg.decay_set}) side by side")
    # Two single-threaded processes train faster in total than one two-threaded run after the other.
    workers = max(1, min(len(DEMO_RUNS), os.cpu_count() or 1))
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_train_one, config, label, overrides + run + [f"train.threads={threads}"], output,
                               quiet) for label, run in DEMO_RUNS]
        results = [future.result() for future in futures]
    rows = []
    for (label, _), result in zip(DEMO_RUNS, results, strict=True):
        history = result["history"]
        best = min(history, key=lambda row: row["val_loss"])
        row = {"label": label, "mode": result["mode"], "lambda": result["lambda"],
               "best_val_loss": best["val_loss"], "val_ppl": best["val_ppl"], "gap": best["gap"],
               "best_epoch": best["epoch"], "final_val_loss": history[-1]["val_loss"],
               "final_gap": history[-1]["gap"]}
        row.update(_text_evidence(output / label, splits, base))
        rows.append(row)
    _print_table(console, rows)
    _print_samples(console, rows)
    reports = [write_report(output / label) for label, _ in DEMO_RUNS]
    console.print("\nreports: " + ", ".join(str(path) for path in reports))
    console.print(f"\ndemo wall time {time.perf_counter() - started:.0f} s; runs in {output}/")
    return rows


def _text_evidence(run: Path, splits: Splits, base: Config) -> dict[str, Any]:
    """What the best checkpoint does to text: BLEU/chrF and sample translations of validation pairs, or (a
    language model) validation bits per character and continuations of validation prompts."""
    trained = load_trained(run, "best")
    if base.data.kind == "text":
        bpc = evaluate_run(run, "valid")["bits_per_character"]
        prompts = prompt_pairs(splits.valid, 3)
        context = base.model.max_positions if base.model.positions == "learned" else None
        whole = continue_prompts(trained.model, trained.tokenizer, [p for p, _ in prompts], max_new_tokens=40,
                                 max_context=context)
        return {"bpc": bpc, "hyps": [w[len(p):].strip() for (p, _), w in zip(prompts, whole, strict=True)],
                "sample": [Pair(p, r) for p, r in prompts]}
    sample = splits.valid[: base.train.bleu_examples or 200]
    hyps = translate(trained.model, trained.tokenizer, [p.source for p in sample], method="greedy",
                     device=trained.device)
    scores = text_metrics(hyps, [p.target for p in sample])
    return {"bleu": scores.bleu, "chrf": scores.chrf, "hyps": hyps[:3], "sample": sample[:3],
            "bleu_pairs": len(sample), "signature": scores.bleu_signature}


def _print_table(console: Console, rows: list[dict]) -> None:
    language_model = "bpc" in rows[0]
    table = Table(title="validation, best checkpoint of each run")
    text_columns = ("val bpc",) if language_model else ("BLEU", "chrF")
    for column in ("run", "mode", "λ", "best val loss", "val ppl", *text_columns, "gap", "best epoch",
                   "final val loss", "final gap"):
        table.add_column(column, justify="right")
    for r in rows:
        text = (f"{r['bpc']:.4f}",) if language_model else (f"{r['bleu']:.2f}", f"{r['chrf']:.2f}")
        table.add_row(r["label"], r["mode"], f"{r['lambda']:g}", f"{r['best_val_loss']:.4f}", f"{r['val_ppl']:.2f}",
                      *text, f"{r['gap']:+.4f}", f"{r['best_epoch']:.0f}", f"{r['final_val_loss']:.4f}",
                      f"{r['final_gap']:+.4f}")
    console.print(table)
    if language_model:
        console.print("bpc: bits per character of the whole validation split (comparable across tokenizers)")
    else:
        console.print(f"BLEU/chrF: greedy, best checkpoint, first {rows[0]['bleu_pairs']} validation pairs; "
                      f"{rows[0]['signature']}")
    console.print("gap = val loss − training loss in eval mode (nats/token); a final val loss above the best "
                  "means the run overfit after its best epoch.")


def _print_samples(console: Console, rows: list[dict]) -> None:
    first, second = ("prompt", "real text") if "bpc" in rows[0] else ("source", "reference")
    for i, pair in enumerate(rows[0]["sample"]):
        console.print(f"\n[bold]{first:<16}[/bold] {pair.source}\n[bold]{second:<16}[/bold] {pair.target}",
                      highlight=False)
        for r in rows:
            console.print(f"[bold]{r['label']:<16}[/bold] {r['hyps'][i]}", highlight=False)
