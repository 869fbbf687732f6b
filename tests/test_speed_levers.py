"""Speed levers keep the numbers: fused loss, grouped beam memory, bf16 autocast and the compile option."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from decaylab.config import RNNConfig
from decaylab.data.batching import collate
from decaylab.data.tokenizer import PAD_ID
from decaylab.errors import UserError
from decaylab.models import build_model
from decaylab.models.fused_loss import linear_cross_entropy
from decaylab.training import Trainer
from decaylab.training import trainer as trainer_module
from tests.conftest import tiny_config

VOCAB = 40


def batch():
    return collate([[5, 6, 7, 2], [8, 2], [9, 10, 11, 12, 13, 2]], [[14, 15, 2], [16, 17, 18, 19, 2], [20, 2]])


def grads(*tensors: torch.Tensor) -> list[torch.Tensor]:
    out = [t.grad.clone() for t in tensors]
    for t in tensors:
        t.grad = None
    return out


# -- fused linear + cross-entropy -----------------------------------------------------------------------------
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("rows", [1, 37, 3000])  # 3000 rows of V=700 span several chunks
def test_fused_loss_equals_cross_entropy_of_logits(label_smoothing: float, with_bias: bool, rows: int) -> None:
    torch.manual_seed(0)
    hidden = torch.randn(rows, 24, requires_grad=True)
    weight = (torch.randn(700, 24) * 0.3).requires_grad_()
    bias = torch.randn(700, requires_grad=True) if with_bias else None
    target = torch.randint(0, 700, (rows,))
    params = [hidden, weight] + ([bias] if with_bias else [])

    reference = F.cross_entropy(F.linear(hidden, weight, bias), target, reduction="sum",
                                label_smoothing=label_smoothing)
    (reference / rows).backward()
    expected = grads(*params)
    fused = linear_cross_entropy(hidden, weight, bias, target, label_smoothing)
    (fused / rows).backward()
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-4)
    for got, want in zip(grads(*params), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # the loss-only path (evaluation) gives the same value
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, bias, target, label_smoothing), fused)


def test_fused_loss_under_bf16_autocast_is_close_and_keeps_grad_dtypes() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(500, 32, requires_grad=True)
    weight = (torch.randn(300, 32) * 0.2).requires_grad_()
    bias = torch.zeros(300, requires_grad=True)
    target = torch.randint(0, 300, (500,))
    reference = F.cross_entropy(F.linear(hidden, weight, bias), target, reduction="sum")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = linear_cross_entropy(hidden, weight, bias, target)
    fused.backward()
    assert fused.dtype == torch.float32
    assert abs(fused.item() - reference.item()) / reference.item() < 1e-2
    assert hidden.grad.dtype == weight.grad.dtype == bias.grad.dtype == torch.float32


def test_fused_loss_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="hidden must be"):
        linear_cross_entropy(torch.zeros(2, 3, 4), torch.zeros(5, 4), None, torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_model_loss_and_gradients_equal_the_unfused_reference(cell: str) -> None:
    torch.manual_seed(0)
    model = build_model(RNNConfig(preset="tiny", cell=cell, dropout=0.0), VOCAB)
    b = batch()
    loss = model(b.src, b.src_len, b.tgt_in, b.tgt_out, label_smoothing=0.1)
    loss.backward()
    fused_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    # The computation the fused path replaces: logits of the non-pad positions, then F.cross_entropy.
    hidden, _ = model.decode(b.tgt_in, model.encode(b.src, b.src_len))
    keep = b.tgt_out != PAD_ID
    reference = F.cross_entropy(model.logits(hidden[keep]).float(), b.tgt_out[keep], reduction="sum",
                                label_smoothing=0.1)
    reference.backward()
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(fused_grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


# -- beam memory held once per source -------------------------------------------------------------------------
@pytest.mark.parametrize("attention", ["dot", "general", "additive"])
def test_grouped_memory_steps_equal_replicated_memory(attention: str) -> None:
    torch.manual_seed(0)
    model = build_model(RNNConfig(preset="tiny", attention=attention, dropout=0.0), VOCAB).eval()
    b = batch()
    k = 4
    with torch.no_grad():
        memory = model.encode(b.src, b.src_len)
        rows = torch.arange(3).repeat_interleave(k)
        grouped = memory.select(rows)
        assert grouped.group == k and grouped.outputs.size(0) == 3  # one copy per source
        tokens = torch.randint(4, VOCAB, (3 * k,))
        got, _ = model.step(tokens, grouped, grouped.state)
        # Reference: every hypothesis with its own copy of its source (what search did before).
        copies = [memory.outputs, memory.mask, memory.keys]
        want, _ = model.step(tokens, type(memory)(*(t.index_select(0, rows) for t in copies[:2]), grouped.state,
                                                  copies[2].index_select(0, rows)), grouped.state)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        # Dropping sentence 1 keeps the grouping; reordering rows inside a group breaks it (one copy per row).
        kept = grouped.select((torch.tensor([0, 2]).unsqueeze(1) * k + torch.arange(k)).view(-1))
        assert kept.group == k and kept.outputs.size(0) == 2
        mixed = grouped.select(torch.tensor([0, 5, 1, 9]))
        assert mixed.group == 1 and mixed.outputs.size(0) == 4
        torch.testing.assert_close(mixed.outputs, memory.outputs.index_select(0, torch.tensor([0, 1, 0, 2])))


# -- bf16 autocast and torch.compile in the trainer -----------------------------------------------------------
def test_bf16_training_tracks_fp32_on_the_fixture(tmp_path: Path) -> None:
    fp32 = Trainer(tiny_config("model.dropout=0.0"), tmp_path / "fp32", quiet=True).fit()
    bf16 = Trainer(tiny_config("model.dropout=0.0", "train.precision=bf16"), tmp_path / "bf16", quiet=True).fit()
    assert [r["step"] for r in bf16.history] == [r["step"] for r in fp32.history]
    for a, b in zip(fp32.history, bf16.history, strict=True):
        assert abs(b["val_loss"] - a["val_loss"]) / a["val_loss"] < 0.02, (a["val_loss"], b["val_loss"])


def test_compile_without_a_cpp_compiler_is_a_clear_user_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(trainer_module.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="train.compile: .*C\\+\\+ compiler"):
        Trainer(tiny_config("train.compile=true", "train.device=cpu"), tmp_path / "run", quiet=True)


def test_compile_failure_at_the_first_step_is_a_clear_user_error(tmp_path: Path) -> None:
    trainer = Trainer(tiny_config("train.compile=true", "train.epochs=1"), tmp_path / "run", quiet=True)

    class FakeBackendFailure(RuntimeError):
        pass

    FakeBackendFailure.__module__ = "torch._dynamo.exc"  # how torch's compile errors are recognised

    def broken(*args, **kwargs):
        raise FakeBackendFailure("backend 'inductor' raised: no luck")

    trainer.forward = broken
    with pytest.raises(UserError, match="train.compile: torch.compile failed .*no luck.*train.compile=false"):
        trainer.fit()


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path: Path) -> None:
    overrides = ("model.dropout=0.0", "train.epochs=2")
    eager = Trainer(tiny_config(*overrides), tmp_path / "eager", quiet=True).fit()
    compiled = Trainer(tiny_config(*overrides, "train.compile=true"), tmp_path / "compiled", quiet=True).fit()
    for a, b in zip(eager.history, compiled.history, strict=True):
        assert abs(a["val_loss"] - b["val_loss"]) < 1e-3
    # Checkpoints of a compiled run load into a plain model (no `_orig_mod.` prefixes).
    from safetensors.torch import load_file

    names = set(load_file(str(tmp_path / "compiled" / "checkpoints" / "last" / "model.safetensors")))
    assert names and not any(n.startswith("_orig_mod") for n in names)

