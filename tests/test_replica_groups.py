"""Replica groups (training/replica_groups.py): a vectorized run's replicas as stacks side by side, one per thread,
each a `StackedTrainer` of its share; every replica still follows its sequential run (also when replicas leave),
an error in one stack stops the others, and a stack that could not be built leaves no folder locked."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from decaylab.runfolder.lock import holder
from decaylab.training import Trainer
from decaylab.training.replica_groups import ReplicaGroups, default_replica_groups, group_bounds
from decaylab.training.stacked import StackedTrainer
from tests.test_vectorized import assert_same_trajectory, variant
from tests.test_vectorized_transformer import ARCHS, arch_config, arch_data


@pytest.fixture(autouse=True)
def _keep_threads():
    """ReplicaGroups applies `train.threads` to the calling thread, as the Trainer does: restore it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("replicas,groups,expected", [
    (8, 2, [(0, 4), (4, 8)]), (5, 2, [(0, 3), (3, 5)]), (3, 8, [(0, 1), (1, 2), (2, 3)]), (4, 1, [(0, 4)]),
    (7, 3, [(0, 3), (3, 5), (5, 7)])])
def test_group_bounds_cover_every_replica_once(replicas: int, groups: int, expected: list) -> None:
    assert group_bounds(replicas, groups) == expected


