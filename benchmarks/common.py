"""Shared benchmark helpers: thread setup, machine description, measured matmul peak, interleaved timing, JSON.

Import this module before torch: it sets the OpenMP wait policy, which only takes effect before torch loads.
"""

from __future__ import annotations

import os

# On a shared 2-core machine an OpenMP thread that spin-waits for a descheduled peer stalls the whole parallel
# region: with other processes busy we measured single LSTM/GRU calls 10-80x slower under the default (active)
# policy and normal under PASSIVE. It applies to baseline and ours alike; an explicit setting wins, and
# OMP_WAIT_POLICY=default leaves the variable unset: the OpenMP runtime's own default, what `decaylab train` gets.
if os.environ.get("OMP_WAIT_POLICY", "").lower() == "default":
    del os.environ["OMP_WAIT_POLICY"]
    OMP_WAIT_POLICY = "unset (the OpenMP runtime's default)"
else:
    OMP_WAIT_POLICY = os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT / "src") not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT / "src"))


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (or what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def machine_info(device: torch.device, threads: int, load_before: float | None) -> dict[str, Any]:
    """What the numbers were measured on, including how busy the machine was."""
    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "omp_wait_policy": OMP_WAIT_POLICY,
        # other work on a shared machine slows both sides; the load says how busy it was
        "loadavg_1min_before_after": [load_before, loadavg()],
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def argument_parser(doc: str, name: str, quick: str, threads: int | None = None,
                    threads_help: str = "torch threads (default: every logical CPU)") -> argparse.ArgumentParser:
    """The options every benchmark takes: --quick (`quick` says what it shrinks), --threads and --out."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=quick)
    ap.add_argument("--threads", type=int, default=threads, help=threads_help)
    ap.add_argument("--out", default=None, help=f"result JSON (default benchmarks/results/{name}.json)")
    return ap


def setup_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (default: every logical CPU) and return the number used."""
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


def sync(device: torch.device) -> None:
    """Wait for queued device work, so wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: int | None = None,
                reps: int = 12) -> float:
    """Best observed GFLOP/s of an n x n matmul: the attainable peak MFU is measured against."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(3):
        torch.mm(a, b)
    sync(device)
    best = float("inf")
    for _ in range(reps):  # the fastest repetition: other processes only ever slow a run down
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def interleave(variants: dict[str, Callable[[int], float]], reps: int, warmup: int = 1
               ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Run every variant once per repetition, rotating the order (ABCA BCAB ...), so load drift hits all alike.

    Each callable gets the repetition index and returns the seconds it measured. Returns (warm-up seconds,
    timed seconds) per variant.
    """
    names = list(variants)
    warm: dict[str, list[float]] = {name: [] for name in names}
    timed: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(warmup + reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            seconds = variants[name](rep)
            (warm if rep < warmup else timed)[name].append(seconds)
    return warm, timed


def one_stack(configs: list) -> list:
    """The configs with `train.replica_groups=1`: a vectorized run's replicas as one stack (all threads on it)."""
    return [c.model_copy(update={"train": c.train.model_copy(update={"replica_groups": 1})}) for c in configs]


def median(values: list[float]) -> float:
    """Median (NaN for an empty list)."""
    return statistics.median(values) if values else float("nan")


def command_line() -> str:
    """How this benchmark was invoked, relative to the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return " ".join(["python", str(script), *sys.argv[1:]])


def write_result(name: str, result: dict[str, Any], out: str | Path | None = None) -> Path:
    """Write `result` as JSON to benchmarks/results/<name>.json (or `out`) atomically, and return the path."""
    for key in ("ratio", "goal", "baseline", "ours", "machine", "command"):
        if key not in result:
            raise KeyError(f"benchmark result lacks the contract key {key!r}")
    path = Path(out) if out is not None else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=float) + "\n")
    tmp.replace(path)  # a killed run never leaves a half-written result
    return path
