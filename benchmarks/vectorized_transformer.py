"""K regularization settings of a Transformer trained at once (`sweep --vectorized`) vs one after another.

    python benchmarks/vectorized_transformer.py [--quick] [--device auto|cpu|cuda] [--k 8]
        [--archs transformer,decoder] [--batch-tokens N] [--steps N] [--reps N] [--replica-groups N] [--out PATH]

For each architecture (the encoder-decoder `model.arch=transformer` on bible-en-es pairs, the decoder-only LM
`model.arch=decoder` on the English side of the same verses written as a .txt), at the tiny preset:
- Baseline: K sequential `Trainer` runs (what `decaylab sweep` does with one worker). Ours: `ReplicaGroups` (what
  `sweep --vectorized` runs: on a CPU, stacks side by side, one per core; also timed as one stack in the same
  process) over the same K configurations (λ = 0 plus decoupled λ log-spaced over 1e-5..1e-1). Same steps, same data,
  same initial weights, one evaluation at the end (40 steps and 2 × 100 examples scored: about the proportion of
  one epoch's steps to its evaluation in a sweep of these 2,000 verses at 512 tokens a batch, ~130 steps to
  2 × 200 examples); the wall time of the whole training (setup and evaluation included, as a sweep pays them per
  trial) is compared, both sides repeated in alternating order (median), and the process's CPU time beside it.
  Dropout stays at the preset's 0.1: on the CPU each replica draws its sequential run's masks
  (models/stacked_transformer.py), so the final validation losses must agree to float rounding; the largest
  difference is reported beside the training's rounding sensitivity (how far a one-ulp change of the initial
  weights moves a sequential run).
- The design choice, measured in the same process: one training step's forward and backward of K replicas as
  K single models, as `torch.func.vmap` over `functional_call` (the model-ensembling recipe; the fused loss over
  the K stacked replicas after it), and as the batched-weights stacked model the engine uses.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import common  # sets the OpenMP wait policy; must come before torch
import torch
from vectorized_sweep import last_bit_nudge

from decaylab.config import build_config, config_to_dict, load_config
from decaylab.data.prepare import encode_run_data, epoch_groups
from decaylab.data.splits import load_splits
from decaylab.data.tokenizer import train_tokenizer
from decaylab.device import seed_everything
from decaylab.models import build_model, build_stacked
from decaylab.models.fused_loss import stacked_linear_cross_entropy
from decaylab.runfolder.checkpoint import model_tensors
from decaylab.training import Trainer
from decaylab.training.replica_groups import ReplicaGroups

ARCHS = ("transformer", "decoder")


def write_text(pairs: int, path: Path) -> Path:
    """The English side of the first `pairs` bible-en-es verses as a .txt: ten verses per document."""
    splits = load_splits(load_config(None, ["data.name=bible-en-es", f"data.max_examples={pairs}"]).data)
    verses = [p.source for p in splits.train + splits.valid + splits.test]
    documents = [" ".join(verses[i:i + 10]) for i in range(0, len(verses), 10)]
    path.write_text("\n\n".join(documents) + "\n", encoding="utf-8")
    return path


def configs(arch: str, data: str, args, steps: int) -> list:
    """K configurations of `arch` at the tiny preset that differ only in the decoupled λ (the first is λ = 0)."""
    data_overrides = ([f"data.name={data}", f"data.block_size={args.block_size}"] if arch == "decoder" else
                      ["data.name=bible-en-es", f"data.max_examples={args.pairs}"])
    base = load_config(None, [
        *data_overrides, f"model.arch={arch}", "model.preset=tiny", f"tokenizer.vocab_size={args.vocab}",
        "train.epochs=1000", f"train.max_steps={steps}", f"train.eval_every={steps}",
        f"train.batch_tokens={args.batch_tokens}", f"train.max_eval_examples={args.eval_examples}",
        f"train.device={args.device}", f"train.threads={args.threads}", "train.optimizer=adamw",
        f"train.lr={args.lr}",
        *([f"train.replica_groups={args.replica_groups}"] if getattr(args, "replica_groups", None) else [])])
    lambdas = [0.0] + [float(x) for x in torch.logspace(-5, -1, args.k - 1).tolist()]
    out = []
    for lam in lambdas:
        raw = config_to_dict(base)
        raw["regularization"].update(mode="decoupled" if lam else "none", weight_decay=lam)
        out.append(build_config(raw))
    return out


def measure(arch: str, data: str, args, device: torch.device, work: Path) -> dict:
    """Seconds for K sequential runs and one stacked run of the same K configurations, and the step comparison."""
    cfgs = configs(arch, data, args, args.steps)
    splits = load_splits(cfgs[0].data)
    tokenizer = train_tokenizer([p.source for p in splits.train] + [p.target for p in splits.train],
                                cfgs[0].tokenizer)
    seed_everything(cfgs[0].seed)
    init = model_tensors(build_model(cfgs[0].model, tokenizer.get_vocab_size()))
    # warm-up (allocator, kernels, the CUDA context) for both paths, not timed
    Trainer(cfgs[0], work / "warm-seq", splits=splits, tokenizer=tokenizer, init_weights=init, quiet=True).fit()
    ReplicaGroups(cfgs[:2], [work / "warm-v0", work / "warm-v1"], splits=splits, tokenizer=tokenizer,
                  init_weights=init).fit()
    results: dict[str, list[float]] = {}
    # process CPU seconds (user + system)
    cpu: dict[str, list[float]] = {"sequential": [], "stacked": [], "stacked_one_group": []}

    def run_sequential(rep: int) -> float:
        common.sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        results["sequential"] = [Trainer(c, work / f"seq{rep}-{i}", splits=splits, tokenizer=tokenizer,
                                         init_weights=init, quiet=True).fit().history[-1]["val_loss"]
                                 for i, c in enumerate(cfgs)]
        common.sync(device)
        cpu["sequential"].append(time.process_time() - c0)
        return time.perf_counter() - t0

    def stacked_run(name: str, configs: list) -> Callable[[int], float]:
        def run(rep: int) -> float:
            common.sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            replicas = ReplicaGroups(configs, [work / f"{name}{rep}-{i}" for i in range(len(configs))],
                                     splits=splits, tokenizer=tokenizer, init_weights=init).fit()
            common.sync(device)
            cpu[name].append(time.process_time() - c0)
            seconds = time.perf_counter() - t0
            results[name] = [r.history[-1]["val_loss"] for r in replicas]
            return seconds
        return run

    variants = {"sequential": run_sequential, "stacked": stacked_run("stacked", cfgs)}
    if device.type == "cpu" and args.threads > 1:  # the same replicas as one stack (all threads on it)
        variants["stacked_one_group"] = stacked_run("stacked_one_group", common.one_stack(cfgs))
    # rotating order (sequential first, then the stack first, ...): load drift on a shared machine hits all alike
    _, seconds = common.interleave(variants, args.reps, warmup=0)
    baseline_s, ours_s = common.median(seconds["sequential"]), common.median(seconds["stacked"])
    sequential, stacked = results["sequential"], results["stacked"]
    nudged = Trainer(cfgs[0], work / "nudged", splits=splits, tokenizer=tokenizer,
                     init_weights=last_bit_nudge(init, cfgs[0].seed), quiet=True).fit().history[-1]["val_loss"]
    train_data = encode_run_data(cfgs[0], tokenizer, splits)[0]
    batch = train_data.batch(epoch_groups(cfgs[0], train_data, 0)[0]).to(device)
    return {"arch": arch, "preset": "tiny", "vocab": tokenizer.get_vocab_size(), "steps": args.steps, "k": args.k,
            "parameters_per_replica": sum(t.numel() for t in init.values()),
            "batch": {"rows": batch.tgt_in.size(0), "target_tokens": batch.n_tokens,
                      "source_width": batch.src.size(1), "target_width": batch.tgt_in.size(1)},
            "baseline_s": round(baseline_s, 3), "ours_s": round(ours_s, 3), "ratio": round(baseline_s / ours_s, 3),
            "seconds_per_repetition": {name: [round(x, 3) for x in v] for name, v in seconds.items()},
            # CPU seconds of this process: what the work costs, much less moved by other processes than wall time
            # on a busy machine (a CPU run only; a GPU's work is not in it)
            "cpu_s": {name: round(common.median(v), 3) for name, v in cpu.items() if v},
            "cpu_ratio": round(common.median(cpu["sequential"]) / common.median(cpu["stacked"]), 3),
            **({"one_group_s": round(common.median(seconds["stacked_one_group"]), 3),
                "one_group_ratio": round(baseline_s / common.median(seconds["stacked_one_group"]), 3),
                "one_group_max_abs_val_loss_difference": max(
                    abs(a - b) for a, b in zip(sequential, results["stacked_one_group"], strict=True))}
               if "stacked_one_group" in seconds else {}),
            "max_abs_val_loss_difference": max(abs(a - b) for a, b in zip(sequential, stacked, strict=True)),
            "rounding_sensitivity": abs(nudged - sequential[0]),
            "val_loss": {"sequential": sequential, "stacked": stacked, "sequential_nudged_first": nudged},
            "one_step": step_designs(cfgs[0], tokenizer.get_vocab_size(), batch, args.k, args.step_reps)}


def step_designs(config, vocab: int, batch, k: int, reps: int) -> dict:
    """Median seconds (CPU time on a CPU) of one forward + backward of K replicas: K single models, vmap, batched
    weights."""
    from torch.func import functional_call, stack_module_state, vmap

    cfg = config.model.model_copy(update={"dropout": 0.0})  # vmap'd modules share one dropout rate: compare at 0
    device = batch.tgt_in.device
    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        models.append(build_model(cfg, vocab).to(device))
    names = [n for n, _ in models[0].named_parameters()]
    params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]).requires_grad_()
              for n in names}
    stacked = build_stacked(cfg, params, [0.0] * k)
    vparams, buffers = stack_module_state(models)
    base = models[0]
    args = (batch.src, batch.src_len, batch.tgt_in, batch.tgt_out)
    target_index = batch.target_index

    class Hidden(torch.nn.Module):
        """The model's final states at the target rows (what vmap maps; the fused loss runs on the stack)."""

        def __init__(self, model: torch.nn.Module):
            super().__init__()
            self.model = model

        def forward(self, src, src_len, tgt_in):
            model = self.model
            if hasattr(model, "decode"):
                hidden, _ = model.decode(tgt_in, model.encode(src, src_len))
            else:
                hidden, _, _ = model.run(tgt_in, 0, None, causal=tgt_in.size(1) > 1)
            return hidden.reshape(-1, hidden.size(-1)).index_select(0, target_index)

    wrapper = Hidden(base)
    prefixed = ({f"model.{n}": v for n, v in vparams.items()}, {f"model.{n}": v for n, v in buffers.items()})
    targets = batch.tgt_out.reshape(-1).index_select(0, target_index)

    def single() -> None:
        for model in models:
            model.zero_grad(set_to_none=True)
            model(*args, target_index=target_index).backward()

    def vmapped() -> None:
        rows = vmap(lambda p, b: functional_call(wrapper, (p, b), (batch.src, batch.src_len, batch.tgt_in)))(
            *prefixed)
        weight = prefixed[0]["model.embed.weight"]
        bias = prefixed[0].get("model.output.bias")
        stacked_linear_cross_entropy(rows, prefixed[0].get("model.output.weight", weight), bias, targets).sum() \
            .backward()

    def batched() -> None:
        for p in params.values():
            p.grad = None
        stacked(*args, target_index=target_index).sum().backward()

    designs = {"sequential": single, "vmap": vmapped, "batched_weights": batched}
    # both clocks: CPU time is the work (less moved by other processes on a busy machine), wall time the
    # threads' use; a GPU: wall only
    cpu_clock = device.type == "cpu"
    cpu: dict[str, list[float]] = {name: [] for name in designs}

    def timed(name, fn):
        def run(_: int) -> float:
            common.sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            common.sync(device)
            cpu[name].append(time.process_time() - c0)
            return time.perf_counter() - t0
        return run

    import warnings

    with warnings.catch_warnings():  # vmap's "no batching rule" warning is the finding, said in the docs
        warnings.simplefilter("ignore")
        warm, seconds = common.interleave({name: timed(name, fn) for name, fn in designs.items()}, reps)
    wall = {name: round(common.median(v), 4) for name, v in seconds.items()}
    # the warm-up repetition's CPU seconds are dropped as its wall seconds are
    cpu_s = {name: round(common.median(v[len(warm[name]):]), 4) for name, v in cpu.items()}
    medians = cpu_s if cpu_clock else wall
    result = {"median_s": medians, "clock": "process CPU time" if cpu_clock else "wall",
              "vmap_ratio": round(medians["sequential"] / medians["vmap"], 3),
              "batched_weights_ratio": round(medians["sequential"] / medians["batched_weights"], 3)}
    if cpu_clock:
        result["median_wall_s"] = wall
        result["wall_ratios"] = {name: round(wall["sequential"] / wall[name], 3) for name in designs
                                 if name != "sequential"}
    return result


