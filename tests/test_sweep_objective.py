"""Sweeps over a user's training function (`decaylab.sweep(objective=fn)`, `decaylab sweep --objective`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import decaylab
from decaylab.errors import UserError
from decaylab.files import read_jsonl
from tests.objectives import KILL_AT, char_lm

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "decaylab.cli"]
OBJECTIVE = "tests.objectives:char_lm"
VOLATILE = {"wall_s", "compute_s", "train_wall_s", "tokens_per_s"}


def stable(value):
    """The value without the wall-clock fields (nested)."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def cli(*args: str, kill_at: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    if kill_at is not None:
        env[KILL_AT] = str(kill_at)
    return subprocess.run(CLI + list(args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_objective_cv_sweep_killed_and_resumed_ends_with_the_same_summary(tmp_path: Path) -> None:
    args = ["sweep", "--objective", OBJECTIVE, "--strategy", "cv", "--folds", "3", "--examples", "40", "--lambdas",
            "0.1,1", "--epochs", "3", "--rule", "1se", "-q"]
    whole = cli(*args, "-o", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "killed"
    # 10 optimizer steps per epoch, 30 per trial: killed in the 2nd epoch of the 2nd trial (checkpoint at step 10)
    first = cli(*args, "-o", str(out), kill_at=45)
    assert first.returncode == -9, first.stderr
    rows = read_jsonl(out / "trials.jsonl")
    assert [r["trial"] for r in rows] == ["none-0-fold1"]
    cut = out / "trials" / "none-0-fold2"
    assert (cut / "checkpoints" / "last").is_dir() and read_jsonl(cut / "metrics.jsonl")  # mid-trial, checkpointed
    finished = out / "trials" / "none-0-fold1" / "metrics.jsonl"
    finished_mtime = finished.stat().st_mtime_ns
    # the resumed 2nd trial takes 20 steps, so this kill falls in the 3rd epoch of the 3rd trial
    second = cli("sweep", "--resume", str(out), "-q", kill_at=45)
    assert second.returncode == -9, second.stderr
    assert [r["trial"] for r in read_jsonl(out / "trials.jsonl")] == ["none-0-fold1", "none-0-fold2"]
    third = cli("sweep", "--resume", str(out), "-q")
    assert third.returncode == 0, third.stderr
    assert finished.stat().st_mtime_ns == finished_mtime  # a finished trial is never run again
    summary = json.loads((out / "summary.json").read_text())
    expected = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert stable(summary) == stable(expected)
    assert summary["final"]["test"]["loss"] > 0 and summary["objective"] == OBJECTIVE
    assert stable(read_jsonl(out / "trials.jsonl")) == stable(read_jsonl(tmp_path / "whole" / "trials.jsonl"))
    for trial in ("none-0-fold2", "none-0-fold3"):  # the cut trials' rows equal the uninterrupted ones
        assert stable(read_jsonl(out / "trials" / trial / "metrics.jsonl")) == \
            stable(read_jsonl(tmp_path / "whole" / "trials" / trial / "metrics.jsonl"))
    assert (out / "report.html").is_file()


def test_trials_get_their_regularization_seed_and_fold(tmp_path: Path) -> None:
    seen = []

    def spy(trial):
        model = char_lm(trial)
        seen.append((trial.key, trial.mode, trial.weight_decay, trial.seed, trial.fold, trial.train_indices,
                     trial.valid_indices, trial.regularization.describe(), trial.final))
        return model

    result = decaylab.sweep(objective=spy, strategy="cv", folds=2, examples=40, lambdas="0.5", epochs=2,
                            regularization={"decay_set": "matrices", "exclude": ["embed"]}, seed=3,
                            params={"lr": 0.02}, output=tmp_path / "cv")
    trials = [s for s in seen if not s[-1]]
    assert [s[0] for s in trials] == ["none-0-fold1", "none-0-fold2", "decoupled-0.5-fold1", "decoupled-0.5-fold2"]
    for key, mode, lam, seed, fold, train, valid, reg, _ in trials:
        assert seed == 3 and reg["decay_set"] == "matrices" and reg["exclude"] == ["embed"]
        assert (mode, lam) == (reg["mode"], reg["weight_decay"]) == (
            ("none", 0.0) if key.startswith("none") else ("decoupled", 0.5))
        assert sorted(train + valid) == list(range(40)) and not set(train) & set(valid)
        assert fold == (0 if key.endswith("fold1") else 1)
    assert seen[0][6] != seen[1][6]  # two different held-out folds
    final = [s for s in seen if s[-1]][0]
    assert final[0] == "final" and final[4] is None and final[5] == list(range(40)) and final[6] is None
    # metrics rows carry the watched model's norms, penalty and decay factor, like a built-in run's
    rows = read_jsonl(tmp_path / "cv" / "trials" / "decoupled-0.5-fold1" / "metrics.jsonl")
    assert {"step", "epoch", "train_loss", "val_loss", "val_ppl", "gap", "decay_norm", "nodecay_norm", "weight_norm",
            "penalty", "decay_factor", "lr", "wall_s", "train_eval_loss"} <= set(rows[0])
    assert rows[0]["decay_factor"] == pytest.approx(1 - 0.02 * 0.5)
    audit = json.loads((tmp_path / "cv" / "trials" / "decoupled-0.5-fold1" / "audit.json").read_text())
    decided = {row["name"]: row["decayed"] for row in audit["rows"]}
    assert decided == {"embed.weight": False, "norm.weight": False, "norm.bias": False, "hidden.weight": True,
                       "hidden.bias": False, "out.weight": True, "out.bias": False}
    assert result.summary["final"]["reused_trial"] is None and result.summary["final"]["test"]["loss"] > 0


def test_grid_reuses_the_chosen_trial_as_final_and_the_report_renders(tmp_path: Path) -> None:
    from decaylab.report import write_report

    calls = []

    def counting(trial):
        calls.append(trial.key)
        return char_lm(trial)

    result = decaylab.sweep(objective=counting, lambdas="1", epochs=2, output=tmp_path / "g")
    assert calls == ["none-0", "decoupled-1", "final"]
    final = result.summary["final"]
    assert final["reused_trial"] == ("none-0" if result.best["lambda"] == 0 else "decoupled-1")
    # the final model continued the reused trial from its checkpoint: no new training rows
    assert stable(read_jsonl(tmp_path / "g" / "final" / "metrics.jsonl")) == \
        stable(read_jsonl(tmp_path / "g" / "trials" / final["reused_trial"] / "metrics.jsonl"))
    assert final["test"]["loss"] > 0
    page = write_report(tmp_path / "g").read_text(encoding="utf-8")
    assert "tests.test_sweep_objective" in page and "audit unavailable" not in page
    assert (tmp_path / "g" / "plots" / "layer_norms.png").is_file()


def test_halving_continues_survivors_from_their_checkpoints(tmp_path: Path) -> None:
    reports = []

    def counting(trial):
        try:
            return char_lm(trial)
        finally:  # a rung's budget ends the objective with StopTrial
            reports.append((trial.key, trial.budget, [r["epoch"] for r in trial.history]))

    result = decaylab.sweep(objective=counting, strategy="halving", lambdas="0.1,1,3", eta=2, epochs=4,
                            output=tmp_path / "h", final=False)
    assert result.summary["halving"]["budgets"] == [1, 2, 4]
    survivors = [key for key, budget, _ in reports if budget == 4.0]
    assert len(survivors) == 1
    # the survivor's rung-2 run kept its first two epochs (restored) and trained epochs 3 and 4
    assert [h for key, budget, h in reports if key == survivors[0] and budget == 4.0] == [[1.0, 2.0, 3.0, 4.0]]
    epochs = read_jsonl(tmp_path / "h" / "trials" / survivors[0] / "metrics.jsonl")
    assert [r["epoch"] for r in epochs] == [1.0, 2.0, 3.0, 4.0]


def test_optuna_prunes_objective_trials(tmp_path: Path) -> None:
    result = decaylab.sweep(objective=char_lm, strategy="optuna", trials=5, lambdas="log:1e-3:3:2", epochs=3,
                            pruner="median", output=tmp_path / "o", final=False)
    rows = result.trials
    assert len(rows) == 5 and rows[0]["lambda"] == 0.0
    assert {r["status"] for r in rows} <= {"done", "pruned"}
    assert result.best["mean"] == min(r["best_val_loss"] for r in rows if r["status"] == "done")


def silent(trial):
    """An objective that never reports."""
    return torch.nn.Linear(2, 2)


def test_bad_objective_sweeps_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="returned without calling trial.report"):
        decaylab.sweep(objective=silent, lambdas="1", output=tmp_path / "a")
    with pytest.raises(UserError, match="--examples: cross-validation"):
        decaylab.sweep(objective=char_lm, strategy="cv", lambdas="1", output=tmp_path / "b")
    with pytest.raises(UserError, match="--epochs: successive halving"):
        decaylab.sweep(objective=char_lm, strategy="halving", lambdas="1", output=tmp_path / "c")
    with pytest.raises(UserError, match="cannot be sent to worker processes"):
        decaylab.sweep(objective=lambda trial: None, lambdas="1", workers=2, output=tmp_path / "d")
    with pytest.raises(UserError, match="belongs to a sweep over an objective"):
        decaylab.sweep(lambdas="1", examples=10, output=tmp_path / "e")
    decaylab.sweep(objective=char_lm, lambdas="1", epochs=1, params={"lr": 0.01}, output=tmp_path / "f",
                   final=False)
    with pytest.raises(UserError, match="started with base.params.lr=0.01, not 0.02"):
        decaylab.sweep(objective=char_lm, resume=tmp_path / "f", params={"lr": 0.02})
    bad = cli("sweep", "--objective", OBJECTIVE, "--lr", "0.1", "-o", str(tmp_path / "g"))
    assert bad.returncode == 2 and "--lr: configures decaylab's own trainer" in bad.stderr
    missing = cli("sweep", "--objective", "tests.nowhere:fn", "-o", str(tmp_path / "h"))
    assert missing.returncode == 2 and "cannot import tests.nowhere" in missing.stderr
