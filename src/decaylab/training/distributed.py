"""Data-parallel training: one model on N ranks with DistributedDataParallel, the third engine of the one loop.

torchrun (or `decaylab train --nproc N`, which starts it) runs N copies of `decaylab train`; each becomes a rank of
one process group (gloo on the CPU, NCCL for the model's tensors on GPUs). What each rank does:

- rank 0 alone decides what to train (checks, the config, `--resume`), owns the run folder (its lock) and writes it
  (tokenizer, config, metrics, checkpoints); it sends the others the config, the tokenizer and, on resume, the
  restored weights, optimizer, schedule and progress, so the other ranks never read or write the folder and need
  no shared filesystem (only the data);
- every rank runs the same loop (loop.py) on the same global batches, training the strided share `Shard.cut` of
  each; the step divides a share's token sum by the global batch's token count and scales it by N, so DDP's mean
  over ranks is the one-process gradient of the global batch. The penalty (l2, l1) is added on every rank unscaled:
  it is the same on each, so the mean applies it once. Clipping and the optimizer step (decoupled decay included)
  then run on the same averaged gradients on every replica, which stay equal;
- rank 0 evaluates and sends the row to the others, so every rank takes the same decisions (best, early stop,
  divergence) at the same step; checkpoints gather every rank's RNG state, so a resume with the same N repeats
  the uninterrupted run.
"""

from __future__ import annotations

import atexit
import inspect
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from tokenizers import Tokenizer

from decaylab.config import Config, build_config, config_to_dict
from decaylab.data.prepare import Encoded, epoch_groups
from decaylab.errors import RankError, UserError
from decaylab.runfolder.layout import RunPaths, load_run_config
from decaylab.runfolder.lock import FolderLock, folder_problem
from decaylab.training.loop import KILL_ENV, RunState, Shard
from decaylab.training.trainer import Trainer, TrainResult

T = TypeVar("T")

# Fault injection for the resume tests: with DECAYLAB_KILL_AFTER_STEP, only this rank kills itself (every rank does
# without it), as when one node of a job dies.
KILL_RANK_ENV = "DECAYLAB_KILL_RANK"
# A collective waits this long for a slow rank (rank 0 training the tokenizer, evaluating or writing a checkpoint).
TIMEOUT = timedelta(minutes=30)


def launched_world() -> int:
    """The number of ranks torchrun started this process among (WORLD_SIZE), 1 when it was not started by torchrun."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise UserError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r}: not a number (set by torchrun)") from None


def launched_rank() -> int:
    """This process's rank (RANK, set by torchrun); 0 when it was not started by torchrun."""
    return int(os.environ.get("RANK", "0") or 0)


class PeerStopped(Exception):  # noqa: N818 (not an error of this rank: rank 0 reports it)
    """Rank 0 stopped (an error it reports itself); the other ranks leave without a word."""


