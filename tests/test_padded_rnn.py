"""The padded oneDNN LSTM equals torch's packed run: outputs, final states and every gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from decaylab.config import RNNConfig
from decaylab.data.batching import collate
from decaylab.models import build_model
from decaylab.models.padded_rnn import cpu_compute_dtype, fused_lstm_supported, run_padded

LENGTHS = torch.tensor([9, 3, 5, 1, 9, 7, 2, 3])


def packed_run(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor):
    """Torch's own reference: pack, run, unpack."""
    outputs, final = lstm(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=x.size(1))
    return outputs, final


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_padded_run_equals_the_packed_run(layers: int, bidirectional: bool, training: bool) -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(6, 5, layers, batch_first=True, bidirectional=bidirectional).train(training)
    real = torch.arange(9).unsqueeze(0) < LENGTHS.unsqueeze(1)
    # whatever stands at the pad positions must not matter
    x = torch.randn(len(LENGTHS), 9, 6) * 3
    reference_x, padded_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref_out, ref_final = packed_run(lstm, reference_x, LENGTHS)
    out, final = run_padded(lstm, padded_x, LENGTHS)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-6)
    assert out.is_contiguous() and not out[~real].any()
    for ours, theirs in zip(final, ref_final, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)

    weights = torch.randn_like(ref_out)
    final_weights = [torch.randn_like(s) for s in ref_final]

    def objective(o: torch.Tensor, f) -> torch.Tensor:
        return (o * weights).sum() + sum((s * w).sum() for s, w in zip(f, final_weights, strict=True))

    ref_grads = torch.autograd.grad(objective(ref_out, ref_final), [reference_x, *lstm.parameters()])
    grads = torch.autograd.grad(objective(out, final), [padded_x, *lstm.parameters()])
    for name, ours, theirs in zip(["input"] + [n for n, _ in lstm.named_parameters()], grads, ref_grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5, msg=name)
    assert not grads[0][~real].any(), "pad positions got an input gradient"


def test_pad_steps_are_exact_no_ops() -> None:
    """Whatever the pads hold, nothing changes bit for bit: outputs, states and every gradient; pads pass nothing.

    Same shapes, so every GEMM is blocked alike and any difference could only come from the pad steps themselves.
    """
    torch.manual_seed(1)
    lstm = nn.LSTM(4, 8, 2, batch_first=True, bidirectional=True)
    x = torch.randn(2, 3, 4)
    lengths = torch.tensor([3, 2])
    x[1, 2] = 0.0  # row 1's pad position inside the real width
    noise = torch.randn(2, 300, 4)
    runs = []
    for scale in (0.0, 10.0, 1000.0):
        pads = noise * scale
        inputs = torch.cat([x, pads], 1)
        inputs[1, 2] = pads[1, 0]
        inputs.requires_grad_()
        out, (h, c) = run_padded(lstm, inputs, lengths)
        loss = out.sum() + h.sum() + c.sum()
        grads = torch.autograd.grad(loss, [inputs, *lstm.parameters()])
        assert not out[:, 3:].any() and not out[1, 2].any()  # outputs at pads are zero
        assert not grads[0][:, 3:].any() and not grads[0][1, 2].any()  # and pads take no gradient
        runs.append([out, h, c, grads[0], *grads[1:]])
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert torch.equal(a, b)


def test_extra_pad_steps_change_nothing_beyond_rounding() -> None:
    """300 extra pad steps: equal to float rounding (a longer batch may block a GEMM differently; on some CPUs,
    e.g. AVX2-only ones, that moves the last bit, so exact equality is tested with equal shapes above)."""
    torch.manual_seed(1)
    lstm = nn.LSTM(4, 8, 2, batch_first=True, bidirectional=True)
    x = torch.randn(2, 3, 4)
    lengths = torch.tensor([3, 2])
    runs = []
    for extra in (0, 300):
        inputs = torch.cat([x, torch.randn(2, extra, 4) * 10], 1).requires_grad_()
        out, (h, c) = run_padded(lstm, inputs, lengths)
        loss = out.sum() + h.sum() + c.sum()
        grads = torch.autograd.grad(loss, [inputs, *lstm.parameters()])
        runs.append([out[:, :3], h, c, grads[0][:, :3], *grads[1:]])
    for short, long in zip(*runs, strict=True):
        torch.testing.assert_close(long, short, rtol=1e-6, atol=1e-7)


