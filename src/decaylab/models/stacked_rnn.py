"""K replicas of `Seq2Seq` as one model: every parameter stacked on a leading replica dimension.

The vectorized sweep trains K regularization settings at once on the same batches. Each replica computes
exactly `Seq2Seq`'s function (same parameter names, gate order, packing semantics, attention and tied output),
with batched matmuls over the replica dimension: one GEMM per layer and time step for all K instead of K.
`nn.GRU`/`nn.LSTM` take no per-sample weights and do not vmap, so the recurrences are written out
(`stacked_recurrence.py`, with a hand-written backward); packing is reproduced by masking (a padded step keeps
the state and outputs zero, as `pack_padded_sequence` does). Dropout draws each replica's masks from that
replica's own generator with its own probability, so a replica's numbers do not depend on which other replicas
share the stack.
"""

from __future__ import annotations

import torch

from decaylab.config import RNNConfig
from decaylab.models.stacked import StackedModel, linear
from decaylab.models.stacked_recurrence import GRURecurrence, LSTMRecurrence

State = list[torch.Tensor]  # per layer [K, B, H]; an LSTM keeps a second list for its cell


class StackedSeq2Seq(StackedModel):
    """K `Seq2Seq` replicas; `params` maps each `Seq2Seq.named_parameters()` name to a [K, ...] leaf tensor."""

    TIED = {"output.weight": "tgt_embed.weight"}

    def __init__(self, cfg: RNNConfig, params: dict[str, torch.Tensor], dropouts: list[float],
                 generators: list[torch.Generator] | None = None):
        super().__init__(params, dropouts, generators)
        self.cfg = cfg

    # -- building blocks ---------------------------------------------------------------------------
    def dropout(self, x: torch.Tensor, rates: list[float] | None = None) -> torch.Tensor:
        """Inverted dropout with replica k's rate and generator on x[k] (identity in eval mode)."""
        rates = self.dropouts if rates is None else rates
        if not self.training or not any(r > 0 for r in rates):
            return x
        masks = []
        for rate, generator in zip(rates, self.generators, strict=True):
            if rate > 0:
                keep = torch.rand(x.shape[1:], generator=generator, device=x.device, dtype=torch.float32) >= rate
                masks.append(keep.to(x.dtype) / (1.0 - rate))
            else:
                masks.append(torch.ones(x.shape[1:], device=x.device, dtype=x.dtype))
        return x * torch.stack(masks)

    def _rnn(self, x: torch.Tensor, prefix: str, states: list[tuple[torch.Tensor, ...]], directions: int,
             valid: torch.Tensor | None) -> tuple[torch.Tensor, list[tuple[torch.Tensor, ...]]]:
        """A (bi)GRU/LSTM stack over x [K, B, T, in]; `states` holds (h[, c]) per layer and direction in torch's
        order; `valid` [B, T] masks padded steps (packing). The two directions of a layer run as one recurrence
        over 2K rows, the backward one on time-reversed inputs (a padded step keeps the state, so reversing the
        padded batch starts each sequence's backward pass at its last real token, as packing does)."""
        k = self.replicas
        finals: list[tuple[torch.Tensor, ...]] = []
        between = [r if self.cfg.layers > 1 else 0.0 for r in self.dropouts]
        mask = None
        if valid is not None:
            rows = valid.unsqueeze(0).expand(k, -1, -1)
            mask = rows if directions == 1 else torch.cat([rows, rows.flip(2)])  # [R, B, T]
        for layer in range(self.cfg.layers):
            if layer > 0:
                x = self.dropout(x, between)
            names = [f"_l{layer}" + ("_reverse" if d else "") for d in range(directions)]
            gates = [linear(x, self.p(f"{prefix}.weight_ih{n}"), self.p(f"{prefix}.bias_ih{n}")) for n in names]
            if directions == 2:
                gates[1] = gates[1].flip(2)
            w_hh, b_hh = ([self.p(f"{prefix}.{kind}{n}") for n in names] for kind in ("weight_hh", "bias_hh"))
            start = [states[layer * directions][i] if directions == 1 else
                     torch.cat([states[layer * directions + d][i] for d in range(directions)])
                     for i in range(len(states[0]))]
            recurrence = GRURecurrence if self.cfg.cell == "gru" else LSTMRecurrence
            joined = (torch.cat(t) if directions == 2 else t[0] for t in (gates, w_hh, b_hh))
            outputs, *final = recurrence.apply(*joined, *start, mask)
            for d in range(directions):
                finals.append(tuple(f[d * k:(d + 1) * k] for f in final))
            x = outputs if directions == 1 else torch.cat([outputs[:k], outputs[k:].flip(2)], dim=-1)
        return x, finals

    def _zeros(self, batch: int, hidden: int, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        zero = torch.zeros(self.replicas, batch, hidden, dtype=like.dtype, device=like.device)
        return (zero, zero) if self.cfg.cell == "lstm" else (zero,)

    # -- the model ---------------------------------------------------------------------------------
    def encode(self, src: torch.Tensor, src_len: torch.Tensor):
        """Encoder outputs [K, B, S, H], their mask [B, S], keys, and the decoder's initial states."""
        cfg = self.cfg
        directions = 2 if cfg.bidirectional else 1
        enc_hidden = cfg.hidden // directions
        embedded = self.dropout(self.embed("src_embed.weight", src))
        lengths = src_len.to(src.device, non_blocking=True)
        valid = torch.arange(src.size(1), device=src.device).unsqueeze(0) < lengths.unsqueeze(1)
        start = [self._zeros(src.size(0), enc_hidden, embedded)] * (cfg.layers * directions)
        outputs, finals = self._rnn(embedded, "encoder", start, directions, valid)
        # decoder initial state per layer: the directions' final states joined (Seq2Seq._bridge)
        state = [tuple(torch.cat([finals[layer * directions + d][i] for d in range(directions)], dim=-1)
                       for i in range(len(finals[0]))) for layer in range(cfg.layers)]
        if cfg.attention == "dot" or cfg.attention == "none":
            keys = outputs
        else:
            keys = linear(outputs, self.p("attention.key_proj.weight"))
        return outputs, valid, keys, state

    def attend(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               mask: torch.Tensor) -> torch.Tensor:
        """Context vectors [K, B, T, H] (Attention.forward for each replica)."""
        k, b, t = query.shape[:3]
        if self.cfg.attention == "additive":
            projected = linear(query, self.p("attention.query_proj.weight"), self.p("attention.query_proj.bias"))
            energy = torch.tanh(projected.unsqueeze(3) + keys.unsqueeze(2))  # [K, B, T, S, H]
            scores = linear(energy, self.p("attention.score.weight")).squeeze(-1)
        else:
            scores = torch.bmm(query.reshape(k * b, t, -1), keys.reshape(k * b, keys.size(2), -1).transpose(1, 2))
            scores = scores.view(k, b, t, -1)
        scores = scores.masked_fill(~mask.view(1, b, 1, -1), float("-inf"))
        weights = torch.softmax(scores, dim=-1).reshape(k * b, t, -1)
        return torch.bmm(weights, values.reshape(k * b, values.size(2), -1)).view(k, b, t, -1)

    def decode(self, tgt_in: torch.Tensor, memory) -> torch.Tensor:
        """Attentional decoder states [K, B, T, D] for the shifted target."""
        outputs, mask, keys, state = memory
        embedded = self.dropout(self.embed("tgt_embed.weight", tgt_in))
        hidden, _ = self._rnn(embedded, "decoder", state, 1, None)
        if self.cfg.attention != "none":
            context = self.attend(hidden, keys, outputs, mask)
            hidden = torch.tanh(linear(torch.cat([context, hidden], dim=-1), self.p("combine.weight")))
        hidden = self.dropout(hidden)
        if self.has("bottleneck.weight"):
            hidden = linear(hidden, self.p("bottleneck.weight"))
        return hidden

    def __call__(self, src: torch.Tensor, src_len: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor,
                 label_smoothing: float = 0.0, target_index: torch.Tensor | None = None) -> torch.Tensor:
        """Per-replica summed cross-entropy [K] over the non-pad target tokens (Seq2Seq.forward for each)."""
        hidden = self.decode(tgt_in, self.encode(src, src_len))
        return self.target_loss(hidden, tgt_out, label_smoothing, target_index)
