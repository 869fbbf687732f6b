"""The LSTM encoder over mixed-length sources: torch's packed run vs decaylab's padded oneDNN run (same function).

    python benchmarks/padded_encoder.py [--quick] [--threads N] [--out PATH]

Forward + backward of a bidirectional LSTM encoder over one batch like the training benchmark's (54 sources of
20-36 tokens, every length present), at the small preset's width (128 per direction, 1 layer) and the base
preset's (256 per direction, 2 layers). The baseline packs the batch (`pack_padded_sequence`, what `nn.LSTM`
needs for variable lengths); ours is `models/padded_rnn.run_padded`. Outputs, final states and gradients are
checked equal first; then interleaved repetitions, median. (A GRU has no oneDNN kernel in torch: it stays packed.)
"""

from __future__ import annotations

import time

import common  # sets the OpenMP wait policy; must come before torch
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from decaylab.models.padded_rnn import run_padded

CASES = ((128, 128, 1), (256, 256, 2))  # (embedding, hidden per direction, layers)
BATCH, STEPS, SHORTEST = 54, 36, 20


def packed(rnn: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor):
    """The baseline: pack, run, unpack."""
    outputs, final = rnn(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=x.size(1))
    return outputs, final


def flatten(result) -> list[torch.Tensor]:
    """Outputs and every final-state tensor."""
    outputs, final = result
    return [outputs, *(final if isinstance(final, tuple) else (final,))]


def forward_backward(run, rnn: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> float:
    """Seconds of one forward + backward of `run` (its outputs summed)."""
    start = time.perf_counter()
    sum(t.sum() for t in flatten(run(rnn, x, lengths))).backward()
    return time.perf_counter() - start


def check(rnn: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> float:
    """Largest difference of outputs, states and gradients between the two runs, relative (asserted small)."""
    results = []
    for run in (packed, run_padded):
        leaves = [x, *rnn.parameters()]
        for leaf in leaves:
            leaf.grad = None
        values = flatten(run(rnn, x, lengths))
        sum((v * torch.linspace(-1, 1, v.numel()).view_as(v)).sum() for v in values).backward()
        results.append([v.detach().clone() for v in values] + [leaf.grad.clone() for leaf in leaves])
    # relative to each tensor's scale: weight gradients sum over every position of the batch
    worst = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) for a, b in zip(*results, strict=True))
    if worst > 1e-5:
        raise SystemExit(f"padded and packed runs differ by {worst:.2e} relative to a tensor's largest entry")
    return worst


def main() -> None:
    ap = common.argument_parser(__doc__, "padded_encoder", "fewer repetitions (same code path)")
    args = ap.parse_args()
    load_before = common.loadavg()
    args.threads = common.setup_threads(args.threads)
    reps = 2 if args.quick else 5
    cases = {}
    for embed, hidden, layers in CASES:
        torch.manual_seed(0)
        rnn = nn.LSTM(embed, hidden, layers, batch_first=True, bidirectional=True)
        lengths = torch.randint(SHORTEST, STEPS + 1, (BATCH,))
        lengths[0] = STEPS
        x = torch.randn(BATCH, STEPS, embed, requires_grad=True)
        difference = check(rnn, x, lengths)
        batch = (rnn, x, lengths)
        variants = {name: (lambda _, run=run, batch=batch: min(forward_backward(run, *batch) for _ in range(2)))
                    for name, run in (("baseline", packed), ("ours", run_padded))}
        _, timed = common.interleave(variants, reps)
        base_ms, ours_ms = common.median(timed["baseline"]) * 1e3, common.median(timed["ours"]) * 1e3
        key = f"lstm_{hidden}x{layers}"
        cases[key] = {"packed_ms": round(base_ms, 2), "padded_ms": round(ours_ms, 2),
                      "ratio": round(base_ms / ours_ms, 3), "max_relative_difference": difference}
        print(f"{key:<12} packed {base_ms:8.2f} ms   padded {ours_ms:8.2f} ms   {base_ms / ours_ms:5.2f}x   "
              f"(max relative difference {difference:.1e})", flush=True)
    result = {
        "ratio": cases["lstm_128x1"]["ratio"],
        "ratio_is": "the small preset's bi-LSTM (the training benchmark's encoder); both cases are in `cases`",
        "goal": "the same function as the packed run, faster (no fixed goal; feeds the training benchmark)",
        "baseline": {k: v["packed_ms"] for k, v in cases.items()} | {"what": "packed run, forward + backward, ms"},
        "ours": {k: v["padded_ms"] for k, v in cases.items()} | {"what": "run_padded, forward + backward, ms"},
        "cases": cases,
        "setup": {"batch": BATCH, "steps": STEPS, "lengths": f"uniform {SHORTEST}..{STEPS}", "bidirectional": True},
        "machine": common.machine_info(torch.device("cpu"), args.threads, load_before),
        "command": common.command_line(),
    }
    print(f"wrote {common.write_result('padded_encoder', result, args.out)}")


if __name__ == "__main__":
    main()
