"""Config validation: every bad field is named with what is allowed; overrides and presets resolve."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import pytest
import yaml
from pydantic import Discriminator, Field, Tag

import decaylab.config as config_module
from decaylab.config import (
    MODEL_CONFIGS,
    Config,
    ModelSection,
    RNNConfig,
    apply_overrides,
    config_to_dict,
    dump_yaml,
    load_config,
)
from decaylab.errors import UserError
from decaylab.models import MODELS


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
    assert cfg.model.embed_dim == RNNConfig.PRESETS["tiny"]["embed_dim"]
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


# -- model.arch: the model section is a union of one config class per architecture ---------------------------------

MODEL_KEYS = ["arch", "preset", "cell", "embed_dim", "hidden", "layers", "bidirectional", "attention", "dropout",
              "tie_embeddings", "output", "adaptive_cutoffs"]


def test_a_model_section_without_arch_is_the_rnn(tmp_path: Path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text("model:\n  preset: tiny\n  cell: lstm\n")  # written before model.arch existed
    cfg = load_config(path)
    assert isinstance(cfg.model, RNNConfig) and cfg.model.arch == "rnn" and cfg.model.cell == "lstm"
    assert load_config(None, ["model.arch=rnn", "model.preset=tiny", "model.cell=lstm"]) == cfg
    assert isinstance(load_config(None).model, RNNConfig)


def test_unknown_arch_is_one_line_naming_the_architectures() -> None:
    with pytest.raises(UserError) as info:
        load_config(None, ["model.arch=foo", "model.hidden=12"])
    assert str(info.value) == ("config: config field 'model.arch': Input should be 'rnn', 'transformer' or 'decoder' "
                               "(got 'foo')")
    with pytest.raises(UserError, match=r"^config: config field 'model\.arch': Input should be 'rnn', 'transformer' or "
                                        r"'decoder' \(got None\)$"):
        load_config(None, ["model.arch=null"])


def test_member_errors_name_the_plain_field() -> None:
    """pydantic puts the union's tag into error locations (model.rnn.cell); the message shows model.cell."""
    with pytest.raises(UserError) as info:
        load_config(None, ["model.cell=rnn", "model.hiden=3", "model.output=adaptive"])
    message = str(info.value)
    assert "config field 'model.cell': Input should be 'gru' or 'lstm' (got 'rnn')" in message
    assert "config field 'model.hiden': unknown key" in message
    assert ".rnn" not in message
    with pytest.raises(UserError, match=r"config field 'model': Value error, model\.output=adaptive has its own"):
        load_config(None, ["model.output=adaptive"])
    with pytest.raises(UserError, match=r"config field 'model\.preset': Input should be 'tiny', 'small' or 'base' "
                                        r"\(got 'huge'\)"):
        load_config(None, ["model.preset=huge"])


def test_rnn_config_round_trip_keeps_its_shape(tmp_path: Path) -> None:
    """A run's config.yaml lists the model's keys in the order it always had, and loads back equal."""
    cfg = load_config(None, ["model.preset=small", "model.output=adaptive", "model.tie_embeddings=false",
                             "model.adaptive_cutoffs=[100, 200]"])
    raw = yaml.safe_load(dump_yaml(cfg))
    assert list(raw["model"]) == MODEL_KEYS
    assert raw["model"]["arch"] == "rnn" and raw["model"]["hidden"] == RNNConfig.PRESETS["small"]["hidden"]
    assert list(config_to_dict(cfg)["model"]) == MODEL_KEYS
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(cfg))
    again = load_config(path)
    assert again == cfg and dump_yaml(again) == dump_yaml(cfg)
    assert list(load_config(None).model.model_dump()) == MODEL_KEYS


def test_common_model_fields_are_on_the_base() -> None:
    assert {"arch", "preset", "dropout", "tie_embeddings", "output"} <= set(ModelSection.model_fields)
    assert set(MODEL_CONFIGS) == set(MODELS) == {"rnn", "transformer", "decoder"}
    assert all(issubclass(cls, ModelSection) for cls in MODEL_CONFIGS.values())


class _ToyConfig(ModelSection):
    """A second architecture, as the next one will be added: a member class with its own presets and fields."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"mini": {"width": 8}}

    arch: Literal["toy"] = "toy"
    preset: Literal["mini"] | None = None
    width: int = Field(16, ge=1)


_TWO_ARCHS = Annotated[
    Union[  # noqa: UP007 (as config.ModelConfig is written)
        Annotated[RNNConfig, Tag("rnn")],
        Annotated[_ToyConfig, Tag("toy")],
    ],
    Discriminator(config_module._model_arch),
]


class _TwoArchConfig(Config):
    model: _TWO_ARCHS = Field(default_factory=RNNConfig)


def test_a_second_architecture_is_one_member(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "Config", _TwoArchConfig)
    monkeypatch.setattr(config_module, "MODEL_CONFIGS", config_module._members(_TWO_ARCHS))
    assert config_module.MODEL_CONFIGS == {"rnn": RNNConfig, "toy": _ToyConfig}
    assert isinstance(load_config(None, ["model.preset=tiny"]).model, RNNConfig)  # no arch: still the RNN
    toy = load_config(None, ["model.arch=toy", "model.preset=mini", "model.dropout=0.3"]).model
    assert isinstance(toy, _ToyConfig) and toy.width == 8 and toy.dropout == 0.3
    assert list(toy.model_dump()) == ["arch", "preset", "width", "dropout", "tie_embeddings", "output",
                                      "adaptive_cutoffs"]
    with pytest.raises(UserError, match=r"'model\.arch': Input should be 'rnn' or 'toy' \(got 'foo'\)$"):
        load_config(None, ["model.arch=foo"])
    with pytest.raises(UserError, match=r"'model\.cell': unknown key"):
        load_config(None, ["model.arch=toy", "model.cell=gru"])
    with pytest.raises(UserError, match=r"'model\.preset': Input should be 'tiny', 'small' or 'base' \(got 'mini'\)"):
        load_config(None, ["model.preset=mini"])  # the preset names depend on the arch
    with pytest.raises(UserError, match=r"'model\.width': Input should be greater than or equal to 1"):
        load_config(None, ["model.arch=toy", "model.width=0"])
