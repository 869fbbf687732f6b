"""Every bad input is one ValueError naming the field, the bad value and what is allowed."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from decaylab.regularization import Regularization


def model() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))


@pytest.mark.parametrize(
    "kwargs,needles",
    [
        ({"weight_decay": -0.1}, ["weight_decay", "-0.1", ">= 0"]),
        ({"weight_decay": math.nan}, ["weight_decay", "nan"]),
        ({"weight_decay": math.inf}, ["weight_decay", "inf"]),
        ({"weight_decay": "0.1"}, ["weight_decay", "'0.1'"]),
        ({"l1": -1e-3}, ["l1", "-0.001"]),
        ({"l1": math.nan}, ["l1", "nan"]),
        ({"mode": "l3"}, ["mode", "'l3'", "none, l2, coupled, decoupled"]),
        ({"decay_set": "weights"}, ["decay_set", "'weights'", "no_bias_norm", "matrices_no_embedding"]),
        ({"decay_scaling": "cosine"}, ["decay_scaling", "'cosine'", "lr, schedule"]),
        ({"mode": "coupled", "decay_scaling": "schedule"}, ["decay_scaling", "schedule", "decoupled"]),
        ({"mode": "l2", "decay_scaling": "schedule"}, ["decay_scaling", "'l2'"]),
        ({"exclude": ["("]}, ["exclude", "'('", "regex"]),
        ({"multipliers": {"proj": -1.0}}, ["multipliers", "proj", "-1.0"]),
        ({"multipliers": {"proj": math.inf}}, ["multipliers", "inf"]),
        ({"multipliers": ["proj"]}, ["multipliers", "mapping"]),
        ({"allow_double": "yes"}, ["allow_double", "'yes'"]),
    ],
)
def test_constructor_errors(kwargs, needles):
    with pytest.raises(ValueError) as err:
        Regularization(**kwargs)
    for needle in needles:
        assert needle in str(err.value)


def test_names_are_case_insensitive():
    reg = Regularization(mode="Decoupled", decay_set="MATRICES")
    assert (reg.mode, reg.decay_set) == ("decoupled", "matrices")
    assert isinstance(reg.optimizer(model(), "AdamW", lr=1e-3), torch.optim.AdamW)


def test_unknown_optimizer_name():
    with pytest.raises(ValueError, match=r"optimizer name='rmsprop'.*sgd, sgdw, adam, adamw"):
        Regularization().optimizer(model(), "rmsprop", lr=1e-3)


@pytest.mark.parametrize("lr", [0.0, -1e-3, math.nan])
def test_bad_lr(lr):
    with pytest.raises(ValueError, match="lr="):
        Regularization().optimizer(model(), "adamw", lr=lr)


@pytest.mark.parametrize("field", ["exclude", "multipliers"])
def test_regex_matching_nothing(field):
    kwargs = {"exclude": [r"decoder\."]} if field == "exclude" else {"multipliers": {r"decoder\.": 0.5}}
    reg = Regularization(**kwargs)
    for call in (lambda: reg.optimizer(model(), "adamw", lr=1e-3), lambda: reg.audit(model())):
        with pytest.raises(ValueError) as err:
            call()
        msg = str(err.value)
        assert field in msg and "r'decoder\\.'" in msg and "0.weight" in msg


@pytest.mark.parametrize("mode", ["l2", "coupled", "decoupled"])
def test_optimizer_weight_decay_is_double_regularization(mode):
    reg = Regularization(mode=mode, weight_decay=1e-4)
    with pytest.raises(ValueError, match="double regularization"):
        reg.optimizer(model(), "sgd" if mode != "decoupled" else "adamw", lr=1e-3, weight_decay=1e-5)


def test_optimizer_weight_decay_allowed_when_nothing_else_regularizes_or_when_asked():
    for reg in (
        Regularization(mode="none", weight_decay=0.0),
        Regularization(mode="l2", weight_decay=0.0),
        Regularization(mode="l2", weight_decay=1e-4, allow_double=True),
    ):
        opt = reg.optimizer(model(), "adam", lr=1e-3, weight_decay=1e-5)
        assert all(g["weight_decay"] >= 1e-5 for g in opt.param_groups)


def test_negative_optimizer_weight_decay():
    with pytest.raises(ValueError, match="weight_decay"):
        Regularization(mode="none", weight_decay=0.0).optimizer(model(), "adam", lr=1e-3, weight_decay=-1.0)


@pytest.mark.parametrize("name", ["adamw", "sgdw"])
def test_coupled_with_decoupled_optimizer(name):
    with pytest.raises(ValueError) as err:
        Regularization(mode="coupled", weight_decay=1e-4).optimizer(model(), name, lr=1e-3)
    msg = str(err.value)
    assert "mode='decoupled'" in msg and repr(name[:-1]) in msg


def test_audit_argument_errors():
    reg = Regularization()
    with pytest.raises(ValueError, match="steps="):
        reg.audit(model(), steps=0)
    with pytest.raises(ValueError, match="optimizer name"):
        reg.audit(model(), optimizer_name="lion")


def test_the_functional_sgdw_stays_a_function_after_the_optimizer_module_loads() -> None:
    import decaylab.regularization.optim  # noqa: F401  (imports the SGDW module)
    from decaylab.regularization import sgdw

    assert callable(sgdw) and sgdw.__name__ == "sgdw"
