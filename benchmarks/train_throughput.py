"""Training throughput: a seed-style LSTM seq2seq loop against decaylab's Trainer step, lever by lever.

    python benchmarks/train_throughput.py [--quick] [--threads N] [--device cpu|cuda] [--rows a,b,...]

Baseline: what a user following the seed writes: an `nn.LSTM` encoder-decoder with the seed's bugs fixed (the
decoder is fed the shifted target), batches of a fixed number of sentences in random order padded to the
longest, logits over every padded position, `torch.optim.Adam(weight_decay=...)` with torch's default
(single-tensor on CPU) implementation, fp32, a plain loop. Its layers and sizes are those of decaylab's model
(bidirectional encoder, Luong general attention, tied output through a bottleneck), so both do the same useful
FLOPs per target token and the ratio measures the training pipeline, not the architecture.

Ours: `Trainer._train_step` (length-bucketed batches, padded oneDNN encoder equal to the packed run, non-pad
projection, fused AdamW) on the same examples, so every row trains on exactly the same target tokens per
repetition. Lever rows take one lever out of ours (bucketing, padded encoder, fused AdamW, non-pad projection) or
add one (bf16 autocast, torch.compile), plus ours with the GRU cell. Rows run interleaved in one process, each
with its own RNG state (so each row's training equals a run of its own); the median over repetitions is reported.
MFU = analytic useful FLOPs (real tokens only, forward + backward = 3x forward) per second / the matmul peak
measured in the same run.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common  # sets the OpenMP wait policy; must come before torch
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile

from decaylab.config import Config, RNNConfig, load_config
from decaylab.data.batching import Batch, collate
from decaylab.data.tokenizer import PAD_ID
from decaylab.evaluation.metrics import corpus_loss
from decaylab.training.trainer import Trainer

NAME = "train_throughput"
WARMUP_STEPS = 2
GOAL = 2.0
ALL_ROWS = ("baseline", "ours", "ours_no_bucketing", "ours_packed_encoder", "ours_unfused_adamw", "ours_unfused_ce",
            "ours_full_vocab_logits", "ours_sdpa_attention", "ours_bf16", "ours_packed_encoder_bf16", "ours_compile",
            "ours_gru", "ours_adaptive_softmax")
DESCRIPTIONS = {
    "baseline": "seed-style: nn.LSTM enc-dec, random padded batches, logits on pads, Adam(weight_decay), fp32",
    "ours": "decaylab Trainer step, cell lstm, fp32 (default settings)",
    "ours_no_bucketing": "ours, but the baseline's random fixed-size padded batches",
    "ours_packed_encoder": "ours, but torch's packed encoder (per-step loop) instead of the padded oneDNN one",
    "ours_unfused_adamw": "ours, but torch's default single-tensor AdamW instead of fused",
    "ours_unfused_ce": "ours, but F.cross_entropy on [N, V] logits of the non-pad rows (no fused chunked loss)",
    "ours_full_vocab_logits": "ours, but logits at every padded position + F.cross_entropy (neither output lever)",
    "ours_sdpa_attention": "ours, but attention through F.scaled_dot_product_attention (fused masked attention)",
    "ours_bf16": "ours + train.precision=bf16 (autocast)",
    "ours_packed_encoder_bf16": "ours + bf16, but torch's packed encoder",
    "ours_compile": "ours + train.compile=true (torch.compile, dynamic shapes)",
    "ours_gru": "ours with model.cell=gru",
    "ours_adaptive_softmax": "ours with model.output=adaptive (untied; a different model: no parity, no MFU)",
}


# -- the seed-style baseline ----------------------------------------------------------------------------------
class SeedSeq2Seq(nn.Module):
    """The seed's LSTM encoder-decoder as a user writes it: no packing, every position through every layer."""

    def __init__(self, cfg: RNNConfig, vocab: int):
        super().__init__()
        e, h, layers = cfg.embed_dim, cfg.hidden, cfg.layers
        between = cfg.dropout if layers > 1 else 0.0
        self.src_embed = nn.Embedding(vocab, e, padding_idx=PAD_ID)
        self.encoder = nn.LSTM(e, h // 2, layers, batch_first=True, bidirectional=True, dropout=between)
        self.tgt_embed = nn.Embedding(vocab, e, padding_idx=PAD_ID)
        self.decoder = nn.LSTM(e, h, layers, batch_first=True, dropout=between)
        self.key_proj = nn.Linear(h, h, bias=False)
        self.combine = nn.Linear(2 * h, h, bias=False)
        self.bottleneck = nn.Linear(h, e, bias=False)
        self.output = nn.Linear(e, vocab)
        self.output.weight = self.tgt_embed.weight
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] at every target position, padding included."""
        enc, (h, c) = self.encoder(self.dropout(self.src_embed(src)))
        layers, batch = self.decoder.num_layers, src.size(0)
        state = tuple(s.view(layers, 2, batch, -1).transpose(1, 2).reshape(layers, batch, -1).contiguous()
                      for s in (h, c))  # join the two directions of each layer
        dec, _ = self.decoder(self.dropout(self.tgt_embed(tgt_in)), state)
        scores = torch.bmm(dec, self.key_proj(enc).transpose(1, 2))
        scores = scores.masked_fill((src == PAD_ID).unsqueeze(1), float("-inf"))
        context = torch.bmm(torch.softmax(scores, dim=-1), enc)
        hidden = self.dropout(torch.tanh(self.combine(torch.cat([context, dec], dim=-1))))
        return self.output(self.bottleneck(hidden))


def baseline_step_fn(model: SeedSeq2Seq, lr: float, weight_decay: float) -> Callable[[Batch], float]:
    """The seed's plain loop body: forward, mean CE over non-pad targets, backward, clip, Adam step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss(ignore_index=PAD_ID)

    def step(batch: Batch) -> float:
        logits = model(batch.src, batch.tgt_in)
        loss = loss_fn(logits.view(-1, logits.size(-1)), batch.tgt_out.view(-1))
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss.item()

    return step


