"""Decay-set membership: decay_set rules, norm/bias/embedding detection, exclude, multipliers, tied, frozen."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from decaylab.regularization import DECAY_SETS, Regularization


class MyRMSNorm(nn.Module):
    """A hand-written RMSNorm: only its class name says it is a norm."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(20, 8)
        self.proj = nn.Linear(8, 8)
        self.ln = nn.LayerNorm(8)
        self.rms = MyRMSNorm(8)
        self.scale = nn.Parameter(torch.ones(8))  # a plain vector: neither bias nor norm
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.embed.weight  # tied input/output embedding

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.rms(self.ln(self.proj(self.embed(tokens)))) * self.scale
        return self.head(self.frozen(h))


EXPECTED = {
    "all": {"embed.weight", "proj.weight", "proj.bias", "ln.weight", "ln.bias", "rms.weight", "scale"},
    "no_bias_norm": {"embed.weight", "proj.weight", "scale"},
    "matrices": {"embed.weight", "proj.weight"},
    "matrices_no_embedding": {"proj.weight"},
    # other libraries' conventions (tests/test_decay_sets.py compares them with the libraries): transformers keeps
    # out nn.LayerNorm and names with bias/norm, so "rms.weight" (a hand-written RMSNorm) stays in
    "hf": {"embed.weight", "proj.weight", "rms.weight", "scale"},
    "timm": {"embed.weight", "proj.weight"},
    "nanogpt": {"embed.weight", "proj.weight"},
    "olmo2": {"proj.weight", "proj.bias", "ln.weight", "ln.bias", "rms.weight", "scale"},
    "keras": {"embed.weight", "proj.weight", "proj.bias", "ln.weight", "ln.bias", "rms.weight", "scale"},
}


def decayed_names(reg: Regularization, model: nn.Module) -> set[str]:
    return {r.name for r in reg.audit(model).rows if r.decayed}


@pytest.mark.parametrize("decay_set", DECAY_SETS)
def test_membership_for_each_decay_set(decay_set):
    model = Toy()
    reg = Regularization(mode="coupled", weight_decay=0.1, decay_set=decay_set)
    assert decayed_names(reg, model) == EXPECTED[decay_set]
    # the optimizer groups agree with the audit, hold the tied tensor once and leave frozen ones out
    groups = reg.param_groups(model, lr=1e-3)
    decay_ids = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    named = dict(model.named_parameters())
    assert decay_ids == {id(named[n]) for n in EXPECTED[decay_set]}
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert len(all_ids) == len(set(all_ids))
    assert id(model.frozen.weight) not in all_ids and id(model.frozen.bias) not in all_ids
    opt = reg.optimizer(model, "sgd", lr=1e-3)  # torch rejects a tensor listed twice
    assert sum(len(g["params"]) for g in opt.param_groups) == len(all_ids)


def test_tied_weight_decayed_once():
    model = Toy()
    reg = Regularization(mode="l2", weight_decay=0.5, decay_set="matrices")
    expected = 0.25 * (model.embed.weight.pow(2).sum() + model.proj.weight.pow(2).sum())
    assert reg.penalty(model).item() == pytest.approx(expected.item(), rel=1e-6)
    rows = {r.name: r for r in reg.audit(model).rows}
    assert "head.weight" not in rows
    assert rows["embed.weight"].aliases == ("head.weight",)
    assert "tied to head.weight" in rows["embed.weight"].reason


def test_tied_embedding_counts_as_embedding_through_any_name():
    # the canonical name is the Linear's; the Embedding alias still marks it as an embedding
    class OutFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.out = nn.Linear(4, 10, bias=False)
            self.emb = nn.Embedding(10, 4)
            self.emb.weight = self.out.weight

    reg = Regularization(mode="coupled", weight_decay=0.1, decay_set="matrices_no_embedding")
    assert decayed_names(reg, OutFirst()) == set()


def test_norm_and_bias_detection_variants():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(4, 4)
            self.bn = nn.BatchNorm1d(4)
            self.gn = nn.GroupNorm(2, 4)
            self.rms = nn.RMSNorm(4)
            self.ln_f = nn.Module()
            self.ln_f.weight = nn.Parameter(torch.ones(4))  # norm only by its name (nanoGPT style)
            self.layernorm_gain = nn.Parameter(torch.ones(4))
            self.normalizer = nn.Linear(4, 4, bias=False)  # "norm" in the path but a matrix: decayed

    reg = Regularization(mode="coupled", weight_decay=0.1, decay_set="no_bias_norm")
    assert decayed_names(reg, Block()) == {"gru.weight_ih_l0", "gru.weight_hh_l0", "normalizer.weight"}
    reasons = {r.name: r.reason for r in reg.audit(Block()).rows}
    assert reasons["gru.bias_ih_l0"] == "bias"
    assert reasons["bn.weight"] == "norm" and reasons["ln_f.weight"] == "norm"


def test_exclude_and_multipliers():
    model = Toy()
    reg = Regularization(
        mode="decoupled",
        weight_decay=0.1,
        l1=0.01,
        decay_set="all",
        exclude=[r"^ln\.", r"head"],  # "head" only names the tied alias: it excludes the shared tensor
        multipliers={r"proj": 0.5, r"weight$": 0.2, r"rms": 0.0},
    )
    rows = {r.name: r for r in reg.audit(model).rows}
    assert not rows["ln.weight"].decayed and "excluded by regex r'^ln\\.'" in rows["ln.weight"].reason
    assert not rows["embed.weight"].decayed and "'head'" in rows["embed.weight"].reason
    # several matching multipliers multiply: proj.weight gets 0.5 * 0.2
    assert rows["proj.weight"].weight_decay == pytest.approx(0.1 * 0.5 * 0.2)
    assert rows["proj.weight"].l1 == pytest.approx(0.01 * 0.5 * 0.2)
    assert rows["proj.bias"].weight_decay == pytest.approx(0.05)
    assert rows["scale"].weight_decay == pytest.approx(0.1)
    assert not rows["rms.weight"].decayed and "multiplier 0" in rows["rms.weight"].reason
    groups = {round(g["effective_weight_decay"], 12): g["param_names"] for g in reg.param_groups(model, lr=1e-3)}
    assert groups == {
        0.01: ["proj.weight"],
        0.05: ["proj.bias"],
        0.1: ["scale"],
        0.0: ["embed.weight", "ln.weight", "ln.bias", "rms.weight"],
    }


def test_frozen_never_decayed_even_under_all():
    model = Toy()
    reg = Regularization(mode="l2", weight_decay=1.0, decay_set="all", multipliers={"frozen": 2.0})
    rows = {r.name: r for r in reg.audit(model).rows}
    assert not rows["frozen.weight"].decayed and rows["frozen.weight"].reason.startswith("frozen")
    assert rows["frozen.weight"].weight_decay == 0.0
    pen = reg.penalty(model)
    pen.backward()
    assert model.frozen.weight.grad is None


def test_root_class_name_does_not_make_its_vectors_norms():
    class PreNormNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(4))
            self.norm = MyRMSNorm(4)

    reg = Regularization(mode="coupled", weight_decay=0.1, decay_set="no_bias_norm")
    assert decayed_names(reg, PreNormNet()) == {"scale"}
