"""Replica groups (training/replica_groups.py): a stack's replicas split into groups that run side by side on
threads compute what the one stack computes (losses, gradients, dropout draws, evaluation), and the engine with
groups (`train.threads` > 1 on the CPU) still follows each replica's sequential run, also when replicas leave."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from decaylab.models import build_stacked
from decaylab.training import Trainer
from decaylab.training.replica_groups import ReplicaGroups, group_bounds
from decaylab.training.stacked import StackedTrainer, default_replica_groups
from tests.test_vectorized import assert_same_trajectory, run_both, variant
from tests.test_vectorized_transformer import ARCHS, arch_config, arch_data, stacked_and_singles


@pytest.mark.parametrize("replicas,groups,expected", [
    (8, 2, [(0, 4), (4, 8)]), (5, 2, [(0, 3), (3, 5)]), (3, 8, [(0, 1), (1, 2), (2, 3)]), (4, 1, [(0, 4)]),
    (7, 3, [(0, 3), (3, 5), (5, 7)])])
def test_group_bounds_cover_every_replica_once(replicas: int, groups: int, expected: list) -> None:
    assert group_bounds(replicas, groups) == expected


@pytest.mark.parametrize("arch", ARCHS)
def test_groups_compute_the_one_stacks_losses_gradients_and_masks(arch: str) -> None:
    """Dropout on (per-replica rates, attention dropout): each group's replicas draw with their own generators, so
    the groups' losses and gradients are the whole stack's; evaluation through `map` too."""
    dropouts = (0.1, 0.0, 0.3)
    models, params, stacked, batch = stacked_and_singles(arch, dropouts=dropouts, attention_dropout=0.2)
    states = [g.get_state() for g in stacked.generators]
    whole = stacked(*batch)
    whole.sum().backward()
    expected = {name: p.grad.clone() for name, p in params.items()}
    cfg = stacked.cfg
    generators = [torch.Generator().set_state(s) for s in states]  # the same streams from the same start
    seen: set[str] = set()

    def build(views, start, end):
        return build_stacked(cfg, views, list(dropouts[start:end]), generators[start:end])

    def loss_of(model):
        seen.add(threading.current_thread().name)
        return model(*batch)

    groups = ReplicaGroups(params, 2, build)
    try:
        assert groups.bounds == [(0, 2), (2, 3)]
        losses = groups.backward(loss_of)
        torch.testing.assert_close(losses, whole.detach(), rtol=0, atol=1e-6)
        for name, p in params.items():
            torch.testing.assert_close(p.grad, expected[name], rtol=1e-5, atol=1e-7, msg=name)
        assert len(seen) == 2 and threading.current_thread().name not in seen  # both groups ran on the workers
        evaluated = groups.train(False).map(lambda model: model(*batch))
        torch.testing.assert_close(evaluated, stacked.eval()(*batch).detach(), rtol=0, atol=1e-6)
        assert not evaluated.requires_grad
    finally:
        groups.close()


@pytest.mark.parametrize("arch", [*ARCHS, "rnn"])
def test_the_engine_with_groups_follows_each_sequential_run(arch: str, tmp_path: Path) -> None:
    """`train.threads=2`: two groups of replicas; every replica still ends on its sequential run's trajectory."""
    settings = ("model.dropout=0.1", "train.clip_norm=0.5", "train.schedule=cosine", "train.warmup_steps=2",
                "train.eval_every=4", "train.max_steps=12", "train.lr=0.003", "train.threads=2")
    # the RNN's masks agree with a sequential run's in distribution only: compare it without dropout
    base = arch_config(arch, *settings, *(["model.dropout=0"] if arch == "rnn" else []))
    configs = [variant(base, mode="none", weight_decay=0.0),
               variant(base, mode="decoupled", weight_decay=0.3),
               variant(base, mode="coupled", weight_decay=0.02),
               variant(base, mode="l2", weight_decay=0.02),
               variant(base, mode="none", weight_decay=0.0, l1=0.003)]
    splits, tokenizer = arch_data(arch)
    threads = torch.get_num_threads()
    try:
        trainer = StackedTrainer(configs, [tmp_path / f"v{i}" for i in range(len(configs))], splits=splits,
                                 tokenizer=tokenizer)
        assert trainer.replica_groups is not None and trainer.replica_groups.bounds == [(0, 3), (3, 5)]
        replicas = trainer.fit()
        assert trainer.replica_groups is None  # the workers are let go when the fit ends
        singles = [Trainer(c, tmp_path / f"s{i}", splits=splits, tokenizer=tokenizer, quiet=True).fit().history
                   for i, c in enumerate(configs)]
    finally:
        torch.set_num_threads(threads)
    for replica, single in zip(replicas, singles, strict=True):
        assert replica.status == "done"
        assert_same_trajectory(replica.history, single, tol=1e-4)