def test_fused_lstm_support_is_probed_per_dtype() -> None:
    assert fused_lstm_supported(torch.float32)
    supported = fused_lstm_supported(torch.bfloat16)  # False on a CPU without bf16 instructions (AVX2)
    lstm = nn.LSTM(3, 4, batch_first=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cpu_compute_dtype() == torch.bfloat16
        if supported:
            run_padded(lstm, torch.randn(2, 3, 3), torch.tensor([3, 2]))
        else:
            with pytest.raises(RuntimeError):
                run_padded(lstm, torch.randn(2, 3, 3), torch.tensor([3, 2]))
    assert cpu_compute_dtype() == torch.float32


def test_model_encoder_on_cpu_equals_the_packed_encoder() -> None:
    torch.manual_seed(0)
    model = build_model(RNNConfig(preset="tiny", cell="lstm", dropout=0.0), 40)
    b = collate([[5, 6, 7, 2], [8, 2], [9, 10, 11, 12, 13, 2], [3, 2]], [[5, 2], [6, 7, 2], [8, 2], [9, 2]])
    memory = model.encode(b.src, b.src_len)
    outputs, final = model.run_encoder_packed(model.src_embed(b.src), b.src_len)
    torch.testing.assert_close(memory.outputs, outputs, rtol=0, atol=1e-6)
    for ours, theirs in zip(memory.state, final, strict=True):
        torch.testing.assert_close(ours, model._bridge(theirs), rtol=0, atol=1e-6)


@pytest.mark.parametrize("rnn", [nn.GRU(3, 4, batch_first=True), nn.LSTM(3, 4),
                                 nn.LSTM(3, 4, batch_first=True, bias=False),
                                 nn.LSTM(3, 4, batch_first=True, proj_size=2)],
                         ids=["gru", "time-major", "no-bias", "projection"])
def test_run_padded_refuses_what_it_cannot_compute(rnn: nn.RNNBase) -> None:
    with pytest.raises(ValueError, match="batch_first nn.LSTM"):
        run_padded(rnn, torch.zeros(2, 3, 3), torch.tensor([3, 2]))


def test_encoder_keeps_the_packed_run_where_the_fused_kernel_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU without the fused kernel in the compute dtype (bf16 on AVX2) trains through the packed run instead."""
    import decaylab.models.rnn as rnn

    torch.manual_seed(0)
    model = build_model(RNNConfig(preset="tiny", cell="lstm", dropout=0.0), 40)
    b = collate([[5, 6, 7, 2], [8, 2], [9, 10, 11, 12, 13, 2]], [[5, 2], [6, 7, 2], [8, 2]])
    fused = model.encode(b.src, b.src_len)
    calls: list[int] = []
    monkeypatch.setattr(rnn, "fused_lstm_here", lambda: False)
    monkeypatch.setattr(rnn, "run_padded", lambda *args: calls.append(1))
    packed = model.encode(b.src, b.src_len)
    assert not calls  # the padded kernel was not asked for
    torch.testing.assert_close(packed.outputs, fused.outputs, rtol=0, atol=1e-6)


def test_fused_lstm_probe_neither_depends_on_grad_mode_nor_moves_the_rng() -> None:
    fused_lstm_supported.cache_clear()
    state = torch.get_rng_state()
    with torch.inference_mode():
        in_inference = fused_lstm_supported(torch.bfloat16)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's dropout/init stream is untouched
    fused_lstm_supported.cache_clear()
    assert fused_lstm_supported(torch.bfloat16) == in_inference
