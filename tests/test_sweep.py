"""Sweeps end to end on the fixture pairs with the tiny preset (seconds each)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from decaylab.files import read_jsonl
from decaylab.sweep import sweep
from decaylab.training import Trainer
from decaylab.training.loop import KILL_ENV, TrainingLoop
from tests.conftest import TINY_OVERRIDES, tiny_config

CLI = [sys.executable, "-m", "decaylab.cli"]
VOLATILE = {"wall_s", "tokens_per_s"}


def lock_pid(folder: Path) -> int:
    """The PID the folder's lock file names: the process that owned it last."""
    from decaylab.runfolder.lock import LOCK_FILE

    return int((folder / LOCK_FILE).read_text().split("pid: ")[1].split()[0])


def stable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in VOLATILE} for row in rows]


def tiny_flags(*extra: str) -> list[str]:
    """The tiny config as `decaylab sweep` flags."""
    flags = []
    for override in TINY_OVERRIDES + list(extra):
        flags += ["--set", override]
    return flags


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("grid") / "g"
    result = sweep(tiny_config(), strategy="grid", lambdas="1e-2,3", modes="coupled", output=out)
    return out, result


def test_grid_picks_the_lowest_val_loss_and_writes_the_folder(grid_run) -> None:
    out, result = grid_run
    rows = read_jsonl(out / "trials.jsonl")
    assert [(r["mode"], r["lambda"]) for r in rows] == [("none", 0.0), ("coupled", 1e-2), ("coupled", 3.0)]
    losses = {r["lambda"]: r["best_val_loss"] for r in rows}
    assert len(set(losses.values())) == 3  # λ really changes the outcome
    best = min(losses, key=losses.get)
    assert result.best["lambda"] == best
    summary = json.loads((out / "summary.json").read_text())
    assert summary["chosen"] == {"lambda": best, "mode": result.best["mode"], "dropout": 0.1, "rule": "min",
                                 "metric": "loss", "mean": losses[best], "se": None}
    assert [(e["lambda"], e["n_folds"]) for e in summary["table"]] == [(0.0, 1), (1e-2, 1), (3.0, 1)]
    assert summary["final"]["test"]["loss"] > 0 and summary["compute_s"] > 0
    assert summary["final"]["reused_trial"] == rows[[r["lambda"] for r in rows].index(best)]["trial"]
    for row in rows:  # one normal run folder per trial
        run = out / row["run"]
        assert (run / "config.yaml").is_file() and (run / "checkpoints" / "best" / "model.safetensors").is_file()
        assert set(row) >= {"lambda", "mode", "fold", "epochs", "best_val_loss", "val_ppl", "bleu", "chrf", "gap",
                            "wall_s", "status"}
    assert json.loads((out / "final" / "eval.json").read_text())["test"]["examples"] == 7
    assert result.table == summary["table"] and result.final == summary["final"]


def test_workers_give_the_same_results_as_one_process(grid_run, tmp_path: Path) -> None:
    out, _ = grid_run
    result = sweep(tiny_config(), strategy="grid", lambdas="1e-2,3", modes="coupled", output=tmp_path / "w2",
                   workers=2, final=False)
    assert stable(result.trials) == stable(read_jsonl(out / "trials.jsonl"))
    assert stable(read_jsonl(tmp_path / "w2" / "trials" / "coupled-3-p0.1" / "metrics.jsonl")) == \
        stable(read_jsonl(out / "trials" / "coupled-3-p0.1" / "metrics.jsonl"))
    # this process owned the sweep folder, each worker process the trials it trained (per-trial locks)
    assert lock_pid(tmp_path / "w2") == os.getpid()
    workers = {lock_pid(run) for run in (tmp_path / "w2" / "trials").iterdir()}
    assert os.getpid() not in workers and 1 <= len(workers) <= 2