@dataclass
class Ranks:
    """This process's place in the process group and the collectives the engine needs."""

    rank: int
    world: int
    local_rank: int
    backend: str = "gloo"
    device_group: Any = None  # the group the model's tensors travel in (NCCL on GPUs; None: the gloo default)

    @property
    def shard(self) -> Shard:
        """The share of each global batch this rank trains."""
        return Shard(self.rank, self.world)

    @classmethod
    def start(cls) -> Ranks:
        """Join the process group torchrun described in the environment (MASTER_ADDR/PORT, RANK, WORLD_SIZE)."""
        rank, world, local = launched_rank(), launched_world(), int(os.environ.get("LOCAL_RANK", "0") or 0)
        kill_rank = os.environ.get(KILL_RANK_ENV)
        if kill_rank is not None and kill_rank != str(rank):
            os.environ.pop(KILL_ENV, None)
        if not dist.is_initialized():
            # gloo for everything the host exchanges (config, tokenizer, rows, RNG states); a GPU run adds an NCCL
            # group for the model's tensors once the device is known (`join_device_group`). Joined once per
            # process and left at its exit: a group destroyed and joined again at once can meet the old group's
            # keys in torchrun's store (another run in the same ranks then hangs).
            dist.init_process_group("gloo", timeout=TIMEOUT)
            atexit.register(dist.destroy_process_group)
        return cls(rank, world, local)

    def use_device(self, device: torch.device) -> torch.device:
        """This rank's device: the GPU of its local rank (with an NCCL group for the model), or the CPU."""
        if device.type != "cuda":
            return device
        count = torch.cuda.device_count()
        if self.local_rank >= count:
            raise RankError(f"rank {self.rank}: local rank {self.local_rank} needs a GPU of its own, but this "
                            f"machine has {count}; start at most {count} processes per node")
        device = torch.device("cuda", self.local_rank)
        torch.cuda.set_device(device)
        return device

    def join_device_group(self, device: torch.device) -> None:
        """Create the NCCL group for a GPU run (a collective: every rank calls it at the same point)."""
        if device.type == "cuda" and self.device_group is None:
            self.device_group = dist.new_group(backend="nccl", timeout=TIMEOUT)
            self.backend = "nccl"

    def broadcast(self, value: Any = None) -> Any:
        """Rank 0's `value` on every rank (pickled, over gloo)."""
        box = [value if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's `value` on rank 0, in rank order (None on the others)."""
        out: list[Any] | None = [None] * self.world if self.rank == 0 else None
        dist.gather_object(value, out, dst=0)
        return out

    def from_rank0(self, make: Callable[[], T]) -> T:
        """What rank 0's `make()` returns, on every rank. If it raises, rank 0 raises it (and reports it) and the
        others raise `PeerStopped` instead of waiting for it."""
        if self.rank == 0:
            try:
                value = make()
            except BaseException:
                self.broadcast(("failed", None))
                raise
            self.broadcast(("ok", value))
            return value
        status, value = self.broadcast()
        if status != "ok":
            raise PeerStopped
        return value


def check_shares(config: Config, train_data: Encoded, world: int) -> None:
    """Refuse N ranks when some batch of the run holds fewer than N examples (a rank would get none)."""
    for epoch in range(config.train.epochs):
        groups = epoch_groups(config, train_data, epoch)
        index, group = min(enumerate(groups), key=lambda item: len(item[1]), default=(0, list(range(world))))
        if len(group) < world:
            raise UserError(f"data-parallel training on {world} processes: batch {index + 1} of epoch {epoch + 1} "
                            f"holds {len(group)} example{'s' if len(group) != 1 else ''}, so a rank would get none; "
                            f"use at most {len(group)} processes, or raise train.batch_tokens (each rank takes a "
                            "share of every batch)")


def rank_seed(seed: int, rank: int) -> int:
    """The dropout seed of rank `rank` > 0 (rank 0 keeps the run's own stream): distinct masks on each share."""
    return seed + 1_000_003 * rank


def _cpu(value: Any) -> Any:
    """`value` with every tensor moved to the CPU (an optimizer state sent to ranks on other GPUs)."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu(v) for v in value)
    return value


class DataParallelTrainer(Trainer):
    """The Trainer as one rank of a data-parallel run (the module docstring says what each rank does)."""

    def __init__(self, config: Config, run_dir: Path, ranks: Ranks, **kwargs: Any) -> None:
        self.ranks = ranks
        self.shard = ranks.shard
        if ranks.rank != 0:
            kwargs["quiet"] = True  # rank 0 speaks for the run
        super().__init__(config, run_dir, **kwargs)

    def _build(self, *args: Any) -> None:
        self.device = self.ranks.use_device(self.device)
        super()._build(*args)
        check_shares(self.config, self.train_data, self.ranks.world)

    def _prepare_run(self, run: RunState) -> dict[str, Any] | None:
        """Rank 0 restores or starts the run; every rank then takes its weights, optimizer, schedule, progress
        and RNG state, and the model is wrapped in DDP."""
        ranks = self.ranks

        def lead() -> dict[str, Any]:
            state = Trainer._prepare_run(self, run)
            return {"progress": run.progress, "history": run.history,
                    "optimizer": _cpu(self.optimizer.state_dict()), "scheduler": self.scheduler.state_dict(),
                    "rng": None if state is None else state.get("rng_ranks")}

        shared = ranks.from_rank0(lead)
        ranks.join_device_group(self.device)
        # every rank starts from rank 0's weights (fresh, or restored from the checkpoint)
        for tensor in self.model.state_dict().values():
            dist.broadcast(tensor, src=0, group=ranks.device_group)
        if ranks.rank != 0:
            run.progress, run.history = shared["progress"], shared["history"]
            self.optimizer.load_state_dict(shared["optimizer"])
            self.scheduler.load_state_dict(shared["scheduler"])
        rngs = shared["rng"]
        if rngs is not None and len(rngs) == ranks.world:
            self._set_rng(rngs[ranks.rank])
        elif ranks.rank != 0:
            # a fresh run, or one resumed on another number of ranks: a stream of this rank's own (rank 0 keeps
            # the run's, restored from the checkpoint when resumed)
            torch.manual_seed(rank_seed(self.config.seed, ranks.rank) + run.progress["step"])
        # Buffers are equal on every rank and never change in a step: DDP need not send them before each forward.
        quiet_buffers = ({"forward_sync_buffers": False}
                         if "forward_sync_buffers" in inspect.signature(torch.nn.parallel.DistributedDataParallel)
                         .parameters else {"broadcast_buffers": False})
        module = self.forward if isinstance(self.forward, torch.nn.Module) else self.model  # torch.compile'd too
        self.forward = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            process_group=ranks.device_group, **quiet_buffers)
        return None

    def _backward(self, task: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
        """Gradients of the global batch's task loss + penalty through DDP's mean over ranks; returns the global
        [task loss, task loss + penalty]."""
        # `task` is this share's token sum over the global batch's tokens: N·task averages to the global mean's
        # gradient; the penalty is the same on every rank, so its average is itself (applied once, not N times)
        (task * self.ranks.world + penalty).backward()
        total = task.detach().float().reshape(1)
        dist.all_reduce(total, group=self.ranks.device_group)  # the shares' parts sum to the global batch's loss
        task_loss = total[0]
        return torch.stack([task_loss, task_loss + penalty.detach().float()])

    def evaluate_runs(self) -> list[dict[str, float]]:
        """Rank 0 evaluates (the one-process numbers) and every rank gets its row."""
        fields = super().evaluate_runs() if self.ranks.rank == 0 else None
        return self.ranks.broadcast(fields)

    def save(self, k: int, run: RunState, best: bool) -> None:
        """Rank 0 writes the checkpoint; `last` records every rank's RNG state."""
        if not best:
            self._rng_ranks = self.ranks.gather(self._get_rng())  # a collective: every rank saves at the same steps
        if self.shard.writes:
            super().save(k, run, best)

    def _state(self, progress: dict[str, Any]) -> dict[str, Any]:
        state = super()._state(progress)
        state["rng_ranks"] = self._rng_ranks  # rank r's (torch, CUDA) generator states, for a resume on N ranks
        return state

    def _get_rng(self) -> list[torch.Tensor]:
        states = [torch.get_rng_state()]
        if self.device.type == "cuda":
            states.append(torch.cuda.get_rng_state(self.device))
        return states

    def _set_rng(self, states: list[torch.Tensor]) -> None:
        torch.set_rng_state(states[0])
        if self.device.type == "cuda" and len(states) > 1:
            torch.cuda.set_rng_state(states[1], self.device)


@dataclass
class Plan:
    """What rank 0 decided to train: a new run of `config` into `run_dir`, or the run there resumed."""

    config: Config | None  # None: resume the run in run_dir with its saved config
    run_dir: Path
    overwrite: bool = False


def train_ranks(plan: Callable[[], Plan], quiet: bool = False) -> TrainResult | None:
    """Train one run data-parallel as this rank of torchrun's job; rank 0 gets the result, the others None.

    `plan` runs on rank 0 alone (it checks the options and reads the folder); an error it raises is rank 0's to
    report, and the other ranks stop without a word (`PeerStopped`).
    """
    ranks = Ranks.start()
    trainer: DataParallelTrainer | None = None

    def lead() -> dict[str, Any]:
        nonlocal trainer
        chosen = plan()
        if chosen.config is None:
            trainer = _resume_on_rank0(chosen.run_dir, ranks, quiet)
        else:
            trainer = DataParallelTrainer(chosen.config, chosen.run_dir, ranks, quiet=quiet,
                                          overwrite=chosen.overwrite)
        return {"config": config_to_dict(trainer.config), "run_dir": str(chosen.run_dir),
                "resume": trainer.resume, "tokenizer": trainer.tokenizer.to_str()}

    try:
        setup = ranks.from_rank0(lead)
    except PeerStopped:
        raise SystemExit(2) from None
    if ranks.rank != 0:
        try:
            trainer = DataParallelTrainer(
                build_config(setup["config"], origin="rank 0"), Path(setup["run_dir"]), ranks,
                tokenizer=Tokenizer.from_str(setup["tokenizer"]), resume=setup["resume"])
        except RankError:
            raise
        except UserError as exc:  # this rank's own trouble (its data, its GPU): it says so itself
            raise RankError(f"rank {ranks.rank}: {exc}") from None
    assert trainer is not None
    try:
        result = trainer.fit()
    except PeerStopped:
        raise SystemExit(2) from None
    except UserError:
        if ranks.rank == 0:
            raise
        # an error every rank meets at the same step (divergence): rank 0 reports it once
        raise SystemExit(2) from None
    except RuntimeError as exc:
        if not peer_lost(exc):
            raise
        # another rank died mid-collective (killed, out of memory, its node gone): one line, not gloo's traceback;
        # torchrun then stops the job
        print(f"error: rank {ranks.rank}: lost its connection to another rank, which stopped ({peer_lost(exc)}); "
              f"{trainer.paths.root} keeps its last checkpoint", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    return result if ranks.rank == 0 else None


PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe")  # gloo's words for it


def peer_lost(exc: BaseException) -> str | None:
    """How a collective failed because another rank went away (not a bug of this rank), or None."""
    text = str(exc)
    sign = next((sign for sign in PEER_GONE if sign in text), None)
    if sign is None and isinstance(exc, getattr(dist, "DistNetworkError", ())):
        sign = (text.strip().splitlines() or ["network error"])[0][:120]
    return sign


def _resume_on_rank0(run_dir: Path, ranks: Ranks, quiet: bool) -> DataParallelTrainer:
    """The run in `run_dir` ready to resume on rank 0, with `resume_run`'s checks, owning the folder."""
    problem = folder_problem(run_dir)
    if problem is not None:
        raise UserError(f"--resume {problem}")
    load_run_config(run_dir)  # not a run folder: refused before the lock file is written into it
    with FolderLock(run_dir):  # the trainer takes it again (re-entrant) and keeps it to the end of fit()
        config = load_run_config(run_dir)  # read as the owner
        paths = RunPaths(run_dir)
        if not (paths.last.exists() or paths.last.with_name("last.old").exists()):
            raise UserError(f"{run_dir}: no checkpoints/last to resume from")
        return DataParallelTrainer(config, run_dir, ranks, resume=True, quiet=quiet)


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now (for the rendezvous of `--nproc`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(args: list[str], nproc: int, run_dir: Path) -> int:
    """Run `decaylab ARGS` as `nproc` ranks on this machine through torchrun (in this process, as its agent);
    returns the exit code: 0, the ranks' own (2 after the one-line error rank 0 printed), or 1 for a dead rank."""
    import logging

    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    # the agent's own log lines (thread defaults, a failed rank's report) would bury the ranks' one-line errors;
    # what a failure means is said below in one line
    logging.getLogger("torch.distributed").setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    options = torchrun.get_args_parser().parse_args(
        ["--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
         "--module", "decaylab.cli", *args])
    try:
        torchrun.run(options)
    except ChildFailedError as exc:
        codes = {rank: failure.exitcode for rank, failure in exc.failures.items()}
        # The cause: a rank killed by a signal torchrun did not send (it stops the others with SIGTERM), else one
        # that said why (exit code 2: a one-line error), else the first to fail.
        killed = sorted(rank for rank, code in codes.items() if code < 0 and -code != signal.SIGTERM)
        if not killed and any(code == 2 for code in codes.values()):
            return 2
        rank = killed[0] if killed else exc.get_first_failure()[0]
        code = codes[rank]
        why = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
        print(f"error: rank {rank} of {nproc} {why}; the others were stopped; {run_dir} keeps its last checkpoint: "
              f"continue with `decaylab train --resume {run_dir} --nproc {nproc}`", file=sys.stderr)
        return 1
    return 0


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