# -- lever switches on a Trainer ------------------------------------------------------------------------------
def unfused_token_loss(self: nn.Module, hidden: torch.Tensor, tgt_out: torch.Tensor,
                       label_smoothing: float = 0.0, target_index: torch.Tensor | None = None) -> torch.Tensor:
    """decaylab's loss before the fused lever: non-pad rows projected, then F.cross_entropy on [N, V] logits.

    (`target_index` is accepted and unused: the rows are selected by a mask, as before the lever.)
    """
    keep = tgt_out != PAD_ID
    return F.cross_entropy(self.logits(hidden[keep]).float(), tgt_out[keep], reduction="sum",
                           label_smoothing=label_smoothing)


def full_vocab_token_loss(self: nn.Module, hidden: torch.Tensor, tgt_out: torch.Tensor,
                          label_smoothing: float = 0.0, target_index: torch.Tensor | None = None) -> torch.Tensor:
    """Neither lever: logits at every padded position, F.cross_entropy with ignore_index (the seed's way)."""
    logits = self.logits(hidden)
    return F.cross_entropy(logits.flatten(0, 1).float(), tgt_out.flatten(), ignore_index=PAD_ID, reduction="sum",
                           label_smoothing=label_smoothing)


def sdpa_attention(self: nn.Module, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                   mask: torch.Tensor) -> torch.Tensor:
    """Luong dot/general attention as one `F.scaled_dot_product_attention` call (unscaled scores, boolean mask).

    Training and loss evaluation only: one query row per source (beam search's grouped rows are not handled).
    """
    return F.scaled_dot_product_attention(query, keys, values, attn_mask=mask.unsqueeze(1), scale=1.0)


def use_packed_encoder(model: nn.Module) -> None:
    """Run `model`'s encoder as before the padded lever: torch's packed run (a per-time-step loop on a CPU)."""
    model.run_encoder = model.run_encoder_packed


def unfuse_optimizer(trainer: Trainer) -> None:
    """Swap the trainer's fused AdamW for torch's default single-tensor AdamW (same groups, same decay)."""
    cfg = trainer.config.train
    trainer.optimizer = trainer.reg.optimizer(trainer.model, cfg.optimizer, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                              foreach=False)
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda _: 1.0)


