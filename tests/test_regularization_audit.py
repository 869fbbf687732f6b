"""Audit rows, summary, rendering, and warnings that appear when they should and only then."""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console
from torch import nn

from decaylab.regularization import Regularization, print_audit


class Seq2Seq(nn.Module):
    def __init__(self, vocab: int = 30, d: int = 8) -> None:
        super().__init__()
        self.src_embed = nn.Embedding(vocab, d)
        self.tgt_embed = nn.Embedding(vocab, d)
        self.encoder = nn.GRU(d, d, batch_first=True)
        self.decoder = nn.GRU(d, d, batch_first=True)
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, vocab)


def warnings_of(**kw) -> list[str]:
    audit_kw = {k: kw.pop(k) for k in ("optimizer_name", "lr", "steps", "steps_per_epoch") if k in kw}
    return Regularization(**kw).audit(Seq2Seq(), **audit_kw).warnings


def has(warnings: list[str], needle: str) -> bool:
    return any(needle in w for w in warnings)


def test_rows_and_summary():
    model = Seq2Seq()
    rep = Regularization(mode="decoupled", weight_decay=0.1, decay_set="no_bias_norm").audit(model)
    assert [r.name for r in rep.rows] == [n for n, _ in model.named_parameters()]
    row = {r.name: r for r in rep.rows}["out.weight"]
    assert (row.shape, row.numel, row.decayed, row.weight_decay) == ((30, 8), 240, True, 0.1)
    total = sum(p.numel() for p in model.parameters())
    decayed = sum(p.numel() for n, p in model.named_parameters() if "weight" in n and "norm" not in n)
    assert rep.summary["decayed_numel"] == decayed
    assert rep.summary["decayed_share"] == pytest.approx(decayed / total)
    assert rep.summary["norm_decayed"] is False and rep.summary["embedding_decayed"] is True
    json.dumps(rep.to_dict())


def test_render_prints_table_and_warnings():
    buf = io.StringIO()
    rep = Regularization(mode="coupled", weight_decay=0.1, decay_set="all").audit(Seq2Seq(), optimizer_name="adam")
    print_audit(rep, Console(file=buf, width=200))
    text = buf.getvalue()
    assert "encoder.weight_ih_l0" in text and "norm.weight" in text and "warning:" in text
    buf2 = io.StringIO()
    rep.render(Console(file=buf2, width=200))
    assert buf2.getvalue() == text


def test_adam_coupled_warning():
    needle = "Loshchilov & Hutter"
    assert has(warnings_of(mode="coupled", weight_decay=1e-4, optimizer_name="adam"), needle)
    assert has(warnings_of(mode="l2", weight_decay=1e-4, optimizer_name="adam"), needle)
    assert not has(warnings_of(mode="decoupled", weight_decay=0.1, optimizer_name="adam"), needle)
    assert not has(warnings_of(mode="coupled", weight_decay=1e-4, optimizer_name="sgd"), needle)
    assert not has(warnings_of(mode="coupled", weight_decay=0.0, optimizer_name="adam"), needle)
    assert has(warnings_of(mode="coupled", weight_decay=1e-4, optimizer_name="adamw"), "is refused")
    assert not has(warnings_of(mode="decoupled", weight_decay=0.1, optimizer_name="adamw"), "is refused")


def test_decayed_norm_bias_and_embedding_warnings():
    w_all = warnings_of(mode="decoupled", weight_decay=0.1, decay_set="all")
    assert has(w_all, "normalization parameter") and has(w_all, "bias tensor") and has(w_all, "embedding tensor")
    w_mat = warnings_of(mode="decoupled", weight_decay=0.1, decay_set="matrices")
    assert not has(w_mat, "normalization parameter") and not has(w_mat, "bias tensor")
    assert has(w_mat, "2 embedding tensor(s)")
    assert warnings_of(mode="decoupled", weight_decay=0.1, decay_set="matrices_no_embedding") == []
    # nothing is decayed when there is no decay: no pitfall to report
    assert warnings_of(mode="none", weight_decay=0.0, decay_set="all") == []


def test_tau_warnings():
    # τ = 1/(lr·λ) = 1/(1e-3·0.1) = 10_000 steps
    kw = dict(mode="decoupled", weight_decay=0.1, decay_set="matrices_no_embedding", lr=1e-3)
    reg = Regularization(mode="decoupled", weight_decay=0.1, decay_set="matrices_no_embedding")
    rep = reg.audit(Seq2Seq(), lr=1e-3, steps=5_000, steps_per_epoch=100)
    assert rep.summary["tau_steps"] == pytest.approx(10_000)
    assert rep.summary["tau_epochs"] == pytest.approx(100)
    assert has(rep.warnings, "longer than the run")
    assert not has(warnings_of(**kw, steps=20_000, steps_per_epoch=100), "τ")
    assert has(warnings_of(**kw, steps=20_000, steps_per_epoch=50_000), "shorter than one epoch")
    # schedule scaling: τ = 1/λ at the peak, whatever the lr
    rep = Regularization(mode="decoupled", weight_decay=1e-3, decay_scaling="schedule").audit(Seq2Seq(), lr=5.0)
    assert rep.summary["tau_steps"] == pytest.approx(1_000)


def test_range_frozen_idle_and_mode_none_warnings():
    assert has(warnings_of(mode="l2", weight_decay=0.5), "outside the usual range")
    assert not has(warnings_of(mode="l2", weight_decay=1e-3), "outside the usual range")
    assert has(warnings_of(mode="decoupled", weight_decay=0.1, lr=20.0), "zeroes or flips")
    assert has(warnings_of(mode="none", weight_decay=0.1), "ignored because mode='none'")

    model = Seq2Seq()
    model.encoder.requires_grad_(False)
    rep = Regularization(mode="decoupled", weight_decay=0.1, multipliers={"encoder": 0.5, r"norm\.": 2.0}).audit(model)
    assert has(rep.warnings, "matches frozen parameter(s)")
    assert has(rep.warnings, "only matches parameters outside the decay set")
    assert not any(r.decayed for r in rep.rows if r.name.startswith("encoder."))


def test_double_regularization_warning():
    rep = Regularization(mode="l2", weight_decay=1e-4).audit(Seq2Seq(), optimizer_weight_decay=1e-5)
    assert has(rep.warnings, "regularized twice")
    rep = Regularization(mode="none", weight_decay=0.0).audit(Seq2Seq(), optimizer_weight_decay=1e-5)
    assert not has(rep.warnings, "regularized twice")


def test_audit_does_not_touch_parameters():
    model = Seq2Seq()
    before = [p.detach().clone() for p in model.parameters()]
    Regularization(mode="decoupled", weight_decay=0.1).audit(model, lr=1e-3)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
