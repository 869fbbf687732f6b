"""The seed's recurrent encoder-decoder, done right.

Encoder: embedding -> (bi)GRU/LSTM over the source as if packed (a CPU LSTM runs padded with pad steps made
exact no-ops: models/padded_rnn.py). Decoder: embedding of the target shifted right (teacher forcing, never the
source) -> GRU/LSTM initialised from the encoder's final state -> global attention over the encoder outputs
(Luong et al. 2015: dot, general, or Bahdanau's additive score) -> attentional state tanh(W[c; h]) ->
dropout -> output projection (optionally tied to the target embedding), or with model.output=adaptive an
adaptive softmax over frequency-ranked tokens (models/adaptive_output.py). Attention follows the recurrent
step, so the decoder RNN runs over the whole target in one call.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from decaylab.config import RNNConfig
from decaylab.data.batching import Batch
from decaylab.data.tokenizer import PAD_ID
from decaylab.models.adaptive_output import adaptive_cutoffs, full_log_probs, target_log_probs
from decaylab.models.fused_loss import linear_cross_entropy
from decaylab.models.padded_rnn import fused_lstm_here, run_padded

# The decoder's state: [layers, N, H] (a pair for LSTM), rows on dim 1. Private to this module: callers go through
# `Seq2Seq.initial_state` / `reorder_state` (models/contract.py).
RNNState = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


@dataclass
class Memory:
    """What the decoder attends to: encoder outputs, their pad mask, and the decoder's initial state.

    The source tensors hold one copy per source; `state` holds one row per decoder row. With `group` g > 1 the
    decoder rows are g consecutive rows per source (beam search's hypotheses): attention then reads each
    source once for its g queries instead of from g identical copies.
    """

    outputs: torch.Tensor  # [N, S, H]
    mask: torch.Tensor  # [N, S] True at real tokens
    state: RNNState  # [layers, N * group, H] (a pair for LSTM)
    keys: torch.Tensor  # outputs pre-projected for the attention score ([N, S, H] or [N, S, A])
    group: int = 1

    def select(self, index: torch.Tensor) -> Memory:
        """Decoder rows `index` (beam search repeats and reorders them); sources are copied once per run of rows."""
        state = _map_state(self.state, lambda s: s.index_select(1, index))
        source = torch.div(index, self.group, rounding_mode="floor") if self.group > 1 else index
        values, counts = torch.unique_consecutive(source, return_counts=True)
        group = int(counts[0]) if counts.numel() else 1
        if counts.numel() and bool((counts == group).all()):
            # every run of `group` consecutive rows shares one source: keep one copy of it
            pick = values
        else:
            group, pick = 1, source
        return Memory(self.outputs.index_select(0, pick), self.mask.index_select(0, pick), state,
                      self.keys.index_select(0, pick), group)


def pack_sources(embedded: torch.Tensor, lengths: torch.Tensor) -> PackedSequence:
    """`pack_padded_sequence(embedded, lengths, batch_first=True, enforce_sorted=False)`, the same packing,
    without its blocking copy of the sort order to the device (on a GPU that copy waits for the device)."""
    lengths, order = torch.sort(lengths.to(torch.int64), descending=True)  # as pack_padded_sequence sorts
    order = order.to(embedded.device, non_blocking=True)
    packed = pack_padded_sequence(embedded.index_select(0, order), lengths, batch_first=True)
    return PackedSequence(packed.data, packed.batch_sizes, order, None)


def _map_state(state: RNNState, fn) -> RNNState:
    return tuple(fn(s) for s in state) if isinstance(state, tuple) else fn(state)


class Attention(nn.Module):
    """Global attention scores between decoder states [B, T, H] and encoder outputs [B, S, H]."""

    def __init__(self, kind: str, hidden: int):
        super().__init__()
        self.kind = kind
        if kind == "general":
            self.key_proj = nn.Linear(hidden, hidden, bias=False)
        elif kind == "additive":
            self.key_proj = nn.Linear(hidden, hidden, bias=False)
            self.query_proj = nn.Linear(hidden, hidden, bias=True)
            self.score = nn.Linear(hidden, 1, bias=False)

    def keys(self, outputs: torch.Tensor) -> torch.Tensor:
        """Pre-project the encoder outputs once per source (reused at every decoding step)."""
        return outputs if self.kind == "dot" else self.key_proj(outputs)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """Context vectors [B, T, H] for keys/values of N = B / g sources (g consecutive query rows per source)."""
        rows, steps, n = query.size(0), query.size(1), keys.size(0)
        if rows % n:
            raise ValueError(f"{rows} query rows cannot be grouped over {n} sources")
        query = query.reshape(n, rows // n * steps, query.size(2))  # a source's g rows become g*T queries
        if self.kind == "additive":
            energy = torch.tanh(self.query_proj(query).unsqueeze(2) + keys.unsqueeze(1))  # [N, gT, S, H]
            scores = self.score(energy).squeeze(-1)
        else:
            scores = torch.bmm(query, keys.transpose(1, 2))
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        context = torch.bmm(torch.softmax(scores, dim=-1), values)
        return context.reshape(rows, steps, context.size(2))


class Seq2Seq(nn.Module):
    """GRU/LSTM encoder-decoder with attention; `forward` gives the summed token loss of a batch.

    Meets `models.contract.Seq2SeqModel` with `Memory` as its memory and `RNNState` as its decoding state.
    """

    def __init__(self, cfg: RNNConfig, vocab_size: int):
        super().__init__()
        if cfg.bidirectional and cfg.hidden % 2:
            raise ValueError(f"model.hidden must be even with bidirectional=True (got {cfg.hidden})")
        self.cfg = cfg
        rnn = nn.GRU if cfg.cell == "gru" else nn.LSTM
        between = cfg.dropout if cfg.layers > 1 else 0.0
        enc_hidden = cfg.hidden // 2 if cfg.bidirectional else cfg.hidden
        self.src_embed = nn.Embedding(vocab_size, cfg.embed_dim, padding_idx=PAD_ID)
        self.encoder = rnn(cfg.embed_dim, enc_hidden, cfg.layers, batch_first=True,
                           bidirectional=cfg.bidirectional, dropout=between)
        self.tgt_embed = nn.Embedding(vocab_size, cfg.embed_dim, padding_idx=PAD_ID)
        self.decoder = rnn(cfg.embed_dim, cfg.hidden, cfg.layers, batch_first=True, dropout=between)
        self.dropout = nn.Dropout(cfg.dropout)
        if cfg.attention != "none":
            self.attention = Attention(cfg.attention, cfg.hidden)
            self.combine = nn.Linear(2 * cfg.hidden, cfg.hidden, bias=False)
        self.bottleneck = (nn.Linear(cfg.hidden, cfg.embed_dim, bias=False)
                           if cfg.tie_embeddings and cfg.embed_dim != cfg.hidden else None)
        if cfg.output == "adaptive":
            self.output = nn.AdaptiveLogSoftmaxWithLoss(cfg.hidden, vocab_size, adaptive_cutoffs(cfg, vocab_size),
                                                        div_value=4.0, head_bias=True)
            # The clusters hold contiguous ranks, so token ids are mapped to their rank by training frequency
            # (`set_output_order`; identity until then). A buffer: checkpoints carry it.
            self.register_buffer("output_rank", torch.arange(vocab_size))
        else:
            self.output = nn.Linear(cfg.embed_dim if self.bottleneck is not None else cfg.hidden, vocab_size)
        if cfg.tie_embeddings:
            self.output.weight = self.tgt_embed.weight
        # N(0, 1/d) instead of torch's N(0, 1): with a tied output layer, unit-variance rows give initial logits
        # of size sqrt(d) and a first loss far above log(V).
        for embedding in (self.src_embed, self.tgt_embed):
            nn.init.normal_(embedding.weight, std=cfg.embed_dim**-0.5)
            with torch.no_grad():
                embedding.weight[PAD_ID].zero_()

    # -- encoder ---------------------------------------------------------------------------------------
    def encode(self, src: torch.Tensor, src_len: torch.Tensor) -> Memory:
        """Run the encoder over padded sources and build the decoder's memory and initial state."""
        embedded = self.dropout(self.src_embed(src))
        lengths = src_len.to(src.device, non_blocking=True)
        mask = torch.arange(src.size(1), device=src.device).unsqueeze(0) < lengths.unsqueeze(1)
        outputs, final = self.run_encoder(embedded, lengths)
        state = _map_state(final, self._bridge)
        keys = self.attention.keys(outputs) if self.cfg.attention != "none" else outputs
        return Memory(outputs, mask, state, keys)

    def run_encoder(self, embedded: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, RNNState]:
        """The encoder RNN over padded embeddings as if packed: outputs [B, S, H] (zero at pads), final state."""
        if embedded.device.type == "cpu" and self.cfg.cell == "lstm":
            if not fused_lstm_here():
                with self._lstm_in_float32():
                    return self.run_encoder_packed(embedded.float(), lengths)
            # the packed run's result through oneDNN's fused LSTM kernel (models/padded_rnn.py)
            return run_padded(self.encoder, embedded, lengths)
        return self.run_encoder_packed(embedded, lengths)  # cuDNN runs packed sequences natively

    def _lstm_in_float32(self) -> contextlib.AbstractContextManager:
        """CPU autocast off, so an LSTM runs in float32 where oneDNN has no kernel in the autocast dtype.

        Under CPU bf16 autocast torch sends an LSTM to oneDNN, which builds a bf16 LSTM only on CPUs with bf16
        instructions (AVX-512 BF16, AMX): on an AVX2 CPU it fails ("could not create a primitive descriptor").
        There the recurrences run in float32 (more precise; the projections around them keep bf16).
        """
        return torch.autocast("cpu", enabled=False)

    def run_encoder_packed(self, embedded: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, RNNState]:
        """The encoder RNN over packed sources (on a CPU, torch runs these as a per-time-step loop)."""
        outputs, final = self.encoder(pack_sources(embedded, lengths.cpu()))
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=embedded.size(1))
        return outputs, final

    def _bridge(self, final: torch.Tensor) -> torch.Tensor:
        """Encoder final state [layers*dirs, B, h] -> decoder initial state [layers, B, H] (directions joined)."""
        if not self.cfg.bidirectional:
            return final
        layers, batch = self.cfg.layers, final.size(1)
        return final.view(layers, 2, batch, -1).transpose(1, 2).reshape(layers, batch, -1).contiguous()

    # -- decoder ---------------------------------------------------------------------------------------
    def decode(self, tgt_in: torch.Tensor, memory: Memory, state: RNNState | None = None
               ) -> tuple[torch.Tensor, RNNState]:
        """Attentional decoder states [B, T, D] for a (prefix of the) shifted target, and the new RNN state."""
        embedded = self.dropout(self.tgt_embed(tgt_in))
        state = memory.state if state is None else state
        if embedded.device.type == "cpu" and self.cfg.cell == "lstm" and not fused_lstm_here():
            with self._lstm_in_float32():
                hidden, state = self.decoder(embedded.float(), _map_state(state, torch.Tensor.float))
        else:
            hidden, state = self.decoder(embedded, state)
        if self.cfg.attention != "none":
            context = self.attention(hidden, memory.keys, memory.outputs, memory.mask)
            hidden = torch.tanh(self.combine(torch.cat([context, hidden], dim=-1)))
        hidden = self.dropout(hidden)
        if self.bottleneck is not None:
            hidden = self.bottleneck(hidden)
        return hidden, state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary scores for attentional decoder states (the adaptive softmax gives its log-probabilities)."""
        if self.cfg.output == "adaptive":
            rows = full_log_probs(self.output, hidden.reshape(-1, hidden.size(-1)))
            return rows.index_select(1, self.output_rank).view(*hidden.shape[:-1], -1)
        return self.output(hidden)

    def set_output_order(self, counts: torch.Tensor) -> None:
        """Rank the vocabulary by `counts` [V] (training-target frequencies) for the adaptive softmax's clusters."""
        order = torch.argsort(-counts.to(torch.float64), stable=True)  # ties keep id order
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel())
        self.output_rank.copy_(rank)

    def forward(self, src: torch.Tensor, src_len: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor,
                label_smoothing: float = 0.0, target_index: torch.Tensor | None = None) -> torch.Tensor:
        """Summed cross-entropy (nats) over non-pad target tokens; pad positions never reach the output layer.

        `target_index` (optional, `Batch.target_index`): the flat positions of the non-pad targets, if known.
        """
        hidden, _ = self.decode(tgt_in, self.encode(src, src_len))
        return self.token_loss(hidden, tgt_out, label_smoothing, target_index)

    def loss(self, batch: Batch, label_smoothing: float = 0.0) -> torch.Tensor:
        """`forward` of a batch: the summed cross-entropy (nats) of its non-pad targets."""
        return self(batch.src, batch.src_len, batch.tgt_in, batch.tgt_out, label_smoothing, batch.target_index)

    def token_loss(self, hidden: torch.Tensor, tgt_out: torch.Tensor, label_smoothing: float = 0.0,
                   target_index: torch.Tensor | None = None) -> torch.Tensor:
        """Summed cross-entropy (nats) of attentional states [B, T, D] against `tgt_out`, pad positions skipped."""
        # Project only real tokens: the vocabulary projection dominates the step, padding would waste it. The full
        # softmax's projection and loss run fused in row chunks (equal to F.cross_entropy of self.logits to float
        # rounding): on a CPU the [N, V] log-softmax passes of the unfused path cost as much as its GEMMs.
        if target_index is None:
            target_index = (tgt_out.reshape(-1) != PAD_ID).nonzero().squeeze(1)
        rows = hidden.reshape(-1, hidden.size(-1)).index_select(0, target_index)
        targets = tgt_out.reshape(-1).index_select(0, target_index)
        if self.cfg.output == "adaptive":  # exact log-likelihood, each target's tail cluster only for its rows
            return -target_log_probs(self.output, rows, self.output_rank.index_select(0, targets)).sum()
        return linear_cross_entropy(rows, self.output.weight, self.output.bias, targets, label_smoothing)

    def step(self, tokens: torch.Tensor, memory: Memory, state: RNNState) -> tuple[torch.Tensor, RNNState]:
        """One decoding step: log-probabilities [N, V] of the next token and the new state."""
        hidden, state = self.decode(tokens.unsqueeze(1), memory, state)
        return torch.log_softmax(self.logits(hidden[:, 0]).float(), dim=-1), state

    def initial_state(self, memory: Memory) -> RNNState:
        """The decoder's state before the first step: the encoder's final state, one row per decoder row."""
        return memory.state

    def reorder_state(self, state: RNNState, index: torch.Tensor) -> RNNState:
        """Rows `index` of a decoder state (rows on dim 1; a pair for LSTM)."""
        return _map_state(state, lambda s: s.index_select(1, index))

    def reorder_memory(self, memory: Memory, index: torch.Tensor) -> Memory:
        """Decoder rows `index` of a memory; each source is kept once per run of rows that share it."""
        return memory.select(index)


def count_parameters(model: nn.Module) -> int:
    """Distinct trainable parameters (a tied weight counts once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
