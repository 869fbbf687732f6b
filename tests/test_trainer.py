"""The trainer: it learns, resumes after SIGKILL to identical numbers, stops cleanly on NaN, writes its files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from decaylab.config import dump_yaml
from decaylab.errors import UserError
from decaylab.files import read_jsonl
from decaylab.runfolder.checkpoint import load_trainer_state
from decaylab.training import Trainer, TrainingDiverged, resume_run
from decaylab.training.loop import KILL_ENV
from tests.conftest import tiny_config

VOLATILE = {"wall_s", "tokens_per_s"}


def stable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in VOLATILE} for row in rows]


def test_model_learns_on_fixture(tmp_path: Path) -> None:
    cfg = tiny_config("train.epochs=25", "train.lr=0.01", "model.dropout=0.0")
    result = Trainer(cfg, tmp_path / "run", quiet=True).fit()
    first, last = result.history[0], result.history[-1]
    assert last["train_eval_loss"] < 0.5 * first["train_eval_loss"]
    assert result.best_val_loss == min(r["val_loss"] for r in result.history)


def test_run_folder_has_every_file(tmp_path: Path) -> None:
    cfg = tiny_config("train.epochs=2")
    Trainer(cfg, tmp_path / "run", quiet=True).fit()
    run = tmp_path / "run"
    meta = json.loads((run / "meta.json").read_text())
    assert meta["seed"] == 0 and len(meta["data"]["fingerprint"]) == 64 and meta["versions"]["torch"]
    rows = read_jsonl(run / "metrics.jsonl")
    assert len(rows) == 2
    for key in (
        "step",
        "epoch",
        "train_loss",
        "val_loss",
        "val_ppl",
        "weight_norm",
        "decay_norm",
        "lr",
        "wall_s",
        "penalty",
        "nodecay_norm",
        "decay_factor",
    ):
        assert key in rows[0]
    state = load_trainer_state(run / "checkpoints" / "last")  # weights_only=True inside
    assert state["progress"]["step"] == rows[-1]["step"]
    assert (run / "checkpoints" / "best" / "model.safetensors").is_file()
    assert (run / "config.yaml").read_text() == dump_yaml(cfg)


def test_same_config_and_seed_give_same_numbers(tmp_path: Path) -> None:
    cfg = tiny_config("train.epochs=2")
    a = Trainer(cfg, tmp_path / "a", quiet=True).fit()
    b = Trainer(cfg, tmp_path / "b", quiet=True).fit()
    assert stable(a.history) == stable(b.history)
    c = Trainer(tiny_config("train.epochs=2", "seed=1"), tmp_path / "c", quiet=True).fit()
    assert stable(c.history) != stable(a.history)


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path: Path) -> None:
    overrides = ["train.epochs=4", "train.eval_every=3", "train.batch_tokens=128", "model.dropout=0.2"]
    config_file = tmp_path / "cfg.yaml"
    config_file.write_text(dump_yaml(tiny_config(*overrides)))
    uninterrupted = Trainer(tiny_config(*overrides), tmp_path / "full", quiet=True).fit()
    assert uninterrupted.history[-1]["step"] > 10
    command = [
        sys.executable,
        "-m",
        "decaylab.cli",
        "train",
        "--config",
        str(config_file),
        "-q",
        "--output",
        str(tmp_path / "killed"),
    ]
    env = {**os.environ, KILL_ENV: "8"}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr  # really killed mid-run, between checkpoints
    assert read_jsonl(tmp_path / "killed" / "metrics.jsonl")[-1]["step"] == 6
    resumed = resume_run(tmp_path / "killed", quiet=True)
    assert stable(resumed.history) == stable(uninterrupted.history)
    assert stable(read_jsonl(tmp_path / "killed" / "metrics.jsonl")) == stable(uninterrupted.history)


@pytest.mark.parametrize("bad_batch", ["third", "last of the epoch"])
def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path: Path, bad_batch: str) -> None:
    cfg = tiny_config("train.epochs=3")
    trainer = Trainer(cfg, tmp_path / "run", quiet=True)
    trainer.fit()
    good = load_trainer_state(tmp_path / "run" / "checkpoints" / "last")["progress"]["step"]
    trainer2 = Trainer(tiny_config("train.epochs=6"), tmp_path / "run", resume=True, quiet=True)
    # the last batch of an epoch is followed by an evaluation, not by another step
    bad = 3 if bad_batch == "third" else len(trainer2._epoch_groups(3))
    forward, calls = trainer2.model.forward, []

    def poisoned(*args, **kwargs):  # that training batch after resuming produces a NaN loss
        calls.append(1)
        return forward(*args, **kwargs) * (float("nan") if len(calls) == bad else 1.0)

    trainer2.model.forward = poisoned
    # the step is named right although its loss is read back only after the next step is queued
    with pytest.raises(TrainingDiverged, match=rf"step {good + bad}: the loss became nan .* last good checkpoint"):
        trainer2.fit()
    assert load_trainer_state(tmp_path / "run" / "checkpoints" / "last")["progress"]["step"] == good


def test_early_stopping_on_val_loss(tmp_path: Path) -> None:
    cfg = tiny_config("train.epochs=60", "train.lr=0.03", "model.dropout=0.0", "train.patience=2", "model.hidden=128")
    result = Trainer(cfg, tmp_path / "run", quiet=True).fit()
    assert result.stopped_early
    assert len(result.history) < 60
    tail = [row["val_loss"] for row in result.history[-2:]]
    assert all(v >= result.best_val_loss for v in tail)


def test_resume_of_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a decaylab run folder"):
        resume_run(tmp_path)


def test_regularization_errors_name_the_field(tmp_path: Path) -> None:
    # refused when the config is read, before a run folder exists
    with pytest.raises(UserError, match="regularization.mode with train.optimizer: mode='coupled'"):
        tiny_config("regularization.mode=coupled", "regularization.weight_decay=0.01", "train.optimizer=adamw")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("bad_eval", [1, 3])
def test_a_nan_validation_loss_is_divergence_and_keeps_the_good_checkpoints(tmp_path: Path, bad_eval: int) -> None:
    """A model whose validation loss is NaN stops the run: `best` and `last` stay those of the last finite one."""
    trainer = Trainer(tiny_config("train.epochs=4"), tmp_path / "run", quiet=True)
    evaluate, calls = trainer.evaluate, []

    def poisoned() -> dict:
        calls.append(1)
        row = evaluate()
        return {**row, "val_loss": float("nan")} if len(calls) >= bad_eval else row

    trainer.evaluate = poisoned
    if bad_eval == 1:
        match = r"step \d+: the validation loss became nan .* no evaluation had a finite validation loss"
    else:
        match = r"step \d+: the validation loss became nan .* last good checkpoint is in .* \(step \d+\) and the best"
    with pytest.raises(TrainingDiverged, match=match):
        trainer.fit()
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert len(rows) == bad_eval - 1  # the NaN evaluation wrote nothing
    checkpoints = tmp_path / "run" / "checkpoints"
    if bad_eval == 1:
        assert not (checkpoints / "last").exists() and not (checkpoints / "best").exists()
    else:
        last = load_trainer_state(checkpoints / "last")["progress"]
        assert last["step"] == rows[-1]["step"] and last["best_val_loss"] == min(r["val_loss"] for r in rows)
        assert (checkpoints / "best" / "model.safetensors").is_file()


def test_train_with_an_exploding_lr_exits_2_naming_the_divergence(tmp_path: Path, cli) -> None:
    result = cli("train", "--data", str(Path(__file__).parent / "fixtures" / "tiny_pairs.tsv"), "--preset", "tiny",
                 "--set", "tokenizer.vocab_size=120", "--set", "tokenizer.min_frequency=1", "--lr", "1e30",
                 "--epochs", "2", "--output", str(tmp_path / "run"), "-q")
    assert result.code == 2
    assert "loss became" in result.err and "stopped" in result.err


def test_tokens_per_s_counts_training_time_only(tmp_path: Path) -> None:
    import time

    trainer = Trainer(tiny_config("train.epochs=2"), tmp_path / "run", quiet=True)
    evaluate = trainer.evaluate

    def slow() -> dict:
        time.sleep(1.0)
        return evaluate()

    trainer.evaluate = slow
    rows = trainer.fit().history
    tokens = sum(len(t) for t in trainer.train_data.targets)  # one epoch's target tokens: one row's window
    assert all(row["tokens_per_s"] > tokens / 1.0 for row in rows)  # the 1 s evaluations are not in the window
