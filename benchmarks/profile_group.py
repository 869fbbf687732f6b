"""What one replica group's training step spends its time on, and the GEMM rate of one core in its shapes.

    python benchmarks/profile_group.py [--arch decoder|transformer] [--replicas 4] [--steps 10] [--out PATH]

On a CPU a vectorized run trains its K replicas as stacks side by side, each in its own thread with one intra-op
thread (training/replica_groups.py); this profiles one such stack's step alone: the tiny preset of `--arch` on the
data of benchmarks/vectorized_transformer.py (2,000 bible-en-es verses, V = 2,000, 512 tokens a batch, dropout 0.1), one
intra-op thread, `--replicas` stacked replicas, forward and backward of `--steps` steps under `torch.profiler`:
the share of self time per operator, the milliseconds a step, and the step's GEMM FLOPs (counted from the shapes
torch records) against the core's measured rate for the output layer's `bmm` shape. This is a profile, not a
comparison with a baseline: docs/benchmarks.md §3d reads it.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import common  # sets the OpenMP wait policy; must come before torch
import torch
from torch.profiler import ProfilerActivity, profile
from vectorized_transformer import configs, write_text

from decaylab.data.prepare import encode_run_data, epoch_groups
from decaylab.data.splits import load_splits
from decaylab.data.tokenizer import train_tokenizer
from decaylab.models import build_model, build_stacked

GEMMS = ("aten::bmm", "aten::baddbmm", "aten::mm", "aten::addmm")


def gemm_flops(event) -> float:
    """FLOPs of one recorded GEMM call from its input shapes ([B,] M×K times [B,] K×N)."""
    shapes = [s for s in event.input_shapes if s]
    if event.key in ("aten::baddbmm", "aten::addmm"):
        shapes = shapes[1:]  # the added bias/input comes first
    (a, b) = shapes[:2]
    batch = a[0] if len(a) == 3 else 1
    return 2.0 * batch * a[-2] * a[-1] * b[-1]


def core_rate(replicas: int, rows: int, width: int, vocab: int, reps: int = 20) -> float:
    """GFLOP/s of one thread for the output layer's forward `bmm` ([R, rows, width] × [R, width, vocab])."""
    h, w = torch.randn(replicas, rows, width), torch.randn(replicas, vocab, width)
    torch.bmm(h, w.transpose(1, 2))
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.bmm(h, w.transpose(1, 2))
        best = min(best, time.perf_counter() - t0)
    return 2.0 * replicas * rows * width * vocab / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="decoder", choices=["decoder", "transformer"])
    ap.add_argument("--replicas", type=int, default=4, help="replicas in the group (default 4: K = 8 on 2 cores)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)  # as a group's worker runs
    load_before = common.loadavg()
    work = Path(tempfile.mkdtemp(prefix="profilegroup-"))
    try:
        settings = argparse.Namespace(block_size=64, pairs=2000, vocab=2000, batch_tokens=512, eval_examples=100,
                                      device="cpu", threads=1, lr=2e-3, k=args.replicas)
        text = str(write_text(settings.pairs, work / "bible-en.txt"))
        cfg = configs(args.arch, text, settings, args.steps)[0]
        splits = load_splits(cfg.data)
        tokenizer = train_tokenizer([p.source for p in splits.train] + [p.target for p in splits.train],
                                    cfg.tokenizer)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    train = encode_run_data(cfg, tokenizer, splits)[0]
    batch = train.batch(epoch_groups(cfg, train, 0)[0])
    models = []
    for seed in range(args.replicas):
        torch.manual_seed(seed)
        models.append(build_model(cfg.model, tokenizer.get_vocab_size()))
    params = {name: torch.stack([dict(m.named_parameters())[name].detach() for m in models]).requires_grad_()
              for name, _ in models[0].named_parameters()}
    generators = [torch.Generator().manual_seed(k) for k in range(args.replicas)]
    stacked = build_stacked(cfg.model, params, [cfg.model.dropout] * args.replicas, generators)
    inputs = (batch.src, batch.src_len, batch.tgt_in, batch.tgt_out)

    def step() -> None:
        for p in params.values():
            p.grad = None
        stacked(*inputs, target_index=batch.target_index).sum().backward()

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    step_ms = (time.perf_counter() - t0) / args.steps * 1e3
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(args.steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    shares = {e.key: round(e.self_cpu_time_total / total, 4) for e in sorted(
        events, key=lambda e: -e.self_cpu_time_total)[:15]}
    gemm_share = sum(e.self_cpu_time_total for e in events if e.key in GEMMS) / total
    flops = sum(gemm_flops(e) * e.count for e in prof.key_averages(group_by_input_shape=True) if e.key in GEMMS)
    flops_per_step = flops / args.steps
    width = cfg.model.d_model
    rate = core_rate(args.replicas, batch.n_tokens, width, tokenizer.get_vocab_size())
    floor_ms = flops_per_step / (rate * 1e9) * 1e3
    result = {
        # the contract's keys: how close the step is to its arithmetic floor (its GEMMs at the core's rate)
        "ratio": round(floor_ms / step_ms, 3),
        "ratio_is": "the step's GEMM FLOPs at one core's bmm rate / the measured step (1: all GEMM at full rate)",
        "goal": "none: a profile, read by docs/benchmarks.md §3d",
        "baseline": {"what": "the step's GEMM FLOPs at the core's bmm rate, ms", "ms": round(floor_ms, 2)},
        "ours": {"what": "one replica group's measured step, ms", "ms": round(step_ms, 2)},
        "arch": args.arch, "preset": "tiny", "replicas": args.replicas, "intra_op_threads": 1,
        "step_ms": round(step_ms, 2), "batch_target_tokens": batch.n_tokens,
        "self_time_share": shares, "gemm_share": round(gemm_share, 4),
        "gemm_gflop_per_step": round(flops_per_step / 1e9, 3),
        "core_bmm_gflops": round(rate, 1),
        "machine": common.machine_info(torch.device("cpu"), 1, load_before),
        "command": common.command_line(),
    }
    print(f"{args.arch}: one group of {args.replicas} replicas on one thread: {step_ms:.1f} ms a step; GEMMs "
          f"{gemm_share:.0%} of the self time, {flops_per_step / 1e9:.2f} GFLOP a step ({floor_ms:.1f} ms at the "
          f"core's {rate:.1f} GFLOP/s: {floor_ms / step_ms:.0%} of the step)")
    for name, share in list(shares.items())[:10]:
        print(f"  {share:6.1%}  {name}")
    print(f"wrote {common.write_result(f'profile_group_{args.arch}', result, args.out)}")


if __name__ == "__main__":
    main()
