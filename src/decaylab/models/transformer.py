"""A pre-LayerNorm Transformer encoder-decoder (Vaswani et al. 2017, with the pre-norm blocks of GPT-2 and fairseq's
`--encoder-normalize-before`), meeting the model contract (contract.py) with a KV cache for incremental decoding.

Encoder block: x + Dropout(SelfAttention(Norm(x))), then x + Dropout(MLP(Norm(x))); a final Norm. Decoder block: the
same with causal self-attention, plus x + Dropout(CrossAttention(Norm(x), memory)) between them; a final Norm, then
the output projection (tied to the shared token embedding unless `tie_embeddings=false`). Attention is
`F.scaled_dot_product_attention` with a source padding mask (encoder self-attention, cross-attention) or the
causal mask (decoder self-attention: right-padded targets need no other mask, a real position never sees a later
pad). Positions: learned absolute embeddings, or rotary (RoPE, Su et al. 2021) applied to queries and keys of
self-attention. Norm: LayerNorm or RMSNorm; `bias` switches every Linear's and LayerNorm's bias. Initialisation as
GPT-2: N(0, 0.02) for weights and embeddings, zero biases, and the projections that write into the residual stream
scaled by 1/√(residual branches of their stack).

Decoding state: `Memory` holds each decoder layer's cross-attention keys and values, computed once per source;
`State` holds each layer's self-attention keys and values so far and the next position. Both have rows on dim 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from decaylab.config import TransformerConfig
from decaylab.data.batching import Batch
from decaylab.data.tokenizer import PAD_ID
from decaylab.models.attention import MLP, Attention, Rotary, init_gpt2, make_norm
from decaylab.models.fused_loss import target_loss


@dataclass
class Memory:
    """What the decoder reads about the sources: per decoder layer, cross-attention keys and values [N, H, S, Dh]."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor  # [N, S] True at real source tokens

    def select(self, index: torch.Tensor) -> Memory:
        """Rows `index` of every tensor."""
        return Memory([k.index_select(0, index) for k in self.keys], [v.index_select(0, index) for v in self.values],
                      self.mask.index_select(0, index))


@dataclass
class State:
    """The decoder's KV cache: per layer, self-attention keys and values of the tokens so far [N, H, t, Dh]."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    position: int  # the position of the next token (every row advances together)

    def select(self, index: torch.Tensor) -> State:
        """Rows `index` of every tensor."""
        return State([k.index_select(0, index) for k in self.keys], [v.index_select(0, index) for v in self.values],
                     self.position)


class EncoderLayer(nn.Module):
    """Pre-norm self-attention and MLP blocks."""

    def __init__(self, cfg: TransformerConfig, rotary: Rotary | None):
        super().__init__()
        self.attention_norm, self.attention = make_norm(cfg), Attention(cfg, rotary)
        self.mlp_norm, self.mlp = make_norm(cfg), MLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.attention_norm(x)
        keys, values = self.attention.project_kv(h)
        x = x + self.dropout(self.attention.attend(h, keys, values, mask, causal=False))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


class DecoderLayer(nn.Module):
    """Pre-norm causal self-attention, cross-attention and MLP blocks."""

    def __init__(self, cfg: TransformerConfig, rotary: Rotary | None):
        super().__init__()
        self.self_norm, self.self_attention = make_norm(cfg), Attention(cfg, rotary)
        self.cross_norm, self.cross_attention = make_norm(cfg), Attention(cfg, None)
        self.mlp_norm, self.mlp = make_norm(cfg), MLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cross: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor,
                cache: tuple[torch.Tensor, torch.Tensor] | None = None, offset: int = 0
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The block over `x` [N, T, D]; with `cache`, x holds the tokens after the cached ones (incremental)."""
        h = self.self_norm(x)
        keys, values = self.self_attention.project_kv(h, offset)
        if cache is not None:
            keys, values = torch.cat([cache[0], keys], 2), torch.cat([cache[1], values], 2)
        # the full target: causal; one new token over its cache: every cached key is earlier, nothing to mask
        causal = cache is None and x.size(1) > 1
        x = x + self.dropout(self.self_attention.attend(h, keys, values, None, causal=causal, offset=offset))
        x = x + self.dropout(self.cross_attention.attend(self.cross_norm(x), cross[0], cross[1], mask, causal=False))
        return x + self.dropout(self.mlp(self.mlp_norm(x))), (keys, values)