def test_cv_uses_folds_of_the_training_split_same_init_and_tests_once(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import decaylab.evaluation.evaluate as evaluate_module

    seen, tested = [], []
    original_init, original_eval = Trainer.__init__, evaluate_module.evaluate_run

    def spy_init(self, config, run_dir, **kwargs):
        seen.append((Path(run_dir).name, kwargs["splits"], {k: v.clone() for k, v in kwargs["init_weights"].items()}))
        original_init(self, config, run_dir, **kwargs)

    def spy_eval(run_dir, split="test", *args, **kwargs):
        tested.append((Path(run_dir).name, split))
        return original_eval(run_dir, split, *args, **kwargs)

    monkeypatch.setattr(Trainer, "__init__", spy_init)
    monkeypatch.setattr(evaluate_module, "evaluate_run", spy_eval)
    cfg = tiny_config("train.epochs=2")
    result = sweep(cfg, strategy="cv", folds=3, lambdas="0.1", modes="decoupled", rule="1se", output=tmp_path / "cv")
    from decaylab.data.splits import load_splits

    full = load_splits(cfg.data)
    train_keys, valid_keys = {p.key for p in full.train}, {p.key for p in full.valid}
    trials = [s for s in seen if s[0] != "final"]
    assert len(trials) == 2 * 3
    held_out = [{p.key for p in splits.valid} for name, splits, _ in trials if name.startswith("none")]
    assert set().union(*held_out) == train_keys and sum(map(len, held_out)) == len(train_keys)
    for _, splits, _ in trials:
        assert {p.key for p in splits.valid} <= train_keys and not splits.test  # validation/test untouched
        assert {p.key for p in splits.valid}.isdisjoint({p.key for p in splits.train})
    first = trials[0][2]
    assert all(all(torch.equal(first[k], init[k]) for k in first) for _, _, init in seen)  # one initialisation
    final_splits = [s for s in seen if s[0] == "final"][0][1]
    assert {p.key for p in final_splits.valid} == valid_keys and len(final_splits.train) == len(full.train)
    assert tested == [("final", "test")]  # the test split is touched once, at the end
    table = {e["lambda"]: e for e in result.table}
    assert table[0.1]["n_folds"] == 3 and table[0.1]["se"] > 0
    rows = read_jsonl(tmp_path / "cv" / "trials.jsonl")
    assert sorted(r["fold"] for r in rows if r["lambda"] == 0.1) == [0, 1, 2]
    assert result.final["reused_trial"] is None  # CV trials never saw the whole training split


def test_halving_keeps_the_best_third_and_continues_survivors(tmp_path: Path) -> None:
    cfg = tiny_config("train.epochs=4", "train.lr=0.01")
    result = sweep(cfg, strategy="halving", lambdas="1e-3,0.03,1,3", modes="decoupled", eta=2,
                   output=tmp_path / "h", final=False)
    rows = read_jsonl(tmp_path / "h" / "trials.jsonl")
    info = result.summary["halving"]
    assert info["budgets"] == [1, 2, 4]
    by_rung = {k: [r for r in rows if r["rung"] == k] for k in range(3)}
    assert [len(by_rung[k]) for k in range(3)] == [5, 2, 1]
    for k in (0, 1):
        ranked = sorted(by_rung[k], key=lambda r: r["best_val_loss"])
        keep = max(1, len(ranked) // 2)
        assert {r["trial"] for r in by_rung[k + 1]} == {r["trial"] for r in ranked[:keep]}
        assert all(r["epochs"] == info["budgets"][k] for r in by_rung[k])
    assert info["epochs_trained"] == 5 * 1 + 2 * 1 + 1 * 2 and info["epochs_full_grid"] == 20
    winner = by_rung[2][0]
    assert result.best["lambda"] == winner["lambda"]
    # The survivor was continued from its checkpoints, not restarted: its run equals one uninterrupted run.
    from decaylab.sweep.points import Point, trial_config

    alone = Trainer(trial_config(cfg, Point(winner["mode"], winner["lambda"], winner["dropout"]), ["decoupled"]),
                    tmp_path / "alone", quiet=True).fit()
    assert stable(read_jsonl(tmp_path / "h" / winner["run"] / "metrics.jsonl")) == stable(alone.history)


def test_resume_after_sigkill_recomputes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    extra = ("train.eval_every=2",)  # checkpoints every 2 steps; 12 steps per trial
    out = tmp_path / "s"
    args = ["sweep", *tiny_flags(*extra), "--lambdas", "1e-2,1", "--mode", "decoupled", "-q"]
    first = subprocess.run(CLI + args + ["-o", str(out)], env={**os.environ, KILL_ENV: "7"}, capture_output=True,
                           text=True, timeout=120)
    assert first.returncode == -9, first.stderr  # killed in the middle of the first trial (checkpoint at step 6)
    assert not read_jsonl(out / "trials.jsonl")
    second = subprocess.run(CLI + ["sweep", "--resume", str(out), "-q"], env={**os.environ, KILL_ENV: "5"},
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == -9, second.stderr  # first trial finished from step 6, second killed at step 5
    rows = read_jsonl(out / "trials.jsonl")
    assert [r["trial"] for r in rows] == ["none-0-p0.1"]
    done_metrics = out / "trials" / "none-0-p0.1" / "metrics.jsonl"
    done_mtime = done_metrics.stat().st_mtime_ns

    steps = []
    original = TrainingLoop._settle

    def counting(self, step, *args):
        steps.append(step)
        return original(self, step, *args)

    monkeypatch.setattr(TrainingLoop, "_settle", counting)
    started = time.perf_counter()
    result = sweep(resume=out)
    this_invocation = time.perf_counter() - started
    # second trial: steps 5..12 after its checkpoint at 4; third trial: all 12; nothing of the first trial
    assert len(steps) == 8 + 12
    # the wall time counts the two killed invocations too (each ran until its last write: seconds of training)
    assert result.summary["wall_s"] > this_invocation + 0.5
    assert json.loads((out / "summary.json").read_text())["wall_s"] == result.summary["wall_s"]
    assert done_metrics.stat().st_mtime_ns == done_mtime
    monkeypatch.setattr(TrainingLoop, "_settle", original)
    fresh = sweep(tiny_config(*extra), lambdas="1e-2,1", modes="decoupled", output=tmp_path / "fresh", final=False)
    assert stable(result.trials) == stable(fresh.trials)
    assert result.best == fresh.best
    again = sweep(resume=out)  # a finished sweep: nothing to do
    assert again.final["test"] == result.final["test"]


def test_two_processes_share_one_optuna_storage(tmp_path: Path) -> None:
    import optuna

    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.storages.RDBStorage(url)  # create the schema first, so two processes do not race to create tables
    common = ["sweep", *tiny_flags("train.epochs=8"), "--strategy", "optuna", "--trials", "5", "--lambdas",
              "log:1e-4:1:5", "--storage", url, "--study", "shared", "--pruner", "none", "-q"]
    leader = subprocess.Popen(CLI + common + ["-o", str(tmp_path / "a")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    joiner = subprocess.Popen(CLI + common + ["--join", "-o", str(tmp_path / "b")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    for proc in (leader, joiner):
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
    study = optuna.load_study(study_name="shared", storage=url)
    counted = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(counted) == 5
    assert len({t.number for t in counted}) == 5
    assert len({t.user_attrs["run"] for t in counted}) == 5  # no trial trained twice
    assert sum(1 for t in counted if t.user_attrs.get("zero")) == 1  # λ = 0 enqueued exactly once
    lambdas = [t.params["lambda"] for t in counted if "lambda" in t.params]
    assert len(set(lambdas)) == len(lambdas) == 4
    assert len({t.user_attrs["pid"] for t in counted}) == 2  # both processes did work
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["final"]["test"]["loss"] > 0 and summary["optuna"]["complete"] == 5
    assert not (tmp_path / "b" / "final").exists()  # a joiner only runs trials
    assert lock_pid(tmp_path / "a") == leader.pid  # the leader owns its sweep folder; a joiner owns only its trials
    assert not (tmp_path / "b" / ".lock").exists()
    assert {lock_pid(run) for run in (tmp_path / "b" / "trials").iterdir()} == {joiner.pid}
    assert len(read_jsonl(tmp_path / "a" / "trials.jsonl")) == 5


def test_optuna_resume_continues_the_cut_off_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna

    out = tmp_path / "o"
    args = ["sweep", *tiny_flags("train.eval_every=2"), "--strategy", "optuna", "--trials", "2", "-q", "-o", str(out)]
    killed = subprocess.run(CLI + args, env={**os.environ, KILL_ENV: "7"}, capture_output=True, text=True,
                            timeout=120)
    assert killed.returncode == -9, killed.stderr
    steps = []
    original = TrainingLoop._settle

    def counting(self, step, *args):
        steps.append(step)
        return original(self, step, *args)

    monkeypatch.setattr(TrainingLoop, "_settle", counting)
    result = sweep(resume=out, final=False)
    assert steps[:6] == [6, 7, 8, 9, 10, 11]  # the λ = 0 trial went on from its checkpoint at step 6
    study = optuna.load_study(study_name="o", storage=f"sqlite:///{out / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    assert states[0] == "FAIL" and study.trials[0].user_attrs["lost"]
    assert sorted(states[1:]) in (["COMPLETE", "COMPLETE"], ["COMPLETE", "PRUNED"])
    assert [r["trial"] for r in result.trials][0] == "t0000-none-0-p0.1" and len(result.trials) == 2


def test_optuna_workers_and_journal_storage(tmp_path: Path) -> None:
    journal = tmp_path / "study.log"
    result = sweep(tiny_config("train.epochs=2"), strategy="optuna", trials=4, lambdas="log:1e-4:1:5",
                   storage=f"journal:{journal}", workers=2, output=tmp_path / "o", final=False, pruner="median")
    assert journal.is_file()
    numbers = sorted(r["trial_number"] for r in result.trials)
    assert numbers == [0, 1, 2, 3]
    assert {r["status"] for r in result.trials} <= {"done", "pruned"}
    assert result.trials[0]["lambda"] == 0.0 and result.best["mean"] is not None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lambdas", ""], "--lambdas: empty list"),
        (["--lambdas", "1e-3,-0.1"], "--lambdas: λ must be ≥ 0"),
        (["--strategy", "cv", "--folds", "1"], "--folds: must be at least 2"),
        (["--strategy", "cv", "--folds", "45"], "folds: must be between 2 and the number of training examples (44)"),
        (["--strategy", "bayes"], "--strategy: 'bayes' is not one of"),
        (["--mode", "decoupled,ridge"], "--mode: 'ridge' is not one of"),
        (["--metric", "rouge"], "--metric: 'rouge' is not one of"),
        (["--strategy", "optuna", "--storage", "sqlite:////no/such/folder/s.db"], "--storage sqlite:////no/such"),
        (["--strategy", "optuna", "--storage", "postgresql://u:p@127.0.0.1:1/db"], "cannot open it"),
        (["--strategy", "optuna", "--storage", "study.db"], "expected an SQLAlchemy URL"),
        (["--mode", "coupled", "--set", "train.optimizer=adamw"], "--mode coupled: mode='coupled' with optimizer"),
        (["--workers", "0"], "--workers: must be at least 1"),
        (["--heartbeat", "5"], "--heartbeat: only applies to --strategy optuna"),
        (["--strategy", "optuna", "--heartbeat", "-1"], "--heartbeat: seconds between a running trial's heartbeats"),
        (["--strategy", "optuna", "--storage", "journal:/tmp/j.log", "--heartbeat", "5"], "journal storage has no"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(args: list[str], message: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch, cli) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "sw"
    result = cli("sweep", *tiny_flags(), *args, "-o", str(out))
    err = result.err
    assert result.code == 2, err
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()  # nothing half-written


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lambdas", "0,5"], "started with spec.lambdas"),
        (["--epochs", "7"], "started with base.train.epochs=3, not 7"),
        (["--strategy", "cv"], "started with --strategy grid, not cv"),
    ],
)
def test_resuming_with_a_different_config_is_refused(grid_run, args: list[str], message: str, cli) -> None:
    out, _ = grid_run
    before = {p: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    result = cli("sweep", "--resume", str(out), *args)
    err = result.err
    assert result.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert {p: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()} == before


def test_a_used_folder_needs_resume(grid_run) -> None:
    from decaylab.errors import UserError

    out, _ = grid_run
    with pytest.raises(UserError, match="already holds a sweep; continue it with --resume"):
        sweep(tiny_config(), lambdas="1e-2,3", modes="coupled", output=out)


def test_sweep_command_writes_the_report(tmp_path: Path, cli) -> None:
    out = tmp_path / "sw"
    result = cli("sweep", *tiny_flags("train.epochs=2"), "--lambdas", "0.1", "--mode", "decoupled", "-q",
                 "-o", str(out))
    assert result.code == 0
    chosen = json.loads((out / "summary.json").read_text())["chosen"]
    assert f"report {out / 'report.html'}" in result.out
    html = (out / "report.html").read_text()
    assert "U-curve" in html and f"{chosen['lambda']:g}" in html
