"""The stacked GRU/LSTM recurrence: decaylab's hand-written backward vs the same loop recorded by autograd.

    python benchmarks/stacked_recurrence.py [--quick] [--device cpu|cuda] [--threads 1] [--out PATH]

Forward + backward of one recurrence direction over K = 8 replicas (2K = 16 rows: a bidirectional layer),
32 time steps with padded rows, at a launch-bound width (16) and at the small preset's width (256, batch 16). The
baseline is the loop a user would write with autograd (the first version of `models/stacked_rnn.py`); ours is
`models/stacked_recurrence.py`. Interleaved repetitions, median; outputs and gradients are checked equal first.
"""

from __future__ import annotations

import common  # sets the OpenMP wait policy; must come before torch
import torch

from decaylab.models.stacked_recurrence import GRURecurrence, LSTMRecurrence


def autograd_loop(cell: str, gates_x: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor,
                  state: tuple[torch.Tensor, ...], mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The recurrence as plain autograd code (the baseline)."""
    outputs = []
    for t in range(gates_x.size(2)):
        h = state[0]
        gates_h = torch.baddbmm(b_hh.unsqueeze(1), h, w_hh.transpose(1, 2))
        x = gates_x[:, :, t]
        if cell == "gru":
            x_r, x_z, x_n = x.chunk(3, dim=-1)
            h_r, h_z, h_n = gates_h.chunk(3, dim=-1)
            r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
            n = torch.tanh(x_n + r * h_n)
            new = (n + z * (h - n),)
        else:
            i, f, g, o = (x + gates_h).chunk(4, dim=-1)
            c = torch.sigmoid(f) * state[1] + torch.sigmoid(i) * torch.tanh(g)
            new = (torch.sigmoid(o) * torch.tanh(c), c)
        keep = mask[:, :, t].unsqueeze(-1)
        state = tuple(torch.where(keep, a, s) for a, s in zip(new, state, strict=True))
        outputs.append(new[0] * keep)
    return (torch.stack(outputs, dim=2), *state)


def case(cell: str, hidden: int, rows: int, batch: int, steps: int, device: torch.device):
    """Inputs of one recurrence direction with random lengths (padding at the end of shorter rows)."""
    gates = 3 if cell == "gru" else 4
    g = torch.Generator().manual_seed(0)
    gates_x = torch.randn(rows, batch, steps, gates * hidden, generator=g).to(device).requires_grad_()
    w_hh = (torch.randn(rows, gates * hidden, hidden, generator=g) / hidden**0.5).to(device).requires_grad_()
    b_hh = torch.zeros(rows, gates * hidden, device=device, requires_grad=True)
    state = tuple(torch.zeros(rows, batch, hidden, device=device, requires_grad=True)
                  for _ in range(1 if cell == "gru" else 2))
    lengths = torch.randint(steps // 3, steps + 1, (rows, batch), generator=g)
    mask = (torch.arange(steps).view(1, 1, -1) < lengths.unsqueeze(-1)).to(device)
    return gates_x, w_hh, b_hh, state, mask


def main() -> None:
    ap = common.argument_parser(__doc__, "stacked_recurrence", "fewer repetitions (same code path)", threads=1,
                                threads_help="torch threads (default 1: the overhead is per thread)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    load_before = common.loadavg()
    args.threads = common.setup_threads(args.threads)
    device = torch.device(args.device)
    reps = 3 if args.quick else 9
    rows_out = {}
    for cell in ("gru", "lstm"):
        for hidden, batch in ((16, 8), (256, 16)):
            inputs = case(cell, hidden, 16, batch, 32, device)
            gates_x, w_hh, b_hh, state, mask = inputs
            leaves = [gates_x, w_hh, b_hh, *state]

            def baseline(_: int, inputs=inputs, cell=cell) -> float:
                return timed(lambda: autograd_loop(cell, *inputs), device)

            def ours(_: int, inputs=inputs, cell=cell) -> float:
                fn = GRURecurrence if cell == "gru" else LSTMRecurrence
                x, w, b, st, m = inputs
                return timed(lambda: fn.apply(x, w, b, *st, m), device)

            check(cell, inputs, leaves)
            _, timed_s = common.interleave({"baseline": baseline, "ours": ours}, reps)
            base_ms, ours_ms = common.median(timed_s["baseline"]) * 1e3, common.median(timed_s["ours"]) * 1e3
            key = f"{cell}_width{hidden}_batch{batch}"
            rows_out[key] = {"baseline_ms": round(base_ms, 2), "ours_ms": round(ours_ms, 2),
                             "ratio": round(base_ms / ours_ms, 3)}
            print(f"{key:<24} autograd loop {base_ms:8.2f} ms   hand-written backward {ours_ms:8.2f} ms   "
                  f"{base_ms / ours_ms:5.2f}x", flush=True)
    launch_bound = [v["ratio"] for k, v in rows_out.items() if "width16" in k]
    result = {
        "ratio": round(min(launch_bound), 3),
        "ratio_is": "the smaller of GRU and LSTM at the launch-bound width 16; every case is in `cases`",
        "goal": "fewer per-step operations than the autograd loop (no fixed goal; feeds the vectorized sweep)",
        "baseline": {k: v["baseline_ms"] for k, v in rows_out.items()} | {"what": "autograd loop, ms"},
        "ours": {k: v["ours_ms"] for k, v in rows_out.items()} | {"what": "stacked_recurrence, ms"},
        "cases": rows_out,
        "machine": common.machine_info(device, args.threads, load_before),
        "command": common.command_line(),
    }
    print(f"wrote {common.write_result('stacked_recurrence', result, args.out)}")


def timed(step, device: torch.device) -> float:
    """Seconds of one forward + backward of `step` (its outputs summed)."""
    import time

    common.sync(device)
    start = time.perf_counter()
    outputs = step()
    sum(o.sum() for o in outputs).backward()
    common.sync(device)
    return time.perf_counter() - start


def check(cell: str, inputs, leaves: list[torch.Tensor]) -> None:
    """Ours equals the autograd loop (values and gradients) before anything is timed."""
    fn = GRURecurrence if cell == "gru" else LSTMRecurrence
    gates_x, w_hh, b_hh, state, mask = inputs
    results = []
    for run in (lambda: autograd_loop(cell, *inputs), lambda: fn.apply(gates_x, w_hh, b_hh, *state, mask)):
        for leaf in leaves:
            leaf.grad = None
        outputs = run()
        sum(o.sum() for o in outputs).backward()
        results.append([o.detach().clone() for o in outputs] + [leaf.grad.clone() for leaf in leaves])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


if __name__ == "__main__":
    main()
