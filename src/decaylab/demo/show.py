"""What the demo prints: what was compared and how sure, the first seed's two runs, and their samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from decaylab.config import Config
from decaylab.data.io import Pair
from decaylab.data.splits import Splits
from decaylab.demo.compare import BAR_SE, Paired
from decaylab.evaluation.evaluate import evaluate_run
from decaylab.evaluation.metrics import text_metrics
from decaylab.generation import continue_prompts, translate
from decaylab.models import count_parameters
from decaylab.report.collect import load_run
from decaylab.report.samples import prompt_pairs
from decaylab.runfolder.load import load_trained

SAMPLE_TEMPERATURE = 0.8  # a language model's continuations: sampled at this temperature


def describe_model(config: Config) -> str:
    """The architecture and its sizes in a few words."""
    m = config.model
    if m.arch == "rnn":
        return (f"{m.cell.upper()} encoder-decoder ({m.layers} layer(s), hidden {m.hidden}, embeddings "
                f"{m.embed_dim}, {m.attention} attention)")
    if m.arch == "transformer":
        return (f"Transformer encoder-decoder (d_model {m.d_model}, {m.encoder_layers}+{m.decoder_layers} layers, "
                f"{m.heads} heads, ffn {m.ffn})")
    return f"decoder-only Transformer LM (d_model {m.d_model}, {m.layers} layers, {m.heads} heads, ffn {m.ffn})"


def _pm(p: Paired) -> str:
    """`−0.0123 ± 0.0040 (−3.1 SE), λ > 0 lower in 5 of 5 seeds`."""
    if p.mean is None:
        return "no finished pairs"
    se = f" ± {p.se:.4f} ({p.ses:+.1f} SE)" if p.se else " (no SE)"
    return f"{p.mean:+.4f}{se}, λ > 0 lower in {p.wins} of {p.n} seeds"


def _bar(p: Paired) -> str:
    return "meets" if p.meets_bar else "does NOT meet"


def print_comparison(console: Console, base: Config, splits: Splits, demo: Any) -> None:
    """The per-seed table and the two paired differences, saying exactly what was compared."""
    unit = "documents" if base.data.kind == "text" else "pairs"
    t, d = base.train, base.data
    block = f", blocks of {d.block_size} tokens" if d.kind == "text" else ""
    console.print(
        f"\n[bold]compared[/bold]: {describe_model(base)}, trained on {len(splits.train):,} {unit} of "
        f"{d.name}{block} for {t.epochs} epochs ({t.optimizer}, lr {t.lr:g}, {t.schedule} schedule), with λ = 0 "
        f"against {demo.mode} λ = {demo.lam:g} on the decay set {demo.decay_set}; seeds "
        f"{', '.join(str(s) for s in demo.seeds)} (a seed draws the initial weights, the same for both λ; the "
        f"split and the batch order are the same for every run). Each run keeps its best checkpoint: its lowest "
        f"validation loss over {t.epochs} evaluations.", highlight=False)
    table = Table(title="best checkpoint of each run, nats per token (Δ = λ > 0 minus λ = 0)")
    for column in ("seed", "val λ=0 (epoch)", f"val λ={demo.lam:g} (epoch)", "Δ val", "test λ=0",
                   f"test λ={demo.lam:g}", "Δ test"):
        table.add_column(column, justify="right")
    for r in demo.lines:
        table.add_row(str(r["seed"]), f"{r['val_0']:.4f} ({r['epoch_0']:.0f})",
                      f"{r['val_l']:.4f} ({r['epoch_l']:.0f})", f"{r['val_diff']:+.4f}",
                      f"{r['test_0']:.4f}", f"{r['test_l']:.4f}", f"{r['test_diff']:+.4f}")
    console.print(table)
    console.print(f"validation, paired over seeds: Δ = {_pm(demo.val)}: {_bar(demo.val)} the bar (Δ ≤ −{BAR_SE:g} SE). "
                  f"λ = {demo.lam:g}: {demo.lam_source}.", highlight=False)
    console.print(f"test, paired over seeds: Δ = {_pm(demo.test)}: {_bar(demo.test)} the bar. The test split "
                  f"({len(splits.test):,} {unit}) chose nothing: neither λ nor any checkpoint.", highlight=False)


def text_evidence(run: Path, splits: Splits, base: Config) -> dict[str, Any]:
    """What the best checkpoint does to text: validation bits per character and continuations of validation
    prompts (a language model), or BLEU/chrF and translations of validation pairs."""
    trained = load_trained(run, "best")
    evidence: dict[str, Any] = {"parameters": count_parameters(trained.model), "final": load_run(run).history[-1]}
    if base.data.kind == "text":
        bpc = evaluate_run(run, "valid")["bits_per_character"]
        prompts = prompt_pairs(splits.valid, 3)
        context = base.model.max_positions if base.model.positions == "learned" else None
        # Sampled, not greedy: a tiny LM's greedy continuation is one word repeated, whatever its loss. The same
        # seed for both runs, so they draw the same random numbers.
        whole = continue_prompts(trained.model, trained.tokenizer, [p for p, _ in prompts], max_new_tokens=40,
                                 method="sample", temperature=SAMPLE_TEMPERATURE, seed=base.seed,
                                 max_context=context)
        return {**evidence, "bpc": bpc, "hyps": [w[len(p):].strip() for (p, _), w in zip(prompts, whole, strict=True)],
                "sample": [Pair(p, r) for p, r in prompts]}
    sample = splits.valid[: base.train.bleu_examples or 200]
    hyps = translate(trained.model, trained.tokenizer, [p.source for p in sample], method="greedy",
                     device=trained.device)
    scores = text_metrics(hyps, [p.target for p in sample])
    return {**evidence, "bleu": scores.bleu, "chrf": scores.chrf, "hyps": hyps[:3], "sample": sample[:3],
            "bleu_pairs": len(sample), "signature": scores.bleu_signature}


def print_runs(console: Console, runs: list[dict[str, Any]], seed: int) -> None:
    """The first seed's two runs side by side: best checkpoint, text metrics, gap, and how far each overfit."""
    language_model = "bpc" in runs[0]
    table = Table(title=f"seed {seed}: the two runs whose samples follow (validation, best checkpoint)")
    text_columns = ("val bpc",) if language_model else ("BLEU", "chrF")
    for column in ("run", "parameters", "best val loss", "val ppl", *text_columns, "gap", "best epoch",
                   "final val loss", "final gap"):
        table.add_column(column, justify="right")
    for r in runs:
        row, final = r["row"], r["final"]
        text = (f"{r['bpc']:.4f}",) if language_model else (f"{r['bleu']:.2f}", f"{r['chrf']:.2f}")
        table.add_row(r["label"], f"{r['parameters']:,}", f"{row['best_val_loss']:.4f}", f"{row['val_ppl']:.2f}",
                      *text, f"{row['gap']:+.4f}", f"{row['best_epoch']:.0f}", f"{final['val_loss']:.4f}",
                      f"{final['gap']:+.4f}")
    console.print(table)
    if language_model:
        console.print("bpc: bits per character of the whole validation split (comparable across tokenizers); "
                      f"the continuations below are sampled (temperature {SAMPLE_TEMPERATURE:g}, seed {seed})")
    else:
        console.print(f"BLEU/chrF: greedy, best checkpoint, first {runs[0]['bleu_pairs']} validation pairs; "
                      f"{runs[0]['signature']}")
    console.print("gap = val loss − training loss in eval mode (nats/token); a final val loss above the best "
                  "means the run overfit after its best epoch.")


def print_samples(console: Console, runs: list[dict[str, Any]]) -> None:
    """The same validation prompts (sources) continued (translated) by both runs."""
    first, second = ("prompt", "real text") if "bpc" in runs[0] else ("source", "reference")
    for i, pair in enumerate(runs[0]["sample"]):
        console.print(f"\n[bold]{first:<16}[/bold] {pair.source}\n[bold]{second:<16}[/bold] {pair.target}",
                      highlight=False)
        for r in runs:
            console.print(f"[bold]{r['label']:<16}[/bold] {r['hyps'][i]}", highlight=False)