# -- analytic FLOPs -------------------------------------------------------------------------------------------
def useful_flops(cfg: RNNConfig, vocab: int, lengths: list[tuple[int, int]]) -> float:
    """Matmul FLOPs of forward + backward (3x forward) over real tokens only, summed over examples."""
    gates = 4 if cfg.cell == "lstm" else 3
    e, h = cfg.embed_dim, cfg.hidden
    dirs = 2 if cfg.bidirectional else 1
    he = h // dirs
    enc_tok = sum(2 * gates * ((e if layer == 0 else h) * he + he * he) * dirs for layer in range(cfg.layers))
    dec_tok = sum(2 * gates * ((e if layer == 0 else h) * h + h * h) for layer in range(cfg.layers))
    out_dim = e if cfg.tie_embeddings and e != h else h
    per_tgt = dec_tok + 2 * out_dim * vocab + (2 * h * e if out_dim != h else 0)
    key = 2 * h * h if cfg.attention in ("general", "additive") else 0
    if cfg.attention != "none":
        per_tgt += 2 * (2 * h) * h  # combine
    total = 0.0
    for s, t in lengths:
        total += s * (enc_tok + key) + t * per_tgt
        if cfg.attention in ("dot", "general"):
            total += t * s * 4 * h  # scores and context
        elif cfg.attention == "additive":
            total += t * (2 * h * h) + t * s * 4 * h
    return 3.0 * total


def output_layer_share(cfg: RNNConfig, vocab: int, lengths: list[tuple[int, int]]) -> float:
    """Fraction of the useful FLOPs spent in the vocabulary projection."""
    out_dim = cfg.embed_dim if cfg.tie_embeddings and cfg.embed_dim != cfg.hidden else cfg.hidden
    return 3.0 * sum(t for _, t in lengths) * 2 * out_dim * vocab / useful_flops(cfg, vocab, lengths)


# -- rows -----------------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One timed variant: how it batches a repetition's examples and how it takes one step."""

    name: str
    step: Callable[[Batch], float]
    batches: Callable[[list[list[int]]], list[Batch]]
    model: nn.Module
    trainer: Trainer | None = None
    rng: list[torch.Tensor] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


def make_config(args: argparse.Namespace, *extra: str) -> Config:
    """The benchmark's run configuration (ours), with per-row overrides."""
    overrides = [
        "data.name=bible-en-es", f"data.max_examples={args.examples}", "data.max_valid_examples=300",
        "data.max_words=50", f"tokenizer.vocab_size={args.vocab}", f"model.preset={args.preset}",
        "model.cell=lstm", "model.attention=general", "model.dropout=0.1", "train.optimizer=adamw", "train.lr=0.002",
        f"train.batch_tokens={args.batch_tokens}", "train.clip_norm=1.0", f"train.threads={args.threads}",
        f"train.device={args.device}", "train.max_eval_examples=300", "regularization.mode=decoupled",
        "regularization.weight_decay=0.01", "regularization.decay_set=no_bias_norm",
    ]
    return load_config(None, overrides + list(extra))