def test_groups_are_rebuilt_when_replicas_leave_the_stack(tmp_path: Path) -> None:
    """One replica diverges and one stops at its budget: the stack (in groups) goes on with the others, each still
    on its sequential run's trajectory."""
    base = arch_config("transformer", "model.dropout=0", "train.optimizer=sgd", "train.momentum=0", "train.lr=0.5",
                       "train.clip_norm=null", "train.eval_every=2", "train.patience=1", "train.epochs=4",
                       "train.threads=2")
    configs = [variant(base, mode="none", weight_decay=0.0),
               variant(base, mode="l2", weight_decay=1e6),  # the penalty overflows within a few steps
               variant(base, mode="decoupled", weight_decay=0.05),
               variant(base, mode="decoupled", weight_decay=0.1)]
    threads = torch.get_num_threads()
    try:
        replicas, singles = run_both(configs, tmp_path, arch_data("transformer"), budgets=[None, None, None, 1])
    finally:
        torch.set_num_threads(threads)
    assert [r.status for r in replicas] == ["done", "diverged", "done", "done"]
    for replica, single in zip(replicas, singles, strict=True):
        assert_same_trajectory(replica.history, single[:len(replica.history)])
    assert len(replicas[1].history) == len(singles[1])
    assert replicas[3].history[-1]["epoch"] == 1


@pytest.mark.parametrize("setting,threads,expected", [(None, 2, [(0, 2), (2, 3)]), (1, 2, None),
                                                      (3, 2, [(0, 1), (1, 2), (2, 3)]), (None, 1, None)])
def test_train_replica_groups_sets_how_the_stack_splits(setting: int | None, threads: int, expected, tmp_path: Path
                                                        ) -> None:
    """Default: one group per thread (at most one per replica); 1 or a single thread: one stack; the threads are
    shared among the groups (at least one each)."""
    extra = [f"train.replica_groups={setting}"] if setting else []
    base = arch_config("decoder", "train.max_steps=2", f"train.threads={threads}", *extra)
    configs = [variant(base, mode="decoupled", weight_decay=w) for w in (0.0, 0.1, 0.2)]
    splits, tokenizer = arch_data("decoder")
    previous = torch.get_num_threads()
    try:
        trainer = StackedTrainer(configs, [tmp_path / f"v{i}" for i in range(3)], splits=splits, tokenizer=tokenizer)
        groups = trainer.replica_groups
        assert (groups.bounds if groups else None) == expected
        if groups:
            assert groups.threads == max(1, threads // len(expected))
        trainer.fit()
    finally:
        torch.set_num_threads(previous)


def test_one_stack_by_default_where_idle_openmp_threads_spin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Under OMP_WAIT_POLICY=active a waiting OpenMP thread spins and takes a core from the groups: one stack
    unless `train.replica_groups` asks for groups."""
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert default_replica_groups(4) == 1
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    assert default_replica_groups(4) == 4
    monkeypatch.setenv("OMP_WAIT_POLICY", " active ")
    splits, tokenizer = arch_data("decoder")
    previous = torch.get_num_threads()
    try:
        for setting, expected in ((None, None), (2, [(0, 2), (2, 3)])):
            extra = [f"train.replica_groups={setting}"] if setting else []
            base = arch_config("decoder", "train.max_steps=1", "train.threads=2", *extra)
            configs = [variant(base, mode="decoupled", weight_decay=w) for w in (0.0, 0.1, 0.2)]
            trainer = StackedTrainer(configs, [tmp_path / f"{setting}-{i}" for i in range(3)], splits=splits,
                                     tokenizer=tokenizer)
            assert (trainer.replica_groups.bounds if trainer.replica_groups else None) == expected
            trainer.fit()
    finally:
        torch.set_num_threads(previous)
