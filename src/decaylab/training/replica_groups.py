"""On a CPU, a stack's replicas run as groups side by side, one core each, instead of every op split over cores.

A tiny model's ops are too small for torch's intra-op threads to pay (a single run of the tiny preset gains
little from a second core); a stack's replicas, though, are independent all the way through, so G groups of K/G
replicas on G threads (by default one per thread, with one intra-op thread each; with more threads than replicas,
each group gets its share) keep every core busy with no synchronization inside an op, and
what torch runs serially (the dropout draws, a small op's dispatch) runs G-wide too (docs/benchmarks.md §3d has the
measurements). Each group is the architecture's stacked model over leaf views of the engine's stacked parameters
(rows of the same storage), so the optimizer, the decay rules and the checkpoints still see one [K, ...] tensor per
parameter; each thread runs its group's forward and backward (CPU autograd runs on the calling thread), and the
groups' gradients are concatenated into the stacked parameters' `.grad`. Replica k computes what it computes in
the whole stack: the same ops on its own slices, the same dropout draws from its own generator (equal to float
rounding: a GEMM over fewer replicas, on fewer threads, may round its last bit differently).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from decaylab.models.stacked import StackedModel


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


class ReplicaGroups:
    """The stacked `params` [K, ...] as `groups` stacked models (built by `build(views, start, end)`) on threads,
    each with `threads // groups` intra-op threads (at least one)."""

    def __init__(self, params: dict[str, torch.Tensor], groups: int,
                 build: Callable[[dict[str, torch.Tensor], int, int], StackedModel], threads: int | None = None):
        self.params = params
        self.bounds = group_bounds(next(iter(params.values())).size(0), groups)
        self.threads = max(1, (threads or torch.get_num_threads()) // len(self.bounds))
        # leaf views: row slices of the stacked tensors (the optimizer's in-place steps show through them)
        self.views = [{name: p.detach()[start:end].requires_grad_(True) for name, p in params.items()}
                      for start, end in self.bounds]
        self.models = [build(views, start, end) for views, (start, end) in zip(self.views, self.bounds, strict=True)]
        # the groups are the parallelism: each worker gets its share of the threads (set per thread; the caller
        # keeps its own)
        self.pool = ThreadPoolExecutor(len(self.bounds), thread_name_prefix="decaylab-replicas",
                                       initializer=torch.set_num_threads, initargs=(self.threads,))

    def __len__(self) -> int:
        return len(self.bounds)

    def train(self, mode: bool = True) -> ReplicaGroups:
        """Training or eval mode for every group, like nn.Module.train."""
        for model in self.models:
            model.train(mode)
        return self

    def backward(self, loss_of: Callable[[StackedModel], torch.Tensor]) -> torch.Tensor:
        """Per-replica losses [K] (detached): `loss_of(group model)` in each group's thread, its sum's backward
        there too; the stacked parameters' `.grad` is then the groups' gradients, replica-major."""

        def run(g: int) -> torch.Tensor:
            for view in self.views[g].values():
                view.grad = None
            loss = loss_of(self.models[g])
            loss.sum().backward()
            return loss.detach()

        losses = list(self.pool.map(run, range(len(self.bounds))))
        for name, p in self.params.items():  # every group is the same model on the same batch: all or none have one
            grads = [views[name].grad for views in self.views]
            p.grad = None if grads[0] is None else torch.cat(grads)
        return torch.cat(losses)

    def map(self, fn: Callable[[StackedModel], torch.Tensor]) -> torch.Tensor:
        """`fn(group model)` of every group, side by side (no autograd), concatenated over the replicas."""

        def run(g: int) -> torch.Tensor:
            with torch.no_grad():  # grad mode is per thread: the caller's no_grad does not reach the workers
                return fn(self.models[g])

        return torch.cat(list(self.pool.map(run, range(len(self.bounds)))))

    def close(self) -> None:
        """Let the worker threads go (a rebuilt stack makes new groups)."""
        self.pool.shutdown(wait=True)