def build_rows(args: argparse.Namespace, names: list[str], workdir: Path) -> tuple[dict[str, Row], Trainer]:
    """Construct every requested row from the same seed, data and tokenizer."""
    base = Trainer(make_config(args), workdir / "ours", quiet=True)
    data, device, cfg = base.train_data, base.device, base.config

    def bucketed(groups: list[list[int]]) -> list[Batch]:
        """Ours: the Trainer's own length-bucketed batches."""
        return [collate([data.sources[i] for i in g], [data.targets[i] for i in g]).to(device) for g in groups]

    def random_padded(groups: list[list[int]]) -> list[Batch]:
        """The seed's batching: the same examples in random order, as many batches of (nearly) equal size."""
        examples = [i for g in groups for i in g]
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(len(examples))).tolist()
        parts = torch.tensor_split(torch.tensor([examples[i] for i in order]), len(groups))
        return [collate([data.sources[i] for i in part.tolist()], [data.targets[i] for i in part.tolist()]
                        ).to(device) for part in parts]

    def trainer_row(name: str, *overrides: str) -> Row:
        trainer = base if name == "ours" else Trainer(
            make_config(args, *overrides), workdir / name, splits=base.splits, tokenizer=base.tokenizer, quiet=True)
        trainer.model.train()
        return Row(name, lambda b: trainer._train_step(b)[0].item(), bucketed, trainer.model, trainer)

    rows: dict[str, Row] = {}
    torch.manual_seed(cfg.seed)
    dropout_start = get_rng(device)  # every row draws its dropout masks from here, so they are the same masks
    for name in names:
        torch.manual_seed(cfg.seed)
        if name == "baseline":
            vocab = base.tokenizer.get_vocab_size()
            torch.manual_seed(cfg.seed)
            model = SeedSeq2Seq(cfg.model, vocab).to(device)
            rows[name] = Row(name, baseline_step_fn(model, cfg.train.lr, 0.01), random_padded, model)
        elif name == "ours":
            rows[name] = trainer_row(name)
        elif name == "ours_no_bucketing":
            row = trainer_row(name)
            row.batches = random_padded
            rows[name] = row
        elif name in ("ours_packed_encoder", "ours_packed_encoder_bf16"):
            row = trainer_row(name, *(["train.precision=bf16"] if name.endswith("bf16") else []))
            use_packed_encoder(row.model)
            rows[name] = row
        elif name == "ours_sdpa_attention":
            row = trainer_row(name)
            row.model.attention.forward = types.MethodType(sdpa_attention, row.model.attention)
            rows[name] = row
        elif name == "ours_unfused_adamw":
            row = trainer_row(name)
            unfuse_optimizer(row.trainer)
            rows[name] = row
        elif name == "ours_unfused_ce":
            row = trainer_row(name)
            row.model.token_loss = types.MethodType(unfused_token_loss, row.model)
            rows[name] = row
        elif name == "ours_full_vocab_logits":
            row = trainer_row(name)
            row.model.token_loss = types.MethodType(full_vocab_token_loss, row.model)
            rows[name] = row
        elif name == "ours_bf16":
            rows[name] = trainer_row(name, "train.precision=bf16")
        elif name == "ours_compile":
            rows[name] = trainer_row(name, "train.compile=true")
        elif name == "ours_gru":
            rows[name] = trainer_row(name, "model.cell=gru")
        elif name == "ours_adaptive_softmax":
            rows[name] = trainer_row(name, "model.output=adaptive", "model.tie_embeddings=false")
        else:
            raise SystemExit(f"--rows: unknown row {name!r} (choose from {', '.join(ALL_ROWS)})")
        rows[name].rng = dropout_start
    return rows, base


def get_rng(device: torch.device) -> list[torch.Tensor]:
    """The generator states dropout draws from on `device`."""
    return [torch.get_rng_state()] + ([torch.cuda.get_rng_state(device)] if device.type == "cuda" else [])


def set_rng(device: torch.device, states: list[torch.Tensor]) -> None:
    """Restore what `get_rng` returned."""
    torch.set_rng_state(states[0])
    if device.type == "cuda":
        torch.cuda.set_rng_state(states[1], device)


def run_rep(row: Row, batches: list[Batch], device: torch.device) -> float:
    """Train one repetition's batches on `row` with its own RNG stream; returns the seconds the steps took."""
    saved = get_rng(device)
    set_rng(device, row.rng)  # dropout masks as if the row ran alone
    common.sync(device)
    t0 = time.perf_counter()
    for batch in batches:
        row.losses.append(row.step(batch))
    common.sync(device)
    seconds = time.perf_counter() - t0
    row.rng = get_rng(device)
    set_rng(device, saved)
    return seconds


# -- profile --------------------------------------------------------------------------------------------------
CATEGORIES = {
    "gemm (mm/addmm/bmm)": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm"),
    "oneDNN LSTM kernels": ("aten::mkldnn_rnn_layer", "aten::mkldnn_rnn_layer_backward"),
    "log_softmax / NLL": ("aten::_log_softmax", "aten::_log_softmax_backward_data", "aten::nll_loss_forward",
                          "aten::nll_loss_backward"),
    "fused AdamW kernel": ("aten::_fused_adamw_", "aten::_fused_adam_"),
    "fill / zero / copy": ("aten::fill_", "aten::zero_", "aten::copy_"),
}


