"""On a CPU, a vectorized run's replicas as G stacks that train side by side, one per core, each in its own thread.

A tiny model's ops are too small for torch's intra-op threads to pay (a single run of the tiny preset gains little
from a second core), but a stack's replicas are independent all the way through. So `ReplicaGroups` splits the K
replicas into G contiguous groups (by default one per intra-op thread, at most one per replica;
`train.replica_groups` sets G, 1 keeps one stack) and trains each group as its own `StackedTrainer` in a worker
thread with its share of the threads (one each on a machine with as many threads as groups; a remainder goes to the
first stacks). The stacks share nothing but the encoded data, so none waits for another: no barrier per step, and
each runs its optimizer step, evaluations and checkpoints on its own core (an earlier design ran the groups in
lockstep inside one engine: 1.64-1.76x the sequential runs for the decoder LM on a 2-core CPU, against 1.96-2.24x
for this one; docs/benchmarks.md §3d). Replica k computes what it computes in one stack: the same ops on its own
slices, the same dropout draws from its own generator (equal to float rounding: a GEMM over fewer replicas, on fewer
threads, may round its last bit differently). A GPU runs one stack.

The stacks are built one after another in the calling thread (building draws the initial weights from the global
generator) and only their training runs in the workers. If one fails, the others stop before their next step and
the error of the first failing stack (in replica order) is raised; what their last evaluations wrote stays, and a
resume continues every replica (the sweep regroups replicas by their checkpoint step).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path

import torch
from tokenizers import Tokenizer

from decaylab.config import Config
from decaylab.data.splits import Splits
from decaylab.device import resolve_device
from decaylab.training.loop import Cancelled
from decaylab.training.stacked import Replica, StackedTrainer, check_stack


def group_bounds(replicas: int, groups: int) -> list[tuple[int, int]]:
    """[start, end) of each of `groups` contiguous groups of `replicas`, sizes differing by at most one."""
    groups = max(1, min(groups, replicas))
    base, extra = divmod(replicas, groups)
    bounds, start = [], 0
    for g in range(groups):
        end = start + base + (g < extra)
        bounds.append((start, end))
        start = end
    return bounds


def default_replica_groups(threads: int) -> int:
    """Stacks side by side when `train.replica_groups` is unset: one per intra-op thread, except under
    OMP_WAIT_POLICY=active, where an idle OpenMP thread spins and takes a core from the stacks' workers (2 stacks
    of the decoder LM measured slower than one stack there, as the groups in lockstep before them did; a
    vectorized grid of RNNs 1.19x instead of 1.52x; docs/benchmarks.md §3d), so one stack."""
    return 1 if os.environ.get("OMP_WAIT_POLICY", "").strip().lower() == "active" else threads


def _part(values, start: int, end: int):
    """Rows [start, end) of a per-replica list; a value shared by every replica (or None) as is."""
    return values[start:end] if isinstance(values, list) else values


class ReplicaGroups:
    """Trains `configs` into `run_dirs` (StackedTrainer's arguments) as G stacks side by side; `fit()` returns
    every replica in the order of `configs`."""

    def __init__(self, configs: list[Config], run_dirs: list[Path], *, splits: Splits, tokenizer: Tokenizer,
                 init_weights: dict[str, torch.Tensor] | list[dict[str, torch.Tensor]] | None = None,
                 budgets: list[float | None] | None = None, names: list[str] | None = None, resume: bool = True,
                 quiet: bool = True):
        if not configs or len(configs) != len(run_dirs):
            raise ValueError(f"{len(configs)} configs for {len(run_dirs)} run folders")
        check_stack(configs)  # across all replicas: each stack checks only its own
        cfg = configs[0].train
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        threads = torch.get_num_threads()
        groups = min(cfg.replica_groups or default_replica_groups(threads), len(configs)) \
            if resolve_device(cfg.device).type == "cpu" else 1
        self.bounds = group_bounds(len(configs), groups)
        share, extra = divmod(threads, len(self.bounds))
        self.threads = [max(1, share + (g < extra)) for g in range(len(self.bounds))]  # each stack's intra-op threads
        self.stacks: list[StackedTrainer] = []
        try:
            for g, (start, end) in enumerate(self.bounds):
                self.stacks.append(StackedTrainer(
                    configs[start:end], run_dirs[start:end], splits=splits, tokenizer=tokenizer,
                    init_weights=_part(init_weights, start, end), budgets=_part(budgets, start, end),
                    names=_part(names, start, end), resume=resume, quiet=quiet, bar=g == 0,  # one progress bar
                    encoded=self.stacks[0].encoded if self.stacks else None))
        except BaseException:
            for stack in self.stacks:  # stacks that could not all be built own nothing
                stack.release()
            raise

    def __len__(self) -> int:
        return len(self.stacks)

    @property
    def replicas(self) -> list[Replica]:
        """Every replica, in the order of the configs."""
        return [r for stack in self.stacks for r in stack.replicas]

    @property
    def active(self) -> list[Replica]:
        """The replicas still training."""
        return [r for stack in self.stacks for r in stack.active]

    def fit(self) -> list[Replica]:
        """Train the stacks side by side (one stack: in this thread); returns every replica."""
        if len(self.stacks) == 1:
            return self.stacks[0].fit()
        cancel = threading.Event()

        def train(g: int) -> list[Replica]:
            torch.set_num_threads(self.threads[g])  # per thread: each worker takes its share, the caller keeps its own
            return self.stacks[g].fit(cancel)

        pool = ThreadPoolExecutor(len(self.stacks), thread_name_prefix="decaylab-stack")
        futures: list[Future] = []
        try:
            for g in range(len(self.stacks)):
                futures.append(pool.submit(train, g))
            wait(futures, return_when=FIRST_EXCEPTION)
        except BaseException:  # an interrupt here: every stack stops before its next step
            cancel.set()
            raise
        finally:
            if any(f.done() and f.exception() is not None for f in futures):  # a stack failed: the others stop
                cancel.set()
            pool.shutdown(wait=True)
        errors = [f.exception() for f in futures if f.exception() is not None]
        first = next((e for e in errors if not isinstance(e, Cancelled)), None)
        if first is not None:
            raise first
        return self.replicas
