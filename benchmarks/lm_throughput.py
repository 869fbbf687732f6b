"""Decoder-LM training throughput: a nanoGPT-style loop against decaylab's Trainer step on the same GPT.

    python benchmarks/lm_throughput.py [--quick] [--threads N] [--device cpu|cuda] [--preset tiny|small|base]

Baseline: the structure of nanoGPT's `model.py` and `train.py`, written here: a GPT with a fused qkv projection,
`F.scaled_dot_product_attention(is_causal=True)`, GELU MLP, pre-LayerNorm blocks, learned positions, a tied head
producing logits at every position and `F.cross_entropy` over them; random contiguous blocks (`get_batch`);
AdamW with nanoGPT's two groups (dim >= 2 decayed), betas (0.9, 0.95), fused where torch has it; gradient
clipping at 1.0; fp32, or bf16 autocast.

Ours: `Trainer._train_step` of `model.arch=decoder` with the same sizes, the same initial weights (copied from
the baseline, the fused qkv split into query/key/value), `decay_set=matrices` (nanoGPT's rule: every tensor with
dim >= 2, embeddings included) and the same optimizer settings, on exactly the same batches. So both rows compute
the same function from the same start, and their losses agree to rounding: the ratio measures the training step.
Rows run interleaved in one process; the median over repetitions is reported. MFU uses nanoGPT's
`estimate_mfu` FLOPs per token (6N + 12·L·H·Q·T, N without the position embedding) against the matmul peak
measured in the same run.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common  # sets the OpenMP wait policy; must come before torch
import torch
import torch.nn.functional as F
from torch import nn

from decaylab.config import load_config
from decaylab.data.batching import Batch
from decaylab.training.trainer import Trainer

NAME = "lm_throughput"
GOAL = 1.0
LR, BETAS, WEIGHT_DECAY, CLIP = 6e-4, (0.9, 0.95), 0.1, 1.0


# -- the nanoGPT-style baseline (model.py's structure) --------------------------------------------------------
class CausalSelfAttention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()  # noqa: N806 (nanoGPT's names)
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, d: int, ffn: int):
        super().__init__()
        self.c_fc, self.c_proj = nn.Linear(d, ffn), nn.Linear(ffn, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(d), CausalSelfAttention(d, heads)
        self.ln_2, self.mlp = nn.LayerNorm(d), MLP(d, ffn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int, block: int, d: int, heads: int, layers: int, ffn: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(block, d)
        self.h = nn.ModuleList(Block(d, heads, ffn) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.wte.weight = self.lm_head.weight
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * layers))
            elif p.dim() >= 2:
                nn.init.normal_(p, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)


def nanogpt_optimizer(model: nn.Module, fused: bool) -> torch.optim.AdamW:
    """configure_optimizers: dim >= 2 decayed, the rest not."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=LR, betas=BETAS, fused=fused)


def copy_into_ours(gpt: GPT, ours: nn.Module) -> None:
    """The baseline's initial weights in decaylab's layout (qkv split into query/key/value)."""
    d = gpt.wte.weight.size(1)
    with torch.no_grad():
        ours.embed.weight.copy_(gpt.wte.weight)
        ours.positions.weight[: gpt.wpe.weight.size(0)].copy_(gpt.wpe.weight)
        for mine, theirs in zip(ours.blocks, gpt.h, strict=True):
            for i, name in enumerate(("query", "key", "value")):
                getattr(mine.attention, name).weight.copy_(theirs.attn.c_attn.weight[i * d : (i + 1) * d])
                getattr(mine.attention, name).bias.copy_(theirs.attn.c_attn.bias[i * d : (i + 1) * d])
            pairs = [(mine.attention.out, theirs.attn.c_proj), (mine.mlp.up, theirs.mlp.c_fc),
                     (mine.mlp.down, theirs.mlp.c_proj), (mine.attention_norm, theirs.ln_1),
                     (mine.mlp_norm, theirs.ln_2)]
            for a, b in pairs:
                a.weight.copy_(b.weight)
                a.bias.copy_(b.bias)
        ours.norm.weight.copy_(gpt.ln_f.weight)
        ours.norm.bias.copy_(gpt.ln_f.bias)


