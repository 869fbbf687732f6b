"""The padded oneDNN encoder equals torch's packed run: outputs, final states and every gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from decaylab.config import ModelConfig
from decaylab.data.batching import collate
from decaylab.models import build_model
from decaylab.models.padded_rnn import run_padded

LENGTHS = torch.tensor([9, 3, 5, 1, 9, 7, 2, 3])


def packed_run(rnn: nn.RNNBase, x: torch.Tensor, lengths: torch.Tensor):
    """Torch's own reference: pack, run, unpack."""
    outputs, final = rnn(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=x.size(1))
    return outputs, final


def as_tuple(state) -> tuple[torch.Tensor, ...]:
    return state if isinstance(state, tuple) else (state,)


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_padded_run_equals_the_packed_run(cell: type[nn.RNNBase], layers: int, bidirectional: bool) -> None:
    torch.manual_seed(0)
    rnn = cell(6, 5, layers, batch_first=True, bidirectional=bidirectional)
    real = torch.arange(9).unsqueeze(0) < LENGTHS.unsqueeze(1)
    # whatever stands at the pad positions must not matter
    x = torch.randn(len(LENGTHS), 9, 6) * 3
    reference_x, padded_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref_out, ref_final = packed_run(rnn, reference_x, LENGTHS)
    out, final = run_padded(rnn, padded_x, LENGTHS, real)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-6)
    assert not out[~real].any()
    for ours, theirs in zip(as_tuple(final), as_tuple(ref_final), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)

    weights = torch.randn_like(ref_out)
    final_weights = [torch.randn_like(s) for s in as_tuple(ref_final)]

    def objective(o: torch.Tensor, f) -> torch.Tensor:
        return (o * weights).sum() + sum((s * w).sum() for s, w in zip(as_tuple(f), final_weights, strict=True))

    ref_grads = torch.autograd.grad(objective(ref_out, ref_final), [reference_x, *rnn.parameters()])
    grads = torch.autograd.grad(objective(out, final), [padded_x, *rnn.parameters()])
    for name, ours, theirs in zip(["input"] + [n for n, _ in rnn.named_parameters()], grads, ref_grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5, msg=name)
    assert not grads[0][~real].any(), "pad positions got an input gradient"


def test_pad_steps_are_exact_no_ops_in_the_recurrence() -> None:
    """A row padded by 300 steps ends in the state of the same row unpadded: nothing leaks through the pads.

    (Equal to GEMM rounding, not bitwise: the input projection is blocked differently for another length.)
    """
    torch.manual_seed(1)
    for cell in (nn.LSTM, nn.GRU):
        rnn = cell(4, 8, 1, batch_first=True, bidirectional=True)
        x = torch.randn(1, 3, 4)
        short = run_padded(rnn, x, torch.tensor([3]), torch.ones(1, 3, dtype=torch.bool))
        long_x = torch.cat([x, torch.randn(1, 300, 4) * 10], 1)
        real = torch.arange(303).unsqueeze(0) < 3
        long = run_padded(rnn, long_x, torch.tensor([3]), real)
        torch.testing.assert_close(long[0][:, :3], short[0], rtol=0, atol=1e-7)
        for a, b in zip(as_tuple(long[1]), as_tuple(short[1]), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-7, msg=cell.__name__)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_model_encoder_on_cpu_equals_the_packed_encoder(cell: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="tiny", cell=cell, dropout=0.0), 40)
    b = collate([[5, 6, 7, 2], [8, 2], [9, 10, 11, 12, 13, 2], [3, 2]], [[5, 2], [6, 7, 2], [8, 2], [9, 2]])
    memory = model.encode(b.src, b.src_len)
    outputs, final = model.run_encoder_packed(model.src_embed(b.src), b.src_len)
    torch.testing.assert_close(memory.outputs, outputs, rtol=0, atol=1e-6)
    for ours, theirs in zip(as_tuple(memory.state), as_tuple(final), strict=True):
        torch.testing.assert_close(ours, model._bridge(theirs), rtol=0, atol=1e-6)


def test_run_padded_refuses_a_time_major_rnn() -> None:
    with pytest.raises(ValueError, match="batch_first"):
        run_padded(nn.GRU(3, 4), torch.zeros(2, 3, 3), torch.tensor([3, 2]), torch.ones(2, 3, dtype=torch.bool))
