"""K regularization settings trained at once (`sweep --vectorized`) vs one after another, at three model sizes.

    python benchmarks/vectorized_sweep.py [--quick] [--device auto|cpu|cuda] [--k 8] [--out PATH]

Baseline: K sequential `Trainer` runs (what `decaylab sweep` does with one worker). Ours: `ReplicaGroups` (what
`sweep --vectorized` runs: on a CPU, stacks side by side, one per core; also timed as one stack)
over the same K configurations (decoupled λ log-spaced over 1e-5..1e-1 plus λ = 0). Both train the same steps
on the same bible-en-es subset from the same initial weights and evaluate once at the end; the wall time of the
whole training (evaluation included) is compared. Dropout is 0, so the final validation losses of the two must
agree to float rounding: the largest difference is reported as a correctness check, beside the training's
rounding sensitivity (how far a one-ulp change of the initial weights moves a sequential run's final loss), which
says how large "float rounding" is after that many steps.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import common  # sets the OpenMP wait policy; must come before torch
import torch

from decaylab.config import build_config, config_to_dict, load_config
from decaylab.data.splits import load_splits
from decaylab.data.tokenizer import train_tokenizer
from decaylab.device import seed_everything
from decaylab.models import build_model
from decaylab.runfolder.checkpoint import model_tensors
from decaylab.training import Trainer
from decaylab.training.replica_groups import ReplicaGroups
from decaylab.training.stacked import StackedTrainer

# (preset, vocabulary, steps full, steps quick): from launch-bound to GEMM-bound
SIZES = [("tiny", 2000, 20, 6), ("small", 4000, 12, 4), ("base", 8000, 6, 2)]


def configs(preset: str, vocab: int, steps: int, k: int, device: str, batch_tokens: int, precision: str,
            threads: int, pairs: int, eval_pairs: int = 200, lr: float = 2e-3) -> list:
    """K configurations that differ only in the decoupled λ (the first is λ = 0)."""
    base = load_config(None, [
        "data.name=bible-en-es", f"data.max_examples={pairs}", f"model.preset={preset}",
        f"tokenizer.vocab_size={vocab}", "model.dropout=0", "train.epochs=1000", f"train.max_steps={steps}",
        f"train.eval_every={steps}",
        f"train.batch_tokens={batch_tokens}", f"train.max_eval_examples={eval_pairs}", f"train.device={device}",
        f"train.precision={precision}", f"train.threads={threads}", "train.optimizer=adamw", f"train.lr={lr}"])
    lambdas = [0.0] + [float(x) for x in torch.logspace(-5, -1, k - 1).tolist()]
    out = []
    for lam in lambdas:
        raw = config_to_dict(base)
        raw["regularization"].update(mode="decoupled" if lam else "none", weight_decay=lam)
        out.append(build_config(raw))
    return out


def measure(preset: str, vocab: int, steps: int, args, device: torch.device) -> dict:
    """Seconds for K sequential runs and for one stacked run of the same K configurations."""
    cfgs = configs(preset, vocab, steps, args.k, device.type, args.batch_tokens, args.precision, args.threads,
                   args.pairs, 50 if args.quick else 200, args.lr)
    splits = load_splits(cfgs[0].data)
    tokenizer = train_tokenizer([p.source for p in splits.train] + [p.target for p in splits.train],
                                cfgs[0].tokenizer)
    seed_everything(cfgs[0].seed)
    init = model_tensors(build_model(cfgs[0].model, tokenizer.get_vocab_size()))
    work = Path(tempfile.mkdtemp(prefix="vecbench-"))
    try:
        # warm-up (CUDA context, kernels, allocator) for both paths, not timed
        Trainer(cfgs[0], work / "warm-seq", splits=splits, tokenizer=tokenizer, init_weights=init, quiet=True).fit()
        ReplicaGroups(cfgs[:2], [work / "warm-v0", work / "warm-v1"], splits=splits, tokenizer=tokenizer,
                      init_weights=init).fit()
        common.sync(device)
        t0 = time.perf_counter()
        sequential = [Trainer(c, work / f"seq{i}", splits=splits, tokenizer=tokenizer, init_weights=init,
                              quiet=True).fit().history[-1]["val_loss"] for i, c in enumerate(cfgs)]
        common.sync(device)
        baseline_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        replicas = ReplicaGroups(cfgs, [work / f"vec{i}" for i in range(len(cfgs))], splits=splits,
                                 tokenizer=tokenizer, init_weights=init).fit()
        common.sync(device)
        ours_s = time.perf_counter() - t0
        stacked = [r.history[-1]["val_loss"] for r in replicas]
        tokens = replicas[0].history[-1]["tokens_per_s"]  # every replica trains on the same tokens
        one_group_s = None
        if device.type == "cpu" and args.threads > 1:  # the same replicas as one stack (all threads on it)
            t0 = time.perf_counter()
            ReplicaGroups(common.one_stack(cfgs), [work / f"one{i}" for i in range(len(cfgs))], splits=splits,
                          tokenizer=tokenizer, init_weights=init).fit()
            one_group_s = time.perf_counter() - t0
        # How far float rounding alone moves this training: the first configuration again, from initial weights
        # changed in their last bit. A stacked-vs-sequential difference of this size is rounding, not a bug.
        nudged = Trainer(cfgs[0], work / "nudged", splits=splits, tokenizer=tokenizer,
                         init_weights=last_bit_nudge(init, cfgs[0].seed), quiet=True).fit().history[-1]["val_loss"]
        profile = profile_stack(cfgs, [work / f"prof{i}" for i in range(len(cfgs))], splits, tokenizer, init,
                                device) if args.profile else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"preset": preset, "vocab": tokenizer.get_vocab_size(), "steps": steps, "k": args.k,
            "parameters_per_replica": sum(t.numel() for t in init.values()),
            "baseline_s": round(baseline_s, 3), "ours_s": round(ours_s, 3), "ratio": round(baseline_s / ours_s, 3),
            "stacked_tokens_per_s_per_replica": round(tokens, 1),
            **({"one_group_s": round(one_group_s, 3), "one_group_ratio": round(baseline_s / one_group_s, 3)}
               if one_group_s else {}),
            "max_abs_val_loss_difference": max(abs(a - b) for a, b in zip(sequential, stacked, strict=True)),
            "rounding_sensitivity": abs(nudged - sequential[0]),
            "val_loss": {"sequential": sequential, "stacked": stacked, "sequential_nudged_first": nudged},
            **({"profile_self_time_share": profile} if profile else {})}


def last_bit_nudge(tensors: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """The tensors with every nonzero element moved by one float32 ulp up or down (a seeded random sign)."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in tensors.items():
        up = torch.rand(t.shape, generator=generator) < 0.5
        towards = torch.where(up, torch.full_like(t, float("inf")), torch.full_like(t, float("-inf")))
        out[name] = torch.where(t != 0, torch.nextafter(t, towards), t)
    return out


