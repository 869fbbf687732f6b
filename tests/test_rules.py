"""The rule registry: every registered rule is trained by the stacked engine exactly as by the single-model engine,
for every architecture, or refused by name there; and every caller reads its names from the registry."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from decaylab.config import Config, build_config, config_to_dict
from decaylab.errors import UserError
from decaylab.regularization import RULES, Acts, Regularization, ReplicaDecay, UnsupportedRule
from decaylab.regularization.rules import DECAY_SCALING_RULES, DECAY_SCALINGS, MODES, SWEEPABLE
from decaylab.training import Trainer
from decaylab.training.stacked import StackedTrainer
from tests.conftest import tiny_config
from tests.test_vectorized_transformer import arch_config, arch_data

LAMBDA = {"weight_decay": 0.05, "l1": 0.002}
# SWD without the lr (c_t = η_t/η_max) divides λ by √mean(v̂) (~5e-3 here): 0.05 would be a decay of ~10 per step
LAMBDA_OF = {("swd", "schedule"): 1e-4}


def rule_settings(name: str, lam: float | None = None, scaling: str = "lr", **extra: object) -> dict:
    """The regularization section that turns rule `name` on (its λ in its own field), generically."""
    rule = RULES[name]
    settings = {"mode": name if rule.is_mode else "none", "weight_decay": 0.0, "l1": 0.0, "decay_scaling": scaling}
    settings[rule.strength] = LAMBDA_OF.get((name, scaling), LAMBDA[rule.strength]) if lam is None else lam
    settings.update(extra)
    return settings


def cases() -> list[tuple[str, str, str]]:
    """(rule, optimizer, decay scaling) for every registered rule with a strength, each way it can be run."""
    out = []
    for name, rule in RULES.items():
        if not rule.decays:
            continue
        for optimizer in ("adam", "sgd"):
            if optimizer not in rule.optimizers:
                continue
            for scaling in DECAY_SCALINGS if rule.acts is Acts.DECOUPLED else ("lr",):
                out.append((name, optimizer, scaling))
    return out


def with_regularization(base: Config, settings: dict) -> Config:
    raw = config_to_dict(base)
    raw["regularization"].update(settings)
    return build_config(raw)


@pytest.mark.parametrize("arch", ["rnn", "transformer", "decoder"])
@pytest.mark.parametrize("name,optimizer,scaling", cases())
def test_every_rule_is_stacked_exactly_or_refused_by_name(name, optimizer, scaling, arch, tmp_path: Path) -> None:
    """For every architecture with a stacked form (tests/test_vectorized_transformer.py has their models)."""
    splits, tokenizer = arch_data(arch)
    lr = ["train.lr=0.3", "train.momentum=0.9"] if optimizer == "sgd" else ["train.lr=0.01"]
    base = arch_config(arch, "model.dropout=0", "train.clip_norm=0.5", "train.schedule=cosine", "train.max_steps=6",
                       "train.eval_every=3", f"train.optimizer={optimizer}", *lr)
    on = with_regularization(base, rule_settings(name, scaling=scaling))
    off = with_regularization(base, rule_settings(name, lam=0.0))
    refused = name if RULES[name].replica_kernel is None else (
        scaling if DECAY_SCALING_RULES[scaling].scope != "all" else None)  # one c_t per replica, not per parameter
    if refused:
        with pytest.raises(UserError, match=repr(refused)):
            StackedTrainer([off, on], [tmp_path / "off", tmp_path / "on"], splits=splits, tokenizer=tokenizer)
        assert not (tmp_path / "on" / "metrics.jsonl").exists()  # refused before anything was written
        return
    replicas = StackedTrainer([off, on], [tmp_path / "off", tmp_path / "on"], splits=splits,
                              tokenizer=tokenizer).fit()
    single = Trainer(on, tmp_path / "single", splits=splits, tokenizer=tokenizer, quiet=True).fit().history
    stacked = replicas[1].history
    assert [r["step"] for r in stacked] == [r["step"] for r in single] == [3, 6]
    for a, b in zip(stacked, single, strict=True):
        for key in ("val_loss", "train_loss", "decay_norm", "nodecay_norm", "penalty", "decay_factor"):
            assert a[key] == pytest.approx(b[key], rel=2e-4, abs=2e-4), (a["step"], key, a[key], b[key])
    # the rule acted in both engines: its replica's decayed weights end smaller than those of λ = 0
    assert stacked[-1]["decay_norm"] < replicas[0].history[-1]["decay_norm"] - 1e-4


SCHEDULES = [{"weight_decay_schedule": "cosine"}, {"weight_decay_schedule": "linear"},
             {"weight_decay_schedule": "constant", "weight_decay_warmup_steps": 5},
             {"weight_decay_schedule": "cosine", "weight_decay_warmup_steps": 2}]


def test_each_replica_follows_its_own_weight_decay_schedule(tmp_path: Path, data) -> None:
    """One stack of every schedulable rule, each with its own λ schedule (and one constant λ), against each rule's
    single run: the same trajectory, and the same λ_t in every metrics row."""
    splits, tokenizer = data
    base = tiny_config("model.dropout=0", "train.clip_norm=0.5", "train.schedule=cosine", "train.max_steps=6",
                       "train.eval_every=3", "train.optimizer=adam", "train.lr=0.01")
    names = [name for name, rule in RULES.items() if rule.schedulable]
    settings = [rule_settings("decoupled")] + [
        rule_settings(name, **SCHEDULES[i % len(SCHEDULES)]) for i, name in enumerate(names)]
    configs = [with_regularization(base, s) for s in settings]
    replicas = StackedTrainer(configs, [tmp_path / f"v{i}" for i in range(len(configs))], splits=splits,
                              tokenizer=tokenizer).fit()
    for i, config in enumerate(configs):
        single = Trainer(config, tmp_path / f"s{i}", splits=splits, tokenizer=tokenizer, quiet=True).fit().history
        for a, b in zip(replicas[i].history, single, strict=True):
            for key in ("val_loss", "train_loss", "decay_norm", "decay_factor", "weight_decay_t"):
                assert a[key] == pytest.approx(b[key], rel=2e-4, abs=2e-4), (i, a["step"], key, a[key], b[key])
    # λ_t after 3 and 6 of the 6 steps, by hand: constant; cosine ½(1 + cos π·t/6); linear 1 − t/6; warm-up 5
    # steps ((t + 1)/5, then 1); warm-up 2 steps, then cosine over the 4 others ½(1 + cos π·(t − 2)/4)
    by_hand = {"constant": (1.0, 1.0), "cosine": (0.5, 0.0), "linear": (0.5, 0.0), "constant+5": (0.8, 1.0),
               "cosine+2": (0.5 * (1 + math.cos(math.pi / 4)), 0.0)}
    for replica, s in zip(replicas, settings, strict=True):
        shape = s.get("weight_decay_schedule", "constant") + (
            f"+{s['weight_decay_warmup_steps']}" if s.get("weight_decay_warmup_steps") else "")
        got = [row["weight_decay_t"] for row in replica.history]
        assert got == pytest.approx([s["weight_decay"] * rho for rho in by_hand[shape]], abs=1e-12), shape


def test_replica_decay_refuses_a_rule_without_a_stacked_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    monkeypatch.setitem(RULES, "coupled", dataclasses.replace(RULES["coupled"], replica_kernel=None))
    settings = [rule_settings("coupled"), rule_settings("l2")]
    with pytest.raises(UnsupportedRule, match="'coupled' cannot be trained by the stacked engine"):
        ReplicaDecay.check(settings)
    ReplicaDecay.check([rule_settings("coupled", lam=0.0)])  # λ = 0 needs no kernel


@pytest.mark.parametrize("name", [n for n, r in RULES.items() if r.acts is Acts.LOSS])
def test_replica_penalty_and_gradient_equal_the_single_penalty(name: str) -> None:
    """A LOSS rule's stacked kernels are the value and the autograd gradient of its single-model penalty."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 3))
    lams = [0.0, 0.03, 0.2]
    stacked = {n: torch.stack([p.detach()] * 3).clone() for n, p in model.named_parameters()}
    for n in stacked:
        stacked[n].grad = torch.zeros_like(stacked[n])
    reg = Regularization(**{**rule_settings(name), "decay_set": "no_bias_norm", "multipliers": {"^2": 0.5}})
    mult = {i.name: (i.multiplier if i.decayed else 0.0) for i in reg.plan(model).params}
    decay = ReplicaDecay([rule_settings(name, lam) for lam in lams], mult, stacked, 0.1, torch.device("cpu"))
    values = decay.penalties()
    decay.add_loss_gradients_()
    for k, lam in enumerate(lams):
        single = Regularization(**{**rule_settings(name, lam), "decay_set": "no_bias_norm", "multipliers": {"^2": 0.5}})
        model.zero_grad()
        value = single.penalty(model)
        if lam:
            value.backward()
        assert values[k].item() == pytest.approx(value.item(), rel=1e-6, abs=1e-9)
        for n, p in model.named_parameters():
            want = p.grad if p.grad is not None else torch.zeros_like(p)
            torch.testing.assert_close(stacked[n].grad[k], want, rtol=1e-6, atol=1e-8, msg=n)


def test_every_name_list_reads_the_registry() -> None:
    from decaylab.config import RegularizationConfig
    from decaylab.report.plots import mode_color
    from decaylab.sweep import spec

    assert RegularizationConfig.model_fields["mode"].annotation.__args__ == MODES
    assert spec.MODES == SWEEPABLE
    assert all(mode_color(name) == RULES[name].color for name in RULES)
    with pytest.raises(UserError, match="regularization.mode"):
        build_config({"regularization": {"mode": "lion"}})
