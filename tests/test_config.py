"""Config validation: every bad field is named with what is allowed; overrides and presets resolve."""

from __future__ import annotations

from pathlib import Path

import pytest

from decaylab.config import PRESETS, apply_overrides, dump_yaml, load_config
from decaylab.errors import UserError


def test_unknown_key_is_named() -> None:
    with pytest.raises(UserError, match=r"'model\.hiden': unknown key"):
        load_config(None, ["model.hiden=128"])


def test_unknown_section_is_named() -> None:
    with pytest.raises(UserError, match=r"'trian': unknown key"):
        load_config(None, ["trian.lr=0.1"])


def test_bad_choice_lists_allowed_values() -> None:
    with pytest.raises(UserError, match=r"'model\.cell': Input should be 'gru' or 'lstm' \(got 'rnn'\)"):
        load_config(None, ["model.cell=rnn"])


@pytest.mark.parametrize("value", ["-0.1", ".nan", "nan", ".inf"])
def test_negative_or_nan_lr_is_refused(value: str) -> None:
    with pytest.raises(UserError, match=r"'train\.lr'"):
        load_config(None, [f"train.lr={value}"])


def test_negative_weight_decay_is_refused() -> None:
    with pytest.raises(UserError, match=r"'regularization\.weight_decay'.*greater than or equal to 0"):
        load_config(None, ["regularization.weight_decay=-1e-4"])


def test_nan_dropout_is_refused() -> None:
    with pytest.raises(UserError, match=r"'model\.dropout'"):
        load_config(None, ["model.dropout=.nan"])


def test_split_must_sum_to_one() -> None:
    with pytest.raises(UserError, match=r"'data\.split'.*summing to 1"):
        load_config(None, ["data.split=[0.5, 0.1, 0.1]"])


def test_preset_fills_sizes_and_explicit_values_win() -> None:
    cfg = load_config(None, ["model.preset=tiny", "model.hidden=96"])
    assert cfg.model.embed_dim == PRESETS["tiny"]["embed_dim"]
    assert cfg.model.hidden == 96


def test_set_parses_yaml_values() -> None:
    raw = apply_overrides({"train": {"lr": 0.1}}, ["train.lr=3e-4", "model.bidirectional=false", "seed=7"])
    assert raw == {"train": {"lr": 3e-4}, "model": {"bidirectional": False}, "seed": 7}


def test_set_without_equals_is_an_error() -> None:
    with pytest.raises(UserError, match="expected section.key=value"):
        load_config(None, ["model.hidden"])


def test_yaml_file_round_trip(tmp_path: Path) -> None:
    cfg = load_config(None, ["model.preset=tiny", "regularization.mode=decoupled", "regularization.weight_decay=0.1"])
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_config(path) == cfg


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  hidden: 12\n  cell: [gru\n")
    with pytest.raises(UserError, match=r"bad\.yaml line \d+: not valid YAML"):
        load_config(path)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