def nanogpt_flops_per_token(gpt: GPT, layers: int, heads: int, d: int, block: int) -> float:
    """nanoGPT's estimate_mfu numerator per token: 6N + 12·L·H·Q·T (N without the position embedding)."""
    n = sum(p.numel() for p in gpt.parameters()) - gpt.wpe.weight.numel()
    return 6 * n + 12 * layers * heads * (d // heads) * block


def main() -> None:
    ap = common.argument_parser(__doc__, NAME, "fewer, shorter repetitions (under a minute)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--preset", default="small", choices=["tiny", "small", "base"])
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16, help="blocks per batch")
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="steps per repetition")
    ap.add_argument("--bf16", choices=["auto", "yes", "no"], default="auto",
                    help="bf16 rows (auto: on CUDA, or on a CPU with bf16 instructions; emulated bf16 takes minutes)")
    args = ap.parse_args()
    load_before = common.loadavg()
    threads = common.setup_threads(args.threads)
    reps, steps = args.reps or (2 if args.quick else 4), args.steps or (3 if args.quick else 6)
    started = time.perf_counter()
    text = Path(tempfile.mkdtemp()) / "bible_en.txt"
    write_bible_text(text)

    def config(precision: str):
        return load_config(None, [
            f"data.name={text}", "model.arch=decoder", f"model.preset={args.preset}", "model.dropout=0.0",
            f"data.block_size={args.block}", f"model.max_positions={args.block}", f"tokenizer.vocab_size={args.vocab}",
            f"train.batch_tokens={args.block * args.batch}", "train.optimizer=adamw", f"train.lr={LR}",
            f"train.betas=[{BETAS[0]}, {BETAS[1]}]", f"train.clip_norm={CLIP}", f"train.device={args.device}",
            f"train.threads={threads}", f"train.precision={precision}", "regularization.mode=decoupled",
            f"regularization.weight_decay={WEIGHT_DECAY}", "regularization.decay_set=matrices"])

    with tempfile.TemporaryDirectory() as tmp:
        native = args.device == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported()
        precisions = ["fp32"] + (["bf16"] if args.bf16 == "yes" or (args.bf16 == "auto" and native) else [])
        base = Trainer(config("fp32"), Path(tmp) / "fp32", quiet=True)
        device, cfg = base.device, base.config.model
        vocab = base.tokenizer.get_vocab_size()
        stream = base.train_data.stream.to(device)
        generator = torch.Generator().manual_seed(0)

        def get_batch() -> tuple[torch.Tensor, torch.Tensor]:  # nanoGPT's: random contiguous blocks
            ix = torch.randint(len(stream) - args.block, (args.batch,), generator=generator)
            x = torch.stack([stream[i : i + args.block] for i in ix.tolist()])
            y = torch.stack([stream[i + 1 : i + 1 + args.block] for i in ix.tolist()])
            return x, y

        batches = [get_batch() for _ in range(2 + reps * steps)]
        as_batch = [Batch(torch.zeros(args.batch, 0, dtype=torch.long), torch.zeros(args.batch, dtype=torch.long),
                          x, y, x.numel(), torch.arange(x.numel(), device=device)) for x, y in batches]
        fused = device.type == "cuda" or hasattr(torch, "_fused_adamw_")
        rows: dict[str, Callable[[int], float]] = {}
        losses: dict[str, list[float]] = {}
        flops = 0.0
        for precision in precisions:
            torch.manual_seed(0)
            gpt = GPT(vocab, args.block, cfg.d_model, cfg.heads, cfg.layers, cfg.ffn).to(device)
            flops = nanogpt_flops_per_token(gpt, cfg.layers, cfg.heads, cfg.d_model, args.block)
            trainer = base if precision == "fp32" else Trainer(config(precision), Path(tmp) / precision,
                                                               splits=base.splits, tokenizer=base.tokenizer,
                                                               quiet=True)
            copy_into_ours(gpt, trainer.model)
            trainer.optimizer.state.clear()
            trainer.model.train()
            optimizer = nanogpt_optimizer(gpt, fused)
            dtype = torch.bfloat16 if precision == "bf16" else None

            def baseline_step(batch: tuple[torch.Tensor, torch.Tensor], gpt=gpt, optimizer=optimizer, dtype=dtype
                              ) -> float:
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    loss = gpt(*batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(gpt.parameters(), CLIP)
                optimizer.step()
                return loss.item()

            def ours_step(batch: Batch, trainer=trainer) -> float:
                return trainer._train_step(batch)[0].item()

            for name, step, data in ((f"baseline_{precision}", baseline_step, batches),
                                     (f"ours_{precision}", ours_step, as_batch)):
                losses[name] = []
                rows[name] = timed(step, data, losses[name], steps, device)
        warm, timed_s = common.interleave(rows, reps, warmup=1)
        peak = common.matmul_peak(device)
        tokens = args.batch * args.block * steps
        result: dict[str, Any] = {"rows": {}}
        for name, seconds in timed_s.items():
            rate = tokens / common.median(seconds)
            result["rows"][name] = {"tokens_per_s": rate, "seconds": seconds, "mfu": rate * flops / 1e9 / peak,
                                    "mean_loss": sum(losses[name]) / len(losses[name]),
                                    "last_loss": losses[name][-1]}
        for precision in precisions:
            ours, theirs = result["rows"][f"ours_{precision}"], result["rows"][f"baseline_{precision}"]
            ours["ratio_to_baseline"] = ours["tokens_per_s"] / theirs["tokens_per_s"]
            ours["max_abs_loss_difference"] = max(abs(a - b) for a, b in zip(
                losses[f"ours_{precision}"], losses[f"baseline_{precision}"], strict=True))
        ratio = result["rows"]["ours_fp32"]["ratio_to_baseline"]
        result.update({
            "name": NAME, "goal": GOAL, "ratio": ratio, "goal_met": ratio >= GOAL,
            "baseline": result["rows"]["baseline_fp32"], "ours": result["rows"]["ours_fp32"],
            "setup": {"preset": args.preset, "d_model": cfg.d_model, "heads": cfg.heads, "layers": cfg.layers,
                      "ffn": cfg.ffn, "vocab": vocab, "block": args.block, "batch": args.batch, "steps": steps,
                      "reps": reps, "fused_adamw": fused, "flops_per_token": flops, "matmul_peak_gflops": peak,
                      "train_tokens": len(stream)},
            "machine": common.machine_info(device, threads, load_before), "command": common.command_line(),
            "wall_s": time.perf_counter() - started,
        })
    path = common.write_result(NAME, result, args.out)
    for name, row in result["rows"].items():
        extra = (f"  {row['ratio_to_baseline']:.2f}x baseline, max |Δloss| {row['max_abs_loss_difference']:.2e}"
                 if "ratio_to_baseline" in row else "")
        print(f"{name:14s} {row['tokens_per_s']:9.0f} tok/s  MFU {row['mfu']:.1%}  loss {row['last_loss']:.4f}{extra}")
    print(f"goal ours_fp32 >= {GOAL}x the nanoGPT-style loop: {'met' if result['goal_met'] else 'NOT met'} "
          f"({ratio:.2f}x); wrote {path}")


def timed(step: Callable[[Any], float], data: list[Any], losses: list[float], steps: int,
          device: torch.device) -> Callable[[int], float]:
    """A repetition of `steps` steps over that repetition's batches (repetition 0 is the 2-step warm-up)."""
    def run(rep: int) -> float:
        chunk = data[:2] if rep == 0 else data[2 + (rep - 1) * steps : 2 + rep * steps]
        common.sync(device)
        t0 = time.perf_counter()
        values = [step(batch) for batch in chunk]
        common.sync(device)
        if rep:
            losses.extend(values)
        return time.perf_counter() - t0
    return run


def write_bible_text(path: Path) -> None:
    """The World English Bible (builtin bible-en-es's English side) as documents of one chapter each."""
    from decaylab.data.builtin import load_builtin

    chapters: dict[str, list[str]] = {}
    for pair in load_builtin("bible-en-es"):
        chapters.setdefault(pair.key.rsplit(".", 1)[0], []).append(pair.source)
    path.write_text("\n\n".join("\n".join(verses) for verses in chapters.values()) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