def profile_stack(cfgs: list, folders: list[Path], splits, tokenizer, init, device: torch.device) -> dict[str, float]:
    """Share of the stacked run's self time per operator, and per operator and input shapes (top 8 each)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        StackedTrainer(cfgs, folders, splits=splits, tokenizer=tokenizer, init_weights=init).fit()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    shares = {}
    for by_shape in (False, True):
        events = list(prof.key_averages(group_by_input_shape=by_shape))
        total = sum(getattr(e, key) for e in events) or 1.0
        for e in sorted(events, key=lambda e: getattr(e, key), reverse=True)[:8]:
            name = f"{e.key} {e.input_shapes}" if by_shape else e.key
            shares[name] = round(getattr(e, key) / total, 3)
    return shares


def main() -> None:
    ap = common.argument_parser(__doc__, "vectorized_sweep", "fewer steps and pairs (same code path)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--k", type=int, default=8, help="replicas (λ values) per stack")
    ap.add_argument("--batch-tokens", type=int, default=None, help="default: 2048 on a CPU, 8192 on a GPU")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate of every run (default 2e-3)")
    ap.add_argument("--pairs", type=int, default=None, help="bible-en-es pairs (default 2000, quick 600)")
    ap.add_argument("--steps-scale", type=float, default=1.0, help="multiply every size's steps (a GPU needs more "
                    "steps for a stable timing)")
    ap.add_argument("--sizes", default=None, help="comma list of presets to run (default: tiny,small,base)")
    ap.add_argument("--profile", action="store_true", help="also profile one stacked run per size and report "
                    "the operators' shares of its time (also per input shape)")
    ap.add_argument("--no-tf32", action="store_true", help="CUDA: turn off cuDNN's TF32 (on by default in torch), "
                    "so the sequential runs' nn.LSTM is full fp32 like the stacked GEMMs")
    args = ap.parse_args()
    load_before = common.loadavg()
    args.threads = common.setup_threads(args.threads)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    if args.no_tf32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    args.batch_tokens = args.batch_tokens or (8192 if device.type == "cuda" else 2048)
    args.pairs = args.pairs or (600 if args.quick else 2000)
    wanted = set(args.sizes.split(",")) if args.sizes else None
    rows = []
    for preset, vocab, steps, quick_steps in SIZES:
        if wanted and preset not in wanted:
            continue
        row = measure(preset, vocab, max(1, round((quick_steps if args.quick else steps) * args.steps_scale)), args,
                      device)
        rows.append(row)
        print(f"{preset:<6} V={row['vocab']:<5} {row['parameters_per_replica'] / 1e6:6.2f}M params  K={args.k}: "
              f"sequential {row['baseline_s']:7.2f} s  vectorized {row['ours_s']:7.2f} s  ratio {row['ratio']:.2f}x  "
              + (f"(one group: {row['one_group_s']:.2f} s, {row['one_group_ratio']:.2f}x)  " if "one_group_s" in row
                 else "") +
              f"(max |Δ val loss| {row['max_abs_val_loss_difference']:.1e}; a one-ulp nudge of the initial weights "
              f"moves a sequential run by {row['rounding_sensitivity']:.1e})", flush=True)
        if "profile_self_time_share" in row:
            print("       profile of the stacked run (share of self time):", flush=True)
            for op, share in row["profile_self_time_share"].items():
                print(f"         {share:5.1%}  {op}", flush=True)
    headline = max(rows, key=lambda r: r["ratio"])
    result = {
        "ratio": headline["ratio"],
        "ratio_is": f"the best of the sizes ({headline['preset']}); every size is in `sizes`",
        "goal": "GPU: >= 4x for K = 8 (issue 6 part 4); CPU: reported per size, no goal",
        "baseline": {r["preset"]: r["baseline_s"] for r in rows} | {"what": f"{args.k} sequential Trainer runs, s"},
        "ours": {r["preset"]: r["ours_s"] for r in rows} | {"what": f"ReplicaGroups of {args.k} replicas, s"},
        "sizes": rows,
        "machine": common.machine_info(device, args.threads, load_before),
        "tf32": {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32},
        "command": common.command_line(),
    }
    print(f"wrote {common.write_result('vectorized_sweep', result, args.out)}")


if __name__ == "__main__":
    main()
