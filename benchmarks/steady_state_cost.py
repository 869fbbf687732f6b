"""What the steady-state diagnostics cost: an evaluation with and without them, per engine and model size.

    python benchmarks/steady_state_cost.py [--quick] [--threads 1] [--out benchmarks/results/steady_state_cost.json]

For each case the engine takes steps as the training loop does before an evaluation: the probe copies the tracked
weights (`before_step`), the step runs, the engine evaluates (`evaluate_runs`: validation and training loss, norms,
…) and the probe measures (`measure`). The evaluation alone is the baseline; evaluation + copy + measurement is ours,
timed in the same repetition, so a load change hits both. Ordinary steps are not timed: the loop does not call the
probe on them (training/loop.py), so they cost exactly what they did.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import common  # sets the OpenMP wait policy; must come before torch
import torch

from decaylab.config import build_config, config_to_dict, load_config
from decaylab.data.prepare import epoch_groups
from decaylab.training import Trainer
from decaylab.training.stacked import StackedTrainer
from decaylab.training.steady import SteadyProbe

FIXTURE = common.ROOT / "tests" / "fixtures" / "tiny_pairs.tsv"
TINY = [f"data.name={FIXTURE}", "data.split=[0.8, 0.1, 0.1]", "tokenizer.vocab_size=120",
        "tokenizer.min_frequency=1", "train.batch_tokens=256", "model.dropout=0",
        "regularization.mode=decoupled", "regularization.weight_decay=0.1"]


def replica(config: Any, lam: float) -> Any:
    raw = config_to_dict(config)
    raw["regularization"]["weight_decay"] = lam
    return build_config(raw)


def engine_of(case: str, preset: str, folder: Path) -> Any:
    """A Trainer (one model) or a StackedTrainer of 4 replicas on the tiny pairs, with the given preset."""
    config = load_config(None, [*TINY, f"model.preset={preset}"])
    if case == "trainer":
        return Trainer(config, folder / "run", quiet=True)
    first = Trainer(config, folder / "tokenizer", quiet=True)  # its splits and tokenizer, shared by the stack
    configs = [replica(config, lam) for lam in (0.0, 0.01, 0.1, 1.0)]
    return StackedTrainer(configs, [folder / f"r{k}" for k in range(4)], splits=first.splits,
                          tokenizer=first.tokenizer)


def measure(engine: Any, reps: int) -> dict[str, Any]:
    """Median seconds of an evaluation alone and of the probe's copy and measurement around it."""
    probe = SteadyProbe()
    batches = epoch_groups(engine.config, engine.train_data, 0)
    evaluate, copy, diagnose, steps = [], [], [], []
    for rep in range(reps + 1):  # the first repetition warms up
        batch = engine.train_data.batch(batches[rep % len(batches)]).to(engine.device)
        started = time.perf_counter()
        probe.before_step(engine.steady_view())
        copied = time.perf_counter()
        engine.train_step(batch).tolist()
        stepped = time.perf_counter()
        engine.evaluate_runs()
        evaluated = time.perf_counter()
        probe.measure(engine.steady_view())
        done = time.perf_counter()
        if rep:
            copy.append(copied - started)
            steps.append(stepped - copied)
            evaluate.append(evaluated - stepped)
            diagnose.append(done - evaluated)
    tracked = len(probe_tracked(engine))
    return {"evaluation_s": common.median(evaluate), "copy_s": common.median(copy),
            "measure_s": common.median(diagnose), "step_s": common.median(steps), "tracked_tensors": tracked,
            "overhead_of_an_evaluation": (common.median(copy) + common.median(diagnose)) / common.median(evaluate)}


def whole_runs(folder: Path, reps: int) -> dict[str, float]:
    """Median wall seconds of a whole tiny `Trainer` run (3 epochs, 3 evaluations) with the probe and without it."""
    config = load_config(None, [*TINY, "model.preset=tiny", "train.epochs=3"])
    real = (SteadyProbe.before_step, SteadyProbe.measure)

    def fit(rep: int, on: bool) -> float:
        if not on:  # a probe that keeps and measures nothing: the loop as it was before the diagnostics
            SteadyProbe.before_step = lambda self, view: None  # type: ignore[method-assign]
            SteadyProbe.measure = lambda self, view: [{} for _ in view.runs]  # type: ignore[method-assign]
        try:
            started = time.perf_counter()
            Trainer(config, folder / f"{'on' if on else 'off'}{rep}", quiet=True).fit()
            return time.perf_counter() - started
        finally:
            SteadyProbe.before_step, SteadyProbe.measure = real  # type: ignore[method-assign]

    _, timed = common.interleave({"with": lambda rep: fit(rep, True), "without": lambda rep: fit(rep, False)},
                                 reps)
    return {"with_s": common.median(timed["with"]), "without_s": common.median(timed["without"])}


def probe_tracked(engine: Any) -> list[str]:
    from decaylab.training.steady import tracked

    return tracked(engine.steady_view())


def main() -> None:
    ap = common.argument_parser(__doc__, "steady_state_cost", "5 repetitions instead of 20; tiny preset only",
                                threads=1)
    args = ap.parse_args()
    load_before = common.loadavg()
    args.threads = common.setup_threads(args.threads)
    reps = 5 if args.quick else 20
    cases = [("trainer", "tiny"), ("stacked", "tiny")] + ([] if args.quick else [("trainer", "base")])
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case, preset in cases:
            engine = engine_of(case, preset, Path(tmp) / f"{case}-{preset}")
            engine.model.train()
            results[f"{case}/{preset}"] = {"parameters": engine.n_params, **measure(engine, reps)}
            print(case, preset, {k: f"{v:.3g}" if isinstance(v, float) else v
                                 for k, v in results[f"{case}/{preset}"].items()}, flush=True)
        runs = whole_runs(Path(tmp), reps)
        print("whole tiny run", {k: f"{v:.3g}" for k, v in runs.items()}, flush=True)
    tiny = results["trainer/tiny"]
    result = {
        "whole_tiny_run": runs,
        "ratio": 1.0 + tiny["overhead_of_an_evaluation"],
        "goal": "the diagnostics add little to an evaluation and nothing to an ordinary step",
        "baseline": {name: r["evaluation_s"] for name, r in results.items()},
        "ours": {name: r["evaluation_s"] + r["copy_s"] + r["measure_s"] for name, r in results.items()},
        "cases": results,
        "repetitions": reps,
        "machine": common.machine_info(torch.device("cpu"), args.threads, load_before),
        "command": common.command_line(),
    }
    print("wrote", common.write_result("steady_state_cost", result, args.out))


if __name__ == "__main__":
    main()