def _record_fits(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """(thread name, intra-op threads) of every StackedTrainer.fit from here on."""
    seen: list[tuple[str, int]] = []
    fit = StackedTrainer.fit

    def recorded(self, cancel=None):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return fit(self, cancel)

    monkeypatch.setattr(StackedTrainer, "fit", recorded)
    return seen


@pytest.mark.parametrize("arch", [*ARCHS, "rnn"])
def test_stacks_side_by_side_follow_each_sequential_run(arch: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`train.threads=2`: two stacks on two worker threads with one intra-op thread each; every replica ends on
    its sequential run's trajectory (modes, clipping, cosine warmup, dropout)."""
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
    seen = _record_fits(monkeypatch)
    groups = ReplicaGroups(configs, [tmp_path / f"v{i}" for i in range(len(configs))], splits=splits,
                           tokenizer=tokenizer)
    assert groups.bounds == [(0, 3), (3, 5)] and groups.threads == [1, 1]
    assert groups.stacks[1].encoded is groups.stacks[0].encoded  # the data is encoded once
    replicas = groups.fit()
    assert len({name for name, _ in seen}) == 2 and threading.current_thread().name not in {n for n, _ in seen}
    assert {threads for _, threads in seen} == {1}
    assert torch.get_num_threads() == 2  # the caller keeps its own
    singles = [Trainer(c, tmp_path / f"s{i}", splits=splits, tokenizer=tokenizer, quiet=True).fit().history
               for i, c in enumerate(configs)]
    assert [r.name for r in replicas] == [f"v{i}" for i in range(len(configs))]
    for replica, single in zip(replicas, singles, strict=True):
        assert replica.status == "done"
        assert_same_trajectory(replica.history, single, tol=1e-4)


def test_replicas_leave_their_own_stack(tmp_path: Path) -> None:
    """One replica diverges and one stops at its budget, in different stacks: each stack goes on with the others,
    every replica still on its sequential run's trajectory."""
    base = arch_config("transformer", "model.dropout=0", "train.optimizer=sgd", "train.momentum=0", "train.lr=0.5",
                       "train.clip_norm=null", "train.eval_every=2", "train.patience=1", "train.epochs=4",
                       "train.threads=2")
    configs = [variant(base, mode="none", weight_decay=0.0),
               variant(base, mode="l2", weight_decay=1e6),  # the penalty overflows within a few steps
               variant(base, mode="decoupled", weight_decay=0.05),
               variant(base, mode="decoupled", weight_decay=0.1)]
    splits, tokenizer = arch_data("transformer")
    groups = ReplicaGroups(configs, [tmp_path / f"v{i}" for i in range(4)], splits=splits, tokenizer=tokenizer,
                           budgets=[None, None, None, 1])
    assert groups.bounds == [(0, 2), (2, 4)]
    replicas = groups.fit()
    singles = []
    for i, cfg in enumerate(configs):
        try:
            singles.append(Trainer(cfg, tmp_path / f"s{i}", splits=splits, tokenizer=tokenizer, quiet=True).fit()
                           .history)
        except Exception:  # diverged
            singles.append(None)
    assert [r.status for r in replicas] == ["done", "diverged", "done", "done"]
    assert singles[1] is None
    for replica, single in zip(replicas, singles, strict=True):
        if single is not None:
            assert_same_trajectory(replica.history, single[:len(replica.history)])
    assert replicas[3].history[-1]["epoch"] == 1


@pytest.mark.parametrize("setting,threads,expected,each", [
    (None, 2, [(0, 2), (2, 3)], [1, 1]), (1, 2, [(0, 3)], [2]), (3, 2, [(0, 1), (1, 2), (2, 3)], [1, 1, 1]),
    (None, 1, [(0, 3)], [1]), (2, 4, [(0, 2), (2, 3)], [2, 2]), (2, 3, [(0, 2), (2, 3)], [2, 1])])
def test_train_replica_groups_sets_how_the_replicas_split(setting: int | None, threads: int, expected, each: list,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Default: one stack per thread (at most one per replica); 1 or a single thread: one stack; the threads are
    shared among the stacks (at least one each, a remainder to the first), and each stack trains with its share."""
    extra = [f"train.replica_groups={setting}"] if setting else []
    base = arch_config("decoder", "train.max_steps=2", f"train.threads={threads}", *extra)
    configs = [variant(base, mode="decoupled", weight_decay=w) for w in (0.0, 0.1, 0.2)]
    splits, tokenizer = arch_data("decoder")
    groups = ReplicaGroups(configs, [tmp_path / f"v{i}" for i in range(3)], splits=splits, tokenizer=tokenizer)
    assert groups.bounds == expected and len(groups) == len(expected) and groups.threads == each
    seen = _record_fits(monkeypatch)
    assert [r.status for r in groups.fit()] == ["done"] * 3
    if len(expected) > 1:
        assert sorted(n for _, n in seen) == sorted(each)


def test_one_stack_by_default_where_idle_openmp_threads_spin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Under OMP_WAIT_POLICY=active a waiting OpenMP thread spins and takes a core from the other stacks: one stack
    unless `train.replica_groups` asks for more."""
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert default_replica_groups(4) == 1
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    assert default_replica_groups(4) == 4
    monkeypatch.setenv("OMP_WAIT_POLICY", " active ")
    splits, tokenizer = arch_data("decoder")
    for setting, expected in ((None, [(0, 3)]), (2, [(0, 2), (2, 3)])):
        extra = [f"train.replica_groups={setting}"] if setting else []
        base = arch_config("decoder", "train.max_steps=1", "train.threads=2", *extra)
        configs = [variant(base, mode="decoupled", weight_decay=w) for w in (0.0, 0.1, 0.2)]
        groups = ReplicaGroups(configs, [tmp_path / f"{setting}-{i}" for i in range(3)], splits=splits,
                               tokenizer=tokenizer)
        assert groups.bounds == expected
        groups.fit()


def test_an_error_in_one_stack_stops_the_others_and_a_resume_finishes(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The second stack fails at its fourth step: the first stops before its next step instead of training on, the
    error is raised, every folder is free again, and a resume trains every replica to the end."""
    base = arch_config("decoder", "train.epochs=100", "train.max_steps=40", "train.eval_every=2", "train.threads=2")
    configs = [variant(base, mode="decoupled", weight_decay=w) for w in (0.0, 0.1, 0.2, 0.3)]
    folders = [tmp_path / f"v{i}" for i in range(4)]
    splits, tokenizer = arch_data("decoder")
    groups = ReplicaGroups(configs, folders, splits=splits, tokenizer=tokenizer)
    failing, slow = groups.stacks[1], groups.stacks[0]
    step = StackedTrainer.train_step
    calls = {id(failing): 0}

    def patched(self, batch):
        if self is failing:
            calls[id(self)] += 1
            if calls[id(self)] == 4:
                raise RuntimeError("disk on fire")
        else:
            time.sleep(0.05)  # the other stack is still training when the error comes
        return step(self, batch)

    monkeypatch.setattr(StackedTrainer, "train_step", patched)
    with pytest.raises(RuntimeError, match="disk on fire"):
        groups.fit()
    assert all(r.status is None for r in slow.replicas)  # stopped, not finished
    assert slow.replicas[0].progress["step"] < 40
    assert all(holder(folder) is None for folder in folders)
    monkeypatch.setattr(StackedTrainer, "train_step", step)
    resumed = ReplicaGroups(configs, folders, splits=splits, tokenizer=tokenizer).fit()
    assert [r.status for r in resumed] == ["done"] * 4
    assert all(r.history[-1]["step"] == 40 for r in resumed)


def test_configs_are_checked_across_stacks_and_a_failed_build_locks_nothing(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    base = arch_config("decoder", "train.max_steps=2", "train.threads=2")
    splits, tokenizer = arch_data("decoder")
    other = base.model_copy(update={"train": base.train.model_copy(update={"lr": 0.5})})
    configs = [variant(base, mode="decoupled", weight_decay=w) for w in (0.0, 0.1, 0.2)] + [other]
    with pytest.raises(ValueError, match="may differ only in"):  # replica 3 (the second stack) differs in train.lr
        ReplicaGroups(configs, [tmp_path / f"a{i}" for i in range(4)], splits=splits, tokenizer=tokenizer)
    assert not any(tmp_path.iterdir())  # refused before anything was written

    built = StackedTrainer.__init__

    def second_fails(self, configs, run_dirs, **kwargs):
        if kwargs.get("encoded") is not None:
            raise RuntimeError("cannot build")
        built(self, configs, run_dirs, **kwargs)

    monkeypatch.setattr(StackedTrainer, "__init__", second_fails)
    folders = [tmp_path / f"b{i}" for i in range(4)]
    with pytest.raises(RuntimeError, match="cannot build"):
        ReplicaGroups(configs[:3] + configs[:1], folders, splits=splits, tokenizer=tokenizer)
    assert all(holder(folder) is None for folder in folders[:2])  # the first stack let its folders go


def test_every_stack_reports_its_evaluations_and_one_shows_the_bar(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Not quiet: each stack prints its evaluation line (naming its own replicas); only the first may draw a bar."""
    base = arch_config("decoder", "train.max_steps=2", "train.eval_every=2", "train.threads=2")
    configs = [variant(base, mode="decoupled", weight_decay=w) for w in (0.0, 0.1, 0.2, 0.3)]
    splits, tokenizer = arch_data("decoder")
    groups = ReplicaGroups(configs, [tmp_path / f"r{i}" for i in range(4)], splits=splits, tokenizer=tokenizer,
                           quiet=False)
    assert [s.bar for s in groups.stacks] == [True, False] and not any(s.quiet for s in groups.stacks)
    groups.fit()
    lines = [line for line in capsys.readouterr().err.splitlines() if "val loss" in line]
    assert len(lines) == 2
    assert {frozenset(w.split("=")[0] for w in line.split(": val loss ")[1].split()) for line in lines} == {
        frozenset({"r0", "r1"}), frozenset({"r2", "r3"})}
