"""A (bi)GRU/LSTM over right-padded sources that equals the packed run, in one oneDNN call per layer.

On a CPU, torch runs an RNN over a `PackedSequence` whose lengths differ as a per-time-step loop recorded by
autograd; over the same batch padded it calls oneDNN's fused RNN kernel, far faster forward and backward
(`benchmarks/train_throughput.py`'s `ours_packed_encoder` rows measure the whole training step both ways).
Padding normally changes the result: the forward direction's final state would include the pad steps, and the
reverse direction would start from them.

Here pad steps are made exact no-ops. Each layer's input gets one extra feature, 1 at pad positions and 0 at
real ones, whose input weights drive the gates that keep the state to saturation:

- LSTM: input gate pre-activation -BIG, forget gate +BIG, so i = 0 and f = 1 exactly in floating point and
  c_t = 1·c_{t-1} + 0·g = c_{t-1} bit for bit: the forward direction's final c is the packed run's. In the
  reverse direction, which meets the pads first, c stays 0 and h = o·tanh(0) = 0 exactly, so the real
  tokens start from the zero state as in the packed run.
- GRU: update gate +BIG, so z = 1 and h_t = z·h_{t-1} + (1 - z)·n: the reverse direction's zero state stays
  exactly 0 through its leading pads.

Pad steps never feed a real position of the forward direction (they come after it), and h is not kept
bit for bit across them (LSTM: h = o·tanh(c) with a fresh o; oneDNN's GRU update rounds once per step), so
the forward direction's final h is read from the output at each row's last real position.

At saturation the sigmoid's derivative σ(1 - σ) is exactly 0, so pad steps pass no gradient to any weight;
the extra weights are constants and take none. At real positions the extra feature is 0 and adds exactly
0 to every pre-activation. The result equals the packed run to float rounding (tests/test_padded_rnn.py).
It assumes the recurrent pre-activations stay far below BIG in magnitude (|h| <= 1, so this holds unless a
recurrent weight is of order BIG / hidden).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import _VF, nn

BIG = 1e4


def _saturating_column(rnn: nn.GRU | nn.LSTM, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Input weights [gates·H, 1] of the pad feature: close the input gate, open the forget/update gate."""
    hidden = rnn.hidden_size
    column = torch.zeros((4 if isinstance(rnn, nn.LSTM) else 3) * hidden, 1, dtype=dtype, device=device)
    if isinstance(rnn, nn.LSTM):  # torch's gate order: input, forget, cell, output
        column[:hidden] = -BIG
        column[hidden : 2 * hidden] = BIG
    else:  # reset, update, new
        column[hidden : 2 * hidden] = BIG
    return column


def run_padded(rnn: nn.GRU | nn.LSTM, inputs: torch.Tensor, lengths: torch.Tensor, real: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    """`rnn` (batch_first) over right-padded `inputs` [B, S, E] as if packed by `lengths` [B] (each >= 1).

    `real` [B, S] is True at real positions. Returns outputs [B, S, dirs·H], zero at pads as
    `pad_packed_sequence` gives them, and the final state as `rnn` returns it for the packed batch.
    """
    if not rnn.batch_first:
        raise ValueError("run_padded expects a batch_first RNN")
    is_lstm = isinstance(rnn, nn.LSTM)
    batch, steps = inputs.shape[:2]
    directions, hidden = (2 if rnn.bidirectional else 1), rnn.hidden_size
    pad_feature = (~real).to(inputs.dtype).unsqueeze(-1)
    column = _saturating_column(rnn, rnn.weight_ih_l0.dtype, inputs.device)
    last = (lengths.to(inputs.device) - 1).view(batch, 1, 1)
    zeros = inputs.new_zeros(directions, batch, hidden)
    finals_h, finals_c = [], []
    layer_input = inputs
    for layer in range(rnn.num_layers):
        if layer > 0:  # nn.GRU/LSTM's dropout: on every layer's output but the last's
            layer_input = F.dropout(layer_input, rnn.dropout, rnn.training)
        weights: list[torch.Tensor] = []
        for suffix in (f"l{layer}", f"l{layer}_reverse")[:directions]:
            weights += [torch.cat([getattr(rnn, f"weight_ih_{suffix}"), column], 1),
                        getattr(rnn, f"weight_hh_{suffix}"), getattr(rnn, f"bias_ih_{suffix}"),
                        getattr(rnn, f"bias_hh_{suffix}")]
        augmented = torch.cat([layer_input, pad_feature], -1)
        if is_lstm:
            layer_input, h, c = _VF.lstm(augmented, (zeros, zeros), weights, True, 1, 0.0, rnn.training,
                                         rnn.bidirectional, True)
            finals_c.append(c)
        else:
            layer_input, h = _VF.gru(augmented, zeros, weights, True, 1, 0.0, rnn.training, rnn.bidirectional,
                                     True)
        # the forward direction's h at each row's last real step; the reverse direction ends at step 0
        forward_h = layer_input.gather(1, last.expand(batch, 1, layer_input.size(2)))[:, 0, :hidden]
        finals_h.append(torch.cat([forward_h.unsqueeze(0), h[1:]]))
    outputs = layer_input * real.unsqueeze(-1).to(layer_input.dtype)
    final_h = torch.cat(finals_h)
    return outputs, ((final_h, torch.cat(finals_c)) if is_lstm else final_h)
