"""Regularization inside `decaylab train`: the config maps onto the core, and metrics.jsonl records its effect."""

from __future__ import annotations

from pathlib import Path

import pytest

from decaylab.training import Trainer
from tests.conftest import tiny_config


def test_l2_penalty_recorded_equals_half_lambda_times_squared_decay_norm(tmp_path: Path) -> None:
    cfg = tiny_config("regularization.mode=l2", "regularization.weight_decay=0.01", "train.epochs=2")
    for row in Trainer(cfg, tmp_path / "run", quiet=True).fit().history:
        assert row["penalty"] == pytest.approx(0.5 * 0.01 * row["decay_norm"] ** 2, rel=1e-5)
        assert row["decay_factor"] == 1.0  # l2 decays through the gradient, not multiplicatively


def test_decoupled_decay_shrinks_the_decayed_weights_only(tmp_path: Path) -> None:
    common = ["train.epochs=3", "train.optimizer=adamw", "train.lr=0.01", "model.dropout=0.0"]
    plain = Trainer(tiny_config(*common), tmp_path / "plain", quiet=True).fit().history[-1]
    decayed = Trainer(tiny_config(*common, "regularization.mode=decoupled", "regularization.weight_decay=5.0"),
                      tmp_path / "decayed", quiet=True).fit().history[-1]
    assert decayed["decay_norm"] < 0.9 * plain["decay_norm"]
    assert decayed["decay_factor"] == pytest.approx(1 - 0.01 * 5.0)
    assert decayed["penalty"] == 0.0  # decoupled decay adds nothing to the loss


def test_regularization_section_is_recorded_in_the_run(tmp_path: Path) -> None:
    cfg = tiny_config("regularization.mode=decoupled", "regularization.weight_decay=0.1",
                      "regularization.exclude=['embed']", "train.epochs=1", "train.optimizer=adamw")
    Trainer(cfg, tmp_path / "run", quiet=True).fit()
    text = (tmp_path / "run" / "config.yaml").read_text()
    assert "mode: decoupled" in text and "- embed" in text


def test_audit_command_prints_table_and_warnings(cli) -> None:
    result = cli("audit", "--set", "model.preset=tiny", "--set", "train.optimizer=adam", "--mode", "coupled",
                 "--lambda", "1e-4", "--decay-set", "all")
    assert result.code == 0
    out = result.out
    assert "encoder.weight_ih_l0" in out and "output.bias" in out
    assert "AdamW" in out  # the adam + coupled warning names the fix
    assert "bias" in out.lower()


def test_audit_command_rejects_a_bad_mode(cli) -> None:
    result = cli("audit", "--mode", "ridge")
    assert result.code == 2
    assert "'regularization.mode'" in result.err
