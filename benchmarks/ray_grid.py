"""A 9-point grid sweep on the Ray backend with 1 and with 2 Ray worker processes on this machine.

    python benchmarks/ray_grid.py [--quick] [--reps N] [--out benchmarks/results/ray_grid.json]

One local Ray instance (2 CPUs, no dashboard) is started for the whole script, and every sweep uses it
(`decaylab.sweep(backend="ray", workers=W)` uses a Ray connection the process already has): W = 1 runs one trial
at a time, W = 2 two at once, each trial a Ray task asking for one CPU (`train.threads=1`). The grid is λ = 0
plus 8 decoupled λ log-spaced in [1e-3, 1] on a bible-en-es subset with the tiny GRU; every sweep trains the
same 9 trials from scratch into a fresh folder. The runs alternate (1, 2, 2, 1, …: `common.interleave`) after a
warm-up of each (the first sweep also pays for starting Ray's worker processes and their imports), so load drift
hits both alike. Reported: wall time per sweep, the ratio, the chosen λ of each, and whether every trial's row
agrees between W = 1 and W = 2 (timings aside). The machine is shared: the load average is recorded.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (machine description, interleaving, JSON; puts src/ on sys.path)

from decaylab.config import load_config  # noqa: E402
from decaylab.sweep import sweep  # noqa: E402

BASE = ["data.name=bible-en-es", "data.max_valid_examples=200", "model.preset=tiny", "model.dropout=0.0",
        "train.optimizer=adamw", "train.lr=0.01", "train.threads=1", "seed=0"]
FULL = {"examples": 600, "epochs": 3}
QUICK = {"examples": 200, "epochs": 2}
LAMBDAS = "log:1e-3:1:8"  # plus λ = 0: 9 points
VOLATILE = {"wall_s", "tokens_per_s"}


def main() -> None:
    ap = common.argument_parser(__doc__, "ray_grid", "200 pairs, 2 epochs, one timed repetition")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions of each (default: 2, --quick 1)")
    args = ap.parse_args()
    size = QUICK if args.quick else FULL
    reps = args.reps or (1 if args.quick else 2)
    import ray

    load_before = common.loadavg()
    started = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=128 * 1024 * 1024,
             log_to_driver=False, logging_level="WARNING")
    ray_start_s = time.perf_counter() - started
    config = load_config(None, BASE + [f"data.max_examples={size['examples']}", f"train.epochs={size['epochs']}"])
    work = Path(tempfile.mkdtemp(prefix="ray_grid"))
    results: dict[str, list[dict]] = {"1": [], "2": []}

    def run(workers: int):
        def once(rep: int) -> float:
            out = work / f"w{workers}-{rep}"
            t0 = time.perf_counter()
            result = sweep(config, strategy="grid", lambdas=LAMBDAS, modes="decoupled", final=False, quiet=True,
                           output=out, backend="ray", workers=workers)
            seconds = time.perf_counter() - t0
            # compute_s: the trials' own training time summed; against wall it says how much ran at once
            results[str(workers)].append({"wall_s": seconds, "compute_s": result.summary["compute_s"],
                                          "chosen_lambda": result.best["lambda"],
                                          "rows": [{k: v for k, v in row.items() if k not in VOLATILE}
                                                   for row in result.trials], "warmup": rep == 0,
                                          "load_after": common.loadavg()})
            print(f"workers {workers}, rep {rep}: {seconds:.1f} s (trials' own {result.summary['compute_s']:.1f} s), "
                  f"chose λ = {result.best['lambda']:g}, "
                  f"load {common.loadavg()}", flush=True)
            shutil.rmtree(out, ignore_errors=True)
            return seconds
        return once

    try:
        warm, timed = common.interleave({"1": run(1), "2": run(2)}, reps=reps, warmup=1)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    one, two = common.median(timed["1"]), common.median(timed["2"])
    rows = [r["rows"] for r in results["1"] + results["2"]]
    chosen = sorted({r["chosen_lambda"] for r in results["1"] + results["2"]})
    summary = {
        "what": "9-point grid sweep (λ = 0 + 8 decoupled λ in [1e-3, 1]) on the Ray backend, 1 vs 2 worker processes",
        "config": BASE + [f"data.max_examples={size['examples']}", f"train.epochs={size['epochs']}"],
        "ray": ray.__version__, "ray_start_s": round(ray_start_s, 2),
        "warmup_s": {k: [round(v, 2) for v in warm[k]] for k in warm},
        "wall_s": {k: [round(v, 2) for v in timed[k]] for k in timed},
        "baseline": {"workers": 1, "median_wall_s": round(one, 2)},
        "ours": {"workers": 2, "median_wall_s": round(two, 2)},
        "ratio": round(one / two, 3),  # wall with 1 worker / wall with 2
        "goal": "2 workers faster than 1 (ratio > 1) on this 2-core machine, the same chosen λ and trial rows",
        "chosen_lambda": chosen, "same_rows_every_run": all(r == rows[0] for r in rows),
        "loads_after_each_sweep": {k: [r["load_after"] for r in results[k]] for k in results},
        "trials_compute_s": {k: [round(r["compute_s"], 2) for r in results[k]] for k in results},
        "machine": common.machine_info(common.torch.device("cpu"), 1, load_before),
        "command": common.command_line(),
    }
    print(f"1 worker {one:.1f} s, 2 workers {two:.1f} s: ratio {one / two:.2f}; chosen λ {chosen}; "
          f"same rows: {summary['same_rows_every_run']}")
    print(f"wrote {common.write_result('ray_grid', summary, args.out)}")


if __name__ == "__main__":
    main()