def main() -> None:
    ap = common.argument_parser(__doc__, "vectorized_transformer", "fewer steps (same code path)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--k", type=int, default=8, help="replicas (λ values) per stack")
    ap.add_argument("--archs", default=",".join(ARCHS), help="comma list of architectures (default: both)")
    ap.add_argument("--batch-tokens", type=int, default=None, help="default: 512 on a CPU, 4096 on a GPU")
    ap.add_argument("--block-size", type=int, default=64, help="the decoder's data.block_size (default 64)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps of every run (default 40, quick 8)")
    ap.add_argument("--pairs", type=int, default=2000, help="bible-en-es verses (default 2000)")
    ap.add_argument("--vocab", type=int, default=2000, help="BPE vocabulary (default 2000)")
    ap.add_argument("--eval-examples", type=int, default=100, help="train.max_eval_examples: pairs (blocks for the "
                    "decoder) of the validation and the training subset scored at the end (default 100)")
    ap.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate of every run (default 2e-3)")
    ap.add_argument("--replica-groups", type=int, default=None, help="train.replica_groups of the stacked run "
                    "(default: the engine's, one stack per thread; one stack under OMP_WAIT_POLICY=active)")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions of both sides, alternating which "
                    "goes first; the median counts (default 2, quick 1)")
    ap.add_argument("--step-reps", type=int, default=None, help="timed repetitions of the one-step designs "
                    "(default 5, quick 2)")
    args = ap.parse_args()
    load_before = common.loadavg()
    args.threads = common.setup_threads(args.threads)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    args.device = device.type
    args.batch_tokens = args.batch_tokens or (4096 if device.type == "cuda" else 512)
    args.steps = args.steps or (8 if args.quick else 40)
    args.step_reps = args.step_reps or (2 if args.quick else 5)
    args.reps = args.reps or (1 if args.quick else 2)
    rows = []
    work = Path(tempfile.mkdtemp(prefix="vectransformer-"))
    try:
        text = write_text(args.pairs, work / "bible-en.txt")
        for arch in args.archs.split(","):
            row = measure(arch, str(text), args, device, work / arch)
            rows.append(row)
            step = row["one_step"]
            print(f"{arch:<11} tiny V={row['vocab']:<5} {row['parameters_per_replica'] / 1e6:5.2f}M params K={args.k} "
                  f"{row['steps']} steps: sequential {row['baseline_s']:6.2f} s  vectorized {row['ours_s']:6.2f} s  "
                  f"ratio {row['ratio']:.2f}x, CPU time {row['cpu_ratio']:.2f}x"
                  + (f" (one group: {row['one_group_s']:.2f} s, {row['one_group_ratio']:.2f}x)" if "one_group_s" in row
                     else "") + "  (max |Δ val loss| "
                  f"{row['max_abs_val_loss_difference']:.1e}; rounding sensitivity "
                  f"{row['rounding_sensitivity']:.1e}); one step: vmap {step['vmap_ratio']:.2f}x, "
                  f"batched weights {step['batched_weights_ratio']:.2f}x of {args.k} single models (CPU time)",
                  flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "ratio": min(r["ratio"] for r in rows),
        "ratio_is": "the smaller of the architectures' ratios; each is in `archs`",
        "goal": ">= 2x at the tiny preset on CPU, >= 4x on a GPU (issue 13 item 6)",
        "baseline": {r["arch"]: r["baseline_s"] for r in rows} | {"what": f"{args.k} sequential Trainer runs, s"},
        "ours": {r["arch"]: r["ours_s"] for r in rows} | {"what": f"ReplicaGroups of {args.k} replicas, s"},
        "settings": {"batch_tokens": args.batch_tokens, "block_size": args.block_size, "pairs": args.pairs,
                     "vocab": args.vocab, "lr": args.lr, "dropout": 0.1,
                     "replica_groups": args.replica_groups},
        "archs": rows,
        "machine": common.machine_info(device, args.threads, load_before),
        "command": common.command_line(),
    }
    print(f"wrote {common.write_result('vectorized_transformer', result, args.out)}")


if __name__ == "__main__":
    main()
