"""What every experiment shares: its command line, its folders, resumable sweeps, results.json and figures."""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

import decaylab
from decaylab.files import atomic_write_bytes, atomic_write_json
from decaylab.report.plots import new_figure, to_png
from decaylab.runfolder.layout import versions
from decaylab.runfolder.lock import holder
from decaylab.sweep.store import SweepStore

HERE = Path(__file__).resolve().parent
RESULTS = "results.json"
# Options of decaylab.sweep that a resume is given again: how the trials run and whether a final model follows,
# not what the trials are.
RUNTIME_OPTIONS = ("objective", "vectorized", "replicas", "workers", "quiet", "final")

__all__ = ["Experiment", "new_figure", "start"]


def machine() -> dict[str, Any]:
    """Where the numbers were measured: host, CPU, cores, torch's threads, the load average now."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(), "load_average": list(os.getloadavg())}


@dataclass
class Experiment:
    """One invocation of an experiment: where it writes, whether it is the quick variant, how long it has run."""

    name: str
    quick: bool
    output: Path  # results.json and the figures
    runs: Path  # the sweep folders (heavy; .gitignore keeps them out of git)
    command: str
    threads: int | None = None  # --threads: torch threads of this process and of its trainings (None: torch's)
    args: argparse.Namespace | None = None  # every option, the experiment's own ones included
    started: float = field(default_factory=time.perf_counter)
    load_start: list[float] = field(default_factory=lambda: list(os.getloadavg()))
    load_samples: list[float] = field(default_factory=list)
    sweep_wall_s: dict[str, float] = field(default_factory=dict)
    earlier: list[dict[str, Any]] | None = None  # the invocations of the results.json this one replaces

    def sweep(self, key: str, **options: Any) -> dict[str, Any]:
        """`decaylab.sweep(**options)` into runs/<key>/, resumable: a finished sweep is read back, an unfinished one
        continues with decaylab's resume (finished trials are not redone), a missing one starts; one that another
        process is training is waited for. The summary."""
        folder = self.runs / key
        while holder(folder) is not None:  # another process of this experiment trains it now: wait for it
            time.sleep(5)
        store = SweepStore(folder)
        check_options(folder, options, fresh=not store.is_sweep())
        summary = store.summary() if store.is_sweep() else None
        if summary is None:
            self.load_samples.append(os.getloadavg()[0])
            if store.is_sweep():
                again = {k: v for k, v in options.items() if k in RUNTIME_OPTIONS}
                decaylab.sweep(resume=folder, **again)
            else:
                decaylab.sweep(output=folder, **options)
            summary = store.summary()
            assert summary is not None
        self.sweep_wall_s[key] = float(summary.get("wall_s") or 0.0)
        return summary

    def save_figure(self, figure: Figure, name: str) -> Path:
        """The figure as output/<name>.png (atomically, in the report's style)."""
        path = self.output / f"{name}.png"
        atomic_write_bytes(path, to_png(figure))
        return path

    def write_results(self, settings: dict[str, Any], results: dict[str, Any], verdict: str) -> Path:
        """output/results.json (atomic): the settings, the results, the verdict, versions, machine, wall time and
        load. `sweeps_wall_s` sums the sweeps' own wall clocks, which count every invocation of a resumed sweep;
        `invocations` lists every invocation that wrote this file (command, end, wall time, load), the earlier ones
        read from the file it replaces, so reading a finished experiment back does not lose its first clock."""
        load_end = list(os.getloadavg())
        path = self.output / RESULTS
        this = {"command": self.command, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "wall_s": time.perf_counter() - self.started,
                "load_average": {"start": self.load_start, "end": load_end, "at_sweep_starts": self.load_samples}}
        if self.earlier is None:  # read once: a second write of this invocation replaces its own entry
            self.earlier = earlier_invocations(path)
        invocations = [*self.earlier, this]  # a resumed or re-read run keeps the earlier clocks
        atomic_write_json(path, {
            "experiment": self.name, "quick": self.quick, **this, "sweeps_wall_s": sum(self.sweep_wall_s.values()),
            "invocations": invocations, "wall_s_all_invocations": sum(i["wall_s"] for i in invocations),
            "machine": machine(), "versions": versions(), "settings": settings, "results": results,
            "verdict": verdict})
        return path


def earlier_invocations(path: Path) -> list[dict[str, Any]]:
    """The invocations recorded in an existing results.json (its own, for a file from before they were kept);
    none when there is no readable file."""
    import json

    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if "invocations" in old:
        return list(old["invocations"])
    return [{k: old[k] for k in ("command", "finished", "wall_s", "load_average") if k in old}]


def _plain(value: Any) -> Any:
    """A JSON form of a sweep option that is the same in every process (a function by its name, a config by its
    fields), so two invocations can be compared."""
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '?')}.{value.__qualname__}"
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return str(value)


def check_options(folder: Path, options: dict[str, Any], fresh: bool) -> None:
    """Record a new sweep's options in its folder; refuse (SystemExit naming the folder and the keys) to read back or
    resume a sweep whose recorded options differ, since its results would silently be those of other settings."""
    import json

    path = folder.with_name(folder.name + ".options.json")  # beside the sweep folder, which decaylab owns
    given = json.loads(json.dumps(options, default=_plain, sort_keys=True))
    if fresh or not path.exists():
        atomic_write_json(path, given)
        return
    recorded = json.loads(path.read_text(encoding="utf-8"))
    changed = sorted(k for k in set(recorded) | set(given) if recorded.get(k) != given.get(k))
    if changed:
        raise SystemExit(f"{folder}: this sweep was started with other settings ({', '.join(changed)} differ); "
                         f"delete the folder to train it with the new ones")


def start(name: str, description: str, argv: Sequence[str] | None = None,
          options: Callable[[argparse.ArgumentParser], None] | None = None) -> Experiment:
    """Parse `--quick`, `--output DIR`, `--threads N` and the experiment's own `options`; the folders: DIR (default
    experiments/<name>/results, or .../runs/quick for --quick) for results.json and figures, DIR/runs or
    experiments/<name>/runs for the sweeps."""
    parser = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=description)
    parser.add_argument("--quick", action="store_true",
                        help="a small version that keeps the pipeline working (its numbers are not the result)")
    parser.add_argument("--output", type=Path, default=None,
                        help="folder for results.json and figures (default experiments/NAME/results; sweeps go to "
                             "experiments/NAME/runs, or to OUTPUT/runs when --output is given)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of this process (1 is fastest on a machine shared with other jobs)")
    if options is not None:
        options(parser)
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    folder = HERE / name
    if args.output is not None:
        output, runs = args.output, args.output / "runs"
    elif args.quick:
        output = runs = folder / "runs" / "quick"
    else:
        output, runs = folder / "results", folder / "runs"
    output.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    shown = list(argv) if argv is not None else sys.argv[1:]
    command = shlex.join(["python", "-m", f"experiments.{name}", *map(str, shown)])
    return Experiment(name, args.quick, output, runs, command, threads=args.threads, args=args)
