"""Time one optimizer step of a ~10M-parameter seq2seq on CPU: Adam fused=True vs foreach=True.

    python benchmarks/optimizer_step.py [--quick] [--threads 2] [--out benchmarks/results/optimizer_step.json]

The two optimizers step alternately on two copies of the same model (same gradients), so a
load change on a shared machine hits both equally; the median of the timed steps is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from decaylab.regularization import Regularization  # noqa: E402


class Seq2Seq(nn.Module):
    """Embedding x2, GRU x2 (2 layers each), output Linear: the parameter layout of the seed's model."""

    def __init__(self, vocab: int = 8000, d: int = 320) -> None:
        super().__init__()
        self.src_embed = nn.Embedding(vocab, d)
        self.tgt_embed = nn.Embedding(vocab, d)
        self.encoder = nn.GRU(d, d, num_layers=2, batch_first=True)
        self.decoder = nn.GRU(d, d, num_layers=2, batch_first=True)
        self.out = nn.Linear(d, vocab)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10 timed steps instead of 50")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "optimizer_step.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps, warmup = (10, 2) if args.quick else (50, 5)

    torch.manual_seed(0)
    models = {"fused": Seq2Seq(), "foreach": Seq2Seq()}
    models["foreach"].load_state_dict(models["fused"].state_dict())
    n_params = sum(p.numel() for p in models["fused"].parameters())
    reg = Regularization(mode="decoupled", weight_decay=0.1, decay_set="no_bias_norm")
    opts = {}
    for kind, model in models.items():
        for p in model.parameters():  # fixed gradients: the benchmark times the step, not backward
            g = torch.Generator().manual_seed(p.numel())
            p.grad = torch.randn(p.shape, generator=g) * 1e-3
        # plain torch Adam over the model, as the brief asks, and AdamW from reg.optimizer (3 groups)
        opts[kind] = torch.optim.Adam(model.parameters(), lr=1e-3, **{kind: True})
        opts[f"reg_{kind}"] = reg.optimizer(model, "adamw", lr=1e-3, **{kind: True})

    load_before = os.getloadavg()[0]
    times: dict[str, list[float]] = {k: [] for k in opts}
    for i in range(warmup + steps):
        for kind, opt in opts.items():  # interleaved, so drifting machine load hits every variant alike
            t0 = time.perf_counter()
            opt.step()
            dt = time.perf_counter() - t0
            if i >= warmup:
                times[kind].append(dt)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}

    result = {
        "ratio": med["foreach"] / med["fused"],
        "goal": None,
        "baseline": {"name": "torch.optim.Adam(foreach=True)", "median_step_ms": med["foreach"]},
        "ours": {"name": "torch.optim.Adam(fused=True)", "median_step_ms": med["fused"]},
        "reg_optimizer_adamw": {
            "fused_median_step_ms": med["reg_fused"],
            "foreach_median_step_ms": med["reg_foreach"],
            "ratio": med["reg_foreach"] / med["reg_fused"],
        },
        "n_params": n_params,
        "timed_steps": steps,
        "threads": args.threads,
        "machine": {
            "cpu": cpu_name(),
            "logical_cpus": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            # a shared machine's other work inflates both numbers; the load says how busy it was
            "loadavg_1min_before_after": [load_before, os.getloadavg()[0]],
        },
        "command": " ".join(["python", *sys.argv]),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)  # atomic: a killed run never leaves a half-written result
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