def profile_steps(row: Row, batches: list[Batch], device: torch.device) -> dict[str, Any]:
    """Self time per op category and the top ops over a few steps of `row`, under torch.profiler."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    saved = get_rng(device)
    set_rng(device, row.rng)
    with profile(activities=activities) as prof:
        for batch in batches:
            row.step(batch)
        common.sync(device)
    set_rng(device, saved)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    shares: dict[str, float] = {}
    for event in events:
        label = next((c for c, ops in CATEGORIES.items() if event.key in ops), "other (elementwise, autograd, ...)")
        shares[label] = shares.get(label, 0.0) + event.self_cpu_time_total
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]
    return {
        "steps": len(batches),
        "self_cpu_ms_per_step": total / 1e3 / len(batches),
        "share": {k: round(v / total, 4) for k, v in sorted(shares.items(), key=lambda kv: -kv[1])},
        "top_ops": [{"op": e.key, "calls_per_step": e.count / len(batches),
                     "self_ms_per_step": round(e.self_cpu_time_total / 1e3 / len(batches), 3),
                     "share": round(e.self_cpu_time_total / total, 4)} for e in top],
    }


def phase_times(trainer: Trainer, batches: list[Batch], device: torch.device) -> dict[str, float]:
    """Milliseconds per step in forward, backward, clip and optimizer of the Trainer step (same calls as it)."""
    cfg = trainer.config.train
    totals = {"forward": 0.0, "backward": 0.0, "clip": 0.0, "optimizer": 0.0}
    from decaylab.device import autocast

    for batch in batches:
        marks = [time.perf_counter()]
        with autocast(device, cfg.precision):
            loss = trainer.forward(batch.src, batch.src_len, batch.tgt_in, batch.tgt_out) / batch.n_tokens
        loss = loss + trainer.reg.penalty(trainer.model)
        loss.item()
        marks.append(time.perf_counter())
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        common.sync(device)
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), cfg.clip_norm, foreach=True)
        common.sync(device)
        marks.append(time.perf_counter())
        trainer.optimizer.step()
        common.sync(device)
        marks.append(time.perf_counter())
        for key, a, b in zip(totals, marks, marks[1:], strict=False):
            totals[key] += (b - a) * 1e3
    return {k: round(v / len(batches), 2) for k, v in totals.items()}


# -- main -----------------------------------------------------------------------------------------------------
def main() -> None:
    ap = common.argument_parser(__doc__, "train_throughput", "smaller repetitions (same code path, under 2 minutes)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--rows", default=",".join(ALL_ROWS), help="comma-separated subset of the rows")
    ap.add_argument("--preset", default="small", choices=["tiny", "small", "base"])
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--batch-tokens", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (default 4, quick 3)")
    ap.add_argument("--rep-batches", type=int, default=None, help="steps per repetition (default 8, quick 4)")
    ap.add_argument("--no-profile", action="store_true")
    args = ap.parse_args()
    load_before = common.loadavg()
    args.threads = common.setup_threads(args.threads)
    reps = args.reps or (3 if args.quick else 4)
    per_rep = args.rep_batches or (3 if args.quick else 6)
    # The same data (and tokenizer) in quick and full mode; more only if the repetitions need more batches
    # (~55 pairs fill a 2048-token batch).
    args.examples = max(4000, int((per_rep * reps + WARMUP_STEPS) * 75 * args.batch_tokens / 2048))
    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    if "baseline" not in names or "ours" not in names:
        raise SystemExit("--rows must include baseline and ours (the ratio compares them)")
    started = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        rows, base = build_rows(args, names, Path(tmp))
        device, cfg = base.device, base.config
        vocab = base.tokenizer.get_vocab_size()
        n_train = len(base.train_data)
        # Repetition r trains every row on the same examples: those of `per_rep` consecutive batches of the
        # Trainer's first epoch (ours steps through exactly those batches; the seed-style rows re-batch them).
        groups = base._epoch_groups(0)
        if len(groups) < per_rep * reps + WARMUP_STEPS:
            raise SystemExit(f"only {len(groups)} batches for {reps} repetitions of {per_rep} and the warm-up")
        # The warm-up repetition (first allocations, oneDNN primitive caches, compilation) is 2 steps.
        rep_groups = [groups[:WARMUP_STEPS]] + [groups[WARMUP_STEPS + r * per_rep:WARMUP_STEPS + (r + 1) * per_rep]
                                                for r in range(reps)]
        slices = [[i for g in rg for i in g] for rg in rep_groups]
        batches = {name: [row.batches(rg) for rg in rep_groups] for name, row in rows.items()}
        tokens = [sum(base.train_data.lengths[i][1] for i in s) for s in slices]
        flops = [useful_flops(cfg.model, vocab, [base.train_data.lengths[i] for i in s]) for s in slices]
        flops_gru = [useful_flops(cfg.model.model_copy(update={"cell": "gru"}), vocab,
                                  [base.train_data.lengths[i] for i in s]) for s in slices]
        peak = {"fp32": common.matmul_peak(device, torch.float32)}
        peak["bf16"] = common.matmul_peak(device, torch.bfloat16)

        def measure_peak(_: int) -> float:
            # Best-of over the whole run: a busy moment only lowers a measurement, so the max is the peak.
            for key, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                peak[key] = max(peak[key], common.matmul_peak(device, dtype, reps=4))
            return 0.0

        variants = {name: (lambda rep, row=row, name=name: run_rep(row, batches[name][rep], device))
                    for name, row in rows.items()}
        variants["_peak"] = measure_peak
        warm, timed = common.interleave(variants, reps=reps, warmup=1)

        results: dict[str, dict[str, Any]] = {}
        for name, row in rows.items():
            rates = [tokens[r + 1] / s for r, s in enumerate(timed[name])]
            f = flops_gru if name == "ours_gru" else flops
            achieved = [f[r + 1] / s / 1e9 for r, s in enumerate(timed[name])]
            padded = [sum(b.tgt_out.numel() for b in bs) for bs in batches[name]]
            results[name] = {
                "description": DESCRIPTIONS[name],
                "target_tokens_per_s": common.median(rates),
                "target_tokens_per_s_each_rep": [round(x, 1) for x in rates],
                "useful_gflops_per_s": common.median(achieved),
                "mfu_vs_fp32_peak": common.median(achieved) / peak["fp32"],
                "steps_per_rep": len(batches[name][1]),
                "target_padding_efficiency": sum(tokens) / sum(padded),
                "warmup_rep_s": round(warm[name][0], 2),
                "timed_rep_s_median": round(common.median(timed[name]), 3),
                "final_train_loss": row.losses[-1] if row.losses else None,
            }
            results[name]["mfu_vs_bf16_peak"] = common.median(achieved) / peak["bf16"]
            # MFU against the peak of the precision the row computes in
            results[name]["mfu"] = results[name]["mfu_vs_bf16_peak" if name.endswith("bf16") else "mfu_vs_fp32_peak"]
            if name == "ours_adaptive_softmax":  # the analytic FLOPs are the full softmax's: no MFU for this model
                for key in ("useful_gflops_per_s", "mfu_vs_fp32_peak", "mfu_vs_bf16_peak", "mfu"):
                    results[name][key] = None
        base_rate = results["baseline"]["target_tokens_per_s"]
        for name in rows:
            # ratio within each repetition (same load), then the median: robust to drift between repetitions
            per_rep_ratio = [timed["baseline"][r] / timed[name][r] for r in range(reps)]
            results[name]["ratio_vs_baseline"] = common.median(per_rep_ratio)
            results[name]["ratio_vs_baseline_of_medians"] = results[name]["target_tokens_per_s"] / base_rate
            reference = "ours_bf16" if name == "ours_packed_encoder_bf16" and "ours_bf16" in rows else "ours"
            if name.startswith("ours_") and name != "ours_gru":
                # how many times faster than the row it changes one lever of (< 1: the lever helps)
                results[name]["ratio_vs_ours"] = common.median([timed[reference][r] / timed[name][r]
                                                                for r in range(reps)])
                results[name]["ratio_vs"] = reference
        if "ours_compile" in rows:
            # The compiled row's warm-up repetition holds the compilation; its excess over the eager warm-up
            # is the compile cost.
            results["ours_compile"]["compile_s"] = round(warm["ours_compile"][0] - warm["ours"][0], 1)

        # Loss parity after the same steps on the same batches from the same initial weights.
        parity: dict[str, Any] = {}
        val = base.valid_eval
        for name in ("ours", "ours_packed_encoder", "ours_sdpa_attention", "ours_bf16", "ours_compile",
                     "ours_adaptive_softmax"):  # the last is another model: its loss is reported, not compared
            if name in rows:
                parity[name] = corpus_loss(rows[name].model, val, device, precision="fp32")
        if "ours_packed_encoder" in parity:  # the padded encoder computes the packed run's function
            parity["padded_vs_packed_encoder_difference"] = abs(parity["ours"] - parity["ours_packed_encoder"])
        if "ours_bf16" in parity:
            parity["bf16_relative_difference"] = abs(parity["ours_bf16"] - parity["ours"]) / parity["ours"]
            parity["bf16_within_1_percent"] = parity["bf16_relative_difference"] <= 0.01
        parity["steps"] = len(rows["ours"].losses)
        parity["val_pairs"] = len(val)

        profiles: dict[str, Any] = {}
        if not args.no_profile:
            sample = rep_groups[1][:3]
            for name in ("ours", "baseline"):
                profiles[name] = profile_steps(rows[name], rows[name].batches(sample), device)
            profiles["ours_phases_ms_per_step"] = phase_times(rows["ours"].trainer, rows["ours"].batches(sample),
                                                              device)

    ours = results["ours"]
    bf16 = results.get("ours_bf16")
    headline = {"fp32_default": ours["ratio_vs_baseline"]}
    if bf16 is not None:
        headline["bf16"] = bf16["ratio_vs_baseline"]
    lengths_all = [base.train_data.lengths[i] for s in slices[1:] for i in s]
    result = {
        "ratio": ours["ratio_vs_baseline"],
        "goal": {"ratio": GOAL, "mfu": 0.40, "ratio_met_fp32_default": ours["ratio_vs_baseline"] >= GOAL,
                 "ratio_met_bf16_with_parity": bool(bf16 is not None and bf16["ratio_vs_baseline"] >= GOAL
                                                    and parity.get("bf16_within_1_percent"))},
        "headline_ratios": headline,
        "baseline": results["baseline"],
        "ours": ours,
        "rows": results,
        "val_loss_parity": parity,
        "setup": {
            "data": f"bible-en-es, {n_train} training pairs (max_words 50); {per_rep} steps, "
                    f"{len(slices[1])} pairs per repetition",
            "vocab": vocab, "model": cfg.model.model_dump(), "batch_tokens": cfg.train.batch_tokens,
            "repetitions_timed": reps, "warmup_steps": WARMUP_STEPS, "target_tokens_per_rep": tokens[1:],
            "useful_gflop_per_target_token": useful_flops(cfg.model, vocab, lengths_all) / sum(
                t for _, t in lengths_all) / 1e9,
            "output_layer_flop_share": output_layer_share(cfg.model, vocab, lengths_all),
            "n_params": base.n_params,
        },
        "peak_gflops": peak,
        "profile": profiles,
        "machine": common.machine_info(device, args.threads, load_before),
        "command": common.command_line(),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    path = common.write_result(NAME, result, args.out)
    print(f"{'row':<24}{'tok/s':>10}{'x base':>9}{'MFU':>8}  description (MFU vs the row's precision's peak)")
    for name, r in results.items():
        mfu = "-" if r["mfu"] is None else f"{r['mfu']:.1%}"
        print(f"{name:<24}{r['target_tokens_per_s']:>10.0f}{r['ratio_vs_baseline']:>9.2f}{mfu:>8}  {r['description']}")
    if parity:
        print("val loss after the same steps:", {k: round(v, 4) if isinstance(v, float) else v
                                                  for k, v in parity.items()})
    print(f"peak GFLOP/s {peak}; load {result['machine']['loadavg_1min_before_after']}; wall {result['wall_s']} s")
    print(f"wrote {path}")
    if not math.isfinite(result["ratio"]):
        raise SystemExit("ratio is not finite")


if __name__ == "__main__":
    main()
