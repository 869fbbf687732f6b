"""Time one optimizer step of a ~10M-parameter seq2seq on CPU: Adam fused=True vs foreach=True.

    python benchmarks/optimizer_step.py [--quick] [--threads 2] [--out benchmarks/results/optimizer_step.json]

The two optimizers step alternately on two copies of the same model (same gradients), so a
load change on a shared machine hits both equally; the median of the timed steps is reported.
"""

from __future__ import annotations

import statistics
import time

import common  # sets the OpenMP wait policy; must come before torch
import torch
from torch import nn

from decaylab.regularization import Regularization


class Seq2Seq(nn.Module):
    """Embedding x2, GRU x2 (2 layers each), output Linear: the parameter layout of the seed's model."""

    def __init__(self, vocab: int = 8000, d: int = 320) -> None:
        super().__init__()
        self.src_embed = nn.Embedding(vocab, d)
        self.tgt_embed = nn.Embedding(vocab, d)
        self.encoder = nn.GRU(d, d, num_layers=2, batch_first=True)
        self.decoder = nn.GRU(d, d, num_layers=2, batch_first=True)
        self.out = nn.Linear(d, vocab)


def main() -> None:
    ap = common.argument_parser(__doc__, "optimizer_step", "10 timed steps instead of 50")
    args = ap.parse_args()
    load_before = common.loadavg()
    args.threads = common.setup_threads(args.threads)
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
        "machine": common.machine_info(torch.device("cpu"), args.threads, load_before),
        "command": common.command_line(),
    }
    common.write_result("optimizer_step", result, args.out)
    print(f"Adam step: fused {med['fused']:.1f} ms, foreach {med['foreach']:.1f} ms ({result['ratio']:.1f}x); "
          f"reg AdamW: fused {med['reg_fused']:.1f} ms, foreach {med['reg_foreach']:.1f} ms")


if __name__ == "__main__":
    main()