class Transformer(nn.Module):
    """Pre-norm Transformer encoder-decoder over one shared vocabulary; `forward` gives a batch's summed token loss."""

    def __init__(self, cfg: TransformerConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        head_dim = cfg.d_model // cfg.heads
        rotary = Rotary(head_dim) if cfg.positions == "rotary" else None
        self.embed = nn.Embedding(vocab_size, cfg.d_model, padding_idx=PAD_ID)
        if cfg.positions == "learned":
            self.src_positions = nn.Embedding(cfg.max_positions, cfg.d_model)
            self.tgt_positions = nn.Embedding(cfg.max_positions, cfg.d_model)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(cfg, rotary) for _ in range(cfg.encoder_layers))
        self.encoder_norm = make_norm(cfg)
        self.decoder = nn.ModuleList(DecoderLayer(cfg, rotary) for _ in range(cfg.decoder_layers))
        self.decoder_norm = make_norm(cfg)
        self.output = nn.Linear(cfg.d_model, vocab_size, bias=cfg.bias and not cfg.tie_embeddings)
        self._initialise()
        if cfg.tie_embeddings:
            self.output.weight = self.embed.weight

    def _initialise(self) -> None:
        """GPT-2's: N(0, 0.02), zero biases, residual projections / √(residual branches of their stack)."""
        init_gpt2(self.encoder, 2 * self.cfg.encoder_layers)
        init_gpt2(self.decoder, 3 * self.cfg.decoder_layers)
        for embedding in [self.embed] + ([self.src_positions, self.tgt_positions]
                                         if self.cfg.positions == "learned" else []):
            nn.init.normal_(embedding.weight, std=0.02)
        with torch.no_grad():
            self.embed.weight[PAD_ID].zero_()
        nn.init.normal_(self.output.weight, std=0.02)
        if self.output.bias is not None:
            nn.init.zeros_(self.output.bias)

    # -- embedding -------------------------------------------------------------------------------------------------
    def _embed(self, tokens: torch.Tensor, positions: nn.Embedding | None, offset: int = 0) -> torch.Tensor:
        x = self.embed(tokens)
        if positions is not None:
            length = offset + tokens.size(1)
            if length > self.cfg.max_positions:
                raise ValueError(f"a sequence of {length} tokens is longer than model.max_positions="
                                 f"{self.cfg.max_positions} (raise it, or use model.positions=rotary)")
            x = x + positions(torch.arange(offset, length, device=tokens.device))
        return self.embed_dropout(x)

    def _positions(self, which: str) -> nn.Embedding | None:
        return getattr(self, f"{which}_positions") if self.cfg.positions == "learned" else None

    # -- encoder ---------------------------------------------------------------------------------------------------
    def encode(self, src: torch.Tensor, src_len: torch.Tensor) -> Memory:
        """Run the encoder over padded sources; each decoder layer's cross-attention keys and values."""
        lengths = src_len.to(src.device, non_blocking=True)
        real = torch.arange(src.size(1), device=src.device).unsqueeze(0) < lengths.unsqueeze(1)
        mask = real[:, None, None, :]  # [N, 1, 1, S]: attend to real source tokens only
        x = self._embed(src, self._positions("src"))
        for layer in self.encoder:
            x = layer(x, mask)
        x = self.encoder_norm(x)
        keys, values = zip(*(layer.cross_attention.project_kv(x) for layer in self.decoder), strict=True)
        return Memory(list(keys), list(values), real)

    # -- decoder ---------------------------------------------------------------------------------------------------
    def decode(self, tgt_in: torch.Tensor, memory: Memory, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Final decoder states [N, T, D] for target tokens (after the cached ones when `state` is given)."""
        offset = state.position if state is not None else 0
        x = self._embed(tgt_in, self._positions("tgt"), offset)
        mask = memory.mask[:, None, None, :]
        keys, values = [], []
        for i, layer in enumerate(self.decoder):
            cache = (state.keys[i], state.values[i]) if state is not None else None
            x, (k, v) = layer(x, (memory.keys[i], memory.values[i]), mask, cache, offset)
            keys.append(k)
            values.append(v)
        return self.decoder_norm(x), State(keys, values, offset + tgt_in.size(1))

    def forward(self, src: torch.Tensor, src_len: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor,
                label_smoothing: float = 0.0, target_index: torch.Tensor | None = None) -> torch.Tensor:
        """Summed cross-entropy (nats) over non-pad target tokens; pad positions never reach the output layer."""
        hidden, _ = self.decode(tgt_in, self.encode(src, src_len))
        return target_loss(hidden, tgt_out, self.output, label_smoothing, target_index, PAD_ID)

    def loss(self, batch: Batch, label_smoothing: float = 0.0) -> torch.Tensor:
        """`forward` of a `Batch`."""
        return self(batch.src, batch.src_len, batch.tgt_in, batch.tgt_out, label_smoothing, batch.target_index)

    # -- incremental decoding (the contract) -----------------------------------------------------------------------
    def initial_state(self, memory: Memory) -> State:
        """An empty KV cache, one row per memory row."""
        rows, device = memory.mask.size(0), memory.mask.device
        empty = torch.zeros(rows, self.cfg.heads, 0, self.cfg.d_model // self.cfg.heads, device=device,
                            dtype=memory.keys[0].dtype if memory.keys else torch.float32)
        return State([empty] * len(self.decoder), [empty] * len(self.decoder), 0)

    def step(self, tokens: torch.Tensor, memory: Memory, state: State) -> tuple[torch.Tensor, State]:
        """One decoding step: log-probabilities [N, V] of the next token and the grown cache."""
        hidden, state = self.decode(tokens.unsqueeze(1), memory, state)
        return torch.log_softmax(self.output(hidden[:, 0]).float(), dim=-1), state

    def reorder_state(self, state: State, index: torch.Tensor) -> State:
        """Rows `index` of the KV cache."""
        return state.select(index)

    def reorder_memory(self, memory: Memory, index: torch.Tensor) -> Memory:
        """Rows `index` of the cross-attention keys, values and mask."""
        return memory.select(index)
