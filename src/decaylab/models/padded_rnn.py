"""A (bi)LSTM over right-padded sources that equals the packed run, in one oneDNN call per layer.

On a CPU, torch runs an RNN over a `PackedSequence` whose lengths differ as a per-time-step loop recorded by
autograd; an LSTM over the same batch padded goes to oneDNN's fused RNN kernel, far faster forward and backward
(`python benchmarks/padded_encoder.py`). Padding normally changes the result: the forward direction's final
state would include the pad steps, and the reverse direction would start from them.

Here pad steps are made exact no-ops. Each layer's input gets one extra feature, 1 at pad positions and 0 at
real ones, whose input weights drive the input gate to -BIG and the forget gate to +BIG: i = 0 and f = 1 exactly
in floating point, so c_t = 1·c_{t-1} + 0·g = c_{t-1} bit for bit and the forward direction's final c is the
packed run's. The reverse direction meets the pads first: its c stays 0 and h = o·tanh(0) = 0 exactly, so its
real tokens start from the zero state, as in the packed run. h is not kept across pads (h = o·tanh(c) with a
fresh o), so the forward direction's final h is read from the output at each row's last real position.

At saturation the sigmoid's derivative σ(1 - σ) is exactly 0, so pad steps pass no gradient to any weight or
input; the extra weights are constants and take none. At real positions the extra feature is 0 and adds exactly
0 to every pre-activation. The result equals the packed run to float rounding (tests/test_padded_rnn.py). It
assumes the gate pre-activations at pad steps stay far below BIG in magnitude (|h| <= 1, and the pad embedding is
zero, so this holds unless a weight is of order BIG / width).

Only the LSTM: torch's CPU GRU has no oneDNN kernel (`aten::gru` is the per-step loop either way, and
`mkldnn_rnn_layer` builds LSTM primitives only), so a padded GRU would do the pad steps as extra work for
nothing. Under CPU autocast the outputs and states come in the autocast dtype, as oneDNN computes them; oneDNN
builds a bf16 LSTM only on CPUs with bf16 instructions (AVX-512 BF16, AMX), so `fused_lstm_supported` tells the
model when to keep the packed run instead.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import _VF, nn

BIG = 1e4


def _pad_column(lstm: nn.LSTM) -> torch.Tensor:
    """Input weights [4H, 1] of the pad feature: input gate closed, forget gate open (torch's order i, f, g, o)."""
    hidden = lstm.hidden_size
    column = torch.zeros(4 * hidden, 1, dtype=lstm.weight_ih_l0.dtype, device=lstm.weight_ih_l0.device)
    column[:hidden] = -BIG
    column[hidden : 2 * hidden] = BIG
    return column


def run_padded(lstm: nn.LSTM, inputs: torch.Tensor, lengths: torch.Tensor
               ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """`lstm` (batch_first) over right-padded `inputs` [B, S, E] as if packed by `lengths` [B] (each >= 1).

    Returns outputs [B, S, dirs·H], zero at pads as `pad_packed_sequence` gives them, and the final (h, c) as
    `lstm` returns them for the packed batch.
    """
    if not (isinstance(lstm, nn.LSTM) and lstm.batch_first and lstm.bias and not lstm.proj_size):
        raise ValueError("run_padded takes a batch_first nn.LSTM with biases and no projection")
    batch, steps = inputs.shape[:2]
    directions, hidden = (2 if lstm.bidirectional else 1), lstm.hidden_size
    lengths = torch.as_tensor(lengths).to(inputs.device)
    real = torch.arange(steps, device=inputs.device).unsqueeze(0) < lengths.unsqueeze(1)
    pad_feature = (~real).to(inputs.dtype).unsqueeze(-1)
    column = _pad_column(lstm)
    last = (lengths - 1).view(batch, 1, 1)
    zeros = inputs.new_zeros(directions, batch, hidden)
    finals_h, finals_c = [], []
    layer_input = inputs
    for layer in range(lstm.num_layers):
        if layer > 0:  # nn.LSTM's dropout: on every layer's output but the last's
            layer_input = F.dropout(layer_input, lstm.dropout, lstm.training)
        weights: list[torch.Tensor] = []
        for suffix in (f"l{layer}", f"l{layer}_reverse")[:directions]:
            weights += [torch.cat([getattr(lstm, f"weight_ih_{suffix}"), column], 1),
                        getattr(lstm, f"weight_hh_{suffix}"), getattr(lstm, f"bias_ih_{suffix}"),
                        getattr(lstm, f"bias_hh_{suffix}")]
        layer_input, h, c = _VF.lstm(torch.cat([layer_input, pad_feature], -1), (zeros, zeros), weights, True, 1,
                                     0.0, lstm.training, lstm.bidirectional, True)
        # the forward direction's h at each row's last real step; the reverse direction ends at step 0
        forward_h = layer_input.gather(1, last.expand(batch, 1, layer_input.size(2)))[:, 0, :hidden]
        finals_h.append(torch.cat([forward_h.unsqueeze(0), h[1:]]))
        finals_c.append(c)
    outputs = (layer_input * real.unsqueeze(-1).to(layer_input.dtype)).contiguous()
    return outputs, (torch.cat(finals_h), torch.cat(finals_c))


def cpu_compute_dtype() -> torch.dtype:
    """The dtype an LSTM computes in on the CPU right now: the CPU autocast dtype when it is on, else float32."""
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32


@functools.cache
def fused_lstm_supported(dtype: torch.dtype) -> bool:
    """Whether this CPU's oneDNN runs `run_padded` in `dtype`, forward and backward (probed once per dtype).

    float32 always; bf16 needs bf16 instructions: on an AVX2-only CPU oneDNN cannot create the primitive.
    """
    if dtype == torch.float32:
        return True
    # with gradients, whatever the caller's mode (a first call may come from inference_mode decoding), and on a
    # forked RNG: the probe's LSTM draws its weights, which must not move the caller's dropout or init stream
    try:
        with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad(), \
                torch.autocast("cpu", dtype=dtype):
            lstm = nn.LSTM(2, 2, batch_first=True)
            inputs = torch.zeros(1, 2, 2, requires_grad=True)
            outputs, _ = run_padded(lstm, inputs, torch.tensor([2]))
            outputs.float().sum().backward()
    except RuntimeError:
        return False
    return True


@torch.compiler.assume_constant_result
def fused_lstm_here() -> bool:
    """`fused_lstm_supported` at the current CPU compute dtype; to torch.compile a constant, probed eagerly."""
    return fused_lstm_supported(cpu_compute_dtype())
