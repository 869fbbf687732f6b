"""A decoder-only causal language model (GPT-2's pre-norm blocks, as in nanoGPT's `model.py`), meeting the model
contract (contract.py) so that training, evaluation and generation reach it like any encoder-decoder.

Block: x + Dropout(CausalSelfAttention(Norm(x))), then x + Dropout(MLP(Norm(x))); a final Norm, then the output
projection (tied to the token embedding unless `tie_embeddings=false`). Learned absolute or rotary positions,
LayerNorm or RMSNorm, the `bias` switch, GPT-2's initialisation (residual projections scaled by 1/√(2·layers)).

How a language model meets an encoder-decoder's contract:
- Training batches are blocks of running text (data/blocks.py): no source, `tgt_in` the block and `tgt_out` the
  same block one token later. `forward` refuses a batch with a source.
- In generation the "source" is the prompt: token ids that start with EOS (the document boundary every training
  document followed) and end without one. `encode` keeps the prompts, left-aligned to their last token;
  `initial_state` runs them through the model once (the prefill) and fills the KV cache; the first `step` returns
  the prefill's distribution of the token after the prompt (the search's start token is not fed: a language
  model's context is its prompt), and every later step feeds one token.
- Prompts of different lengths share a batch: they are padded on the left, pad keys are masked, and every row
  counts its positions from its own first real token, so a row's result does not depend on its batch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from decaylab.config import DecoderConfig
from decaylab.data.batching import Batch
from decaylab.data.tokenizer import PAD_ID
from decaylab.models.attention import MLP, Attention, Positions, Rotary, init_gpt2, make_norm
from decaylab.models.fused_loss import target_loss


@dataclass
class Prompt:
    """The prompts of a batch, padded on the left: tokens [N, P] and True at real tokens [N, P]."""

    tokens: torch.Tensor
    real: torch.Tensor

    def select(self, index: torch.Tensor) -> Prompt:
        """Rows `index`."""
        return Prompt(self.tokens.index_select(0, index), self.real.index_select(0, index))


@dataclass
class State:
    """The KV cache: per layer, keys and values [N, H, t, Dh] of the tokens so far, and each row's next position."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    real: torch.Tensor | None  # [N, t] True at real tokens; None when no row has left padding
    position: torch.Tensor  # [N] the position of each row's next token
    pending: torch.Tensor | None = None  # [N, V] the prefill's log-probs, returned by the first step

    def select(self, index: torch.Tensor) -> State:
        """Rows `index` of every tensor."""
        def rows(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.index_select(0, index)
        return State([k.index_select(0, index) for k in self.keys], [v.index_select(0, index) for v in self.values],
                     rows(self.real), self.position.index_select(0, index), rows(self.pending))


class Block(nn.Module):
    """Pre-norm causal self-attention and MLP."""

    def __init__(self, cfg: DecoderConfig, rotary: Rotary | None):
        super().__init__()
        self.attention_norm, self.attention = make_norm(cfg), Attention(cfg, rotary)
        self.mlp_norm, self.mlp = make_norm(cfg), MLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, positions: Positions, mask: torch.Tensor | None, causal: bool,
                cache: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The block over `x` [N, T, D]; with `cache`, x holds the tokens after the cached ones."""
        h = self.attention_norm(x)
        keys, values = self.attention.project_kv(h, positions)
        if cache is not None:
            keys, values = torch.cat([cache[0], keys], 2), torch.cat([cache[1], values], 2)
        x = x + self.dropout(self.attention.attend(h, keys, values, mask, causal=causal, offset=positions))
        return x + self.dropout(self.mlp(self.mlp_norm(x))), (keys, values)


class DecoderLM(nn.Module):
    """A GPT-style decoder-only language model; `forward` gives a batch of blocks' summed next-token loss."""

    def __init__(self, cfg: DecoderConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        rotary = Rotary(cfg.d_model // cfg.heads) if cfg.positions == "rotary" else None
        self.embed = nn.Embedding(vocab_size, cfg.d_model, padding_idx=PAD_ID)
        if cfg.positions == "learned":
            self.positions = nn.Embedding(cfg.max_positions, cfg.d_model)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, rotary) for _ in range(cfg.layers))
        self.norm = make_norm(cfg)
        self.output = nn.Linear(cfg.d_model, vocab_size, bias=cfg.bias and not cfg.tie_embeddings)
        init_gpt2(self.blocks, 2 * cfg.layers)
        for embedding in [self.embed] + ([self.positions] if cfg.positions == "learned" else []):
            nn.init.normal_(embedding.weight, std=0.02)
        with torch.no_grad():
            self.embed.weight[PAD_ID].zero_()
        nn.init.normal_(self.output.weight, std=0.02)
        if self.output.bias is not None:
            nn.init.zeros_(self.output.bias)
        if cfg.tie_embeddings:
            self.output.weight = self.embed.weight

    def _embed(self, tokens: torch.Tensor, positions: Positions) -> torch.Tensor:
        x = self.embed(tokens)
        if self.cfg.positions == "learned":
            if isinstance(positions, torch.Tensor):
                x = x + self.positions(positions)
            else:
                end = positions + tokens.size(1)
                if end > self.cfg.max_positions:
                    raise ValueError(f"a sequence of {end} tokens is longer than model.max_positions="
                                     f"{self.cfg.max_positions} (raise it, or use model.positions=rotary)")
                x = x + self.positions(torch.arange(positions, end, device=tokens.device))
        return self.embed_dropout(x)

    def run(self, tokens: torch.Tensor, positions: Positions, mask: torch.Tensor | None, causal: bool,
            state: State | None = None) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Final hidden states [N, T, D] of `tokens` [N, T], and every layer's keys and values (cache included)."""
        x = self._embed(tokens, positions)
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            cache = (state.keys[i], state.values[i]) if state is not None else None
            x, (k, v) = block(x, positions, mask, causal, cache)
            keys.append(k)
            values.append(v)
        return self.norm(x), keys, values

    def forward(self, src: torch.Tensor, src_len: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor,
                label_smoothing: float = 0.0, target_index: torch.Tensor | None = None) -> torch.Tensor:
        """Summed next-token cross-entropy (nats) of blocks `tgt_in` [B, T] against `tgt_out` (pads not scored)."""
        if src.size(1):
            raise ValueError("a decoder-only language model trains on blocks of text, not on pairs with a source")
        hidden, _, _ = self.run(tgt_in, 0, None, causal=tgt_in.size(1) > 1)
        return target_loss(hidden, tgt_out, self.output, label_smoothing, target_index, PAD_ID)

    def loss(self, batch: Batch, label_smoothing: float = 0.0) -> torch.Tensor:
        """`forward` of a `Batch`."""
        return self(batch.src, batch.src_len, batch.tgt_in, batch.tgt_out, label_smoothing, batch.target_index)

    # -- incremental decoding (the contract) -----------------------------------------------------------------------
    def encode(self, src: torch.Tensor, src_len: torch.Tensor) -> Prompt:
        """The prompts of right-padded `src` [N, P] with lengths [N], moved to end at the last column."""
        lengths = src_len.to(src.device, non_blocking=True)
        if src.size(1) == 0:
            raise ValueError("every prompt needs at least one token (generation starts it with EOS)")
        index = torch.arange(src.size(1), device=src.device).unsqueeze(0) - (src.size(1) - lengths).unsqueeze(1)
        real = index >= 0
        tokens = src.gather(1, index.clamp(min=0)).masked_fill(~real, PAD_ID)
        return Prompt(tokens, real)

    def initial_state(self, memory: Prompt) -> State:
        """The prefill: the prompts through the model once; the cache and the next token's log-probs."""
        real = memory.real
        padded = not bool(real.all())
        if padded:
            positions: Positions = (real.cumsum(1) - 1).clamp(min=0)
            size = real.size(1)
            causal = torch.ones(size, size, dtype=torch.bool, device=real.device).tril()
            # a pad query sees itself too: a row of SDPA with no key at all would be NaN (its output is never used)
            mask = (causal & real[:, None, :]) | torch.eye(size, dtype=torch.bool, device=real.device)
            hidden, keys, values = self.run(memory.tokens, positions, mask.unsqueeze(1), causal=False)
        else:
            hidden, keys, values = self.run(memory.tokens, 0, None, causal=real.size(1) > 1)
        pending = torch.log_softmax(self.output(hidden[:, -1]).float(), dim=-1)
        return State(keys, values, real if padded else None, real.sum(1), pending)

    def step(self, tokens: torch.Tensor, memory: Prompt, state: State) -> tuple[torch.Tensor, State]:
        """Log-probabilities [N, V] of the next token: the prefill's at the first step, then after `tokens` [N]."""
        if state.pending is not None:
            return state.pending, replace(state, pending=None)
        positions = state.position.unsqueeze(1)  # [N, 1]
        real = None
        mask = None
        if state.real is not None:
            real = torch.cat([state.real, torch.ones_like(state.real[:, :1])], dim=1)
            mask = real[:, None, None, :]
        hidden, keys, values = self.run(tokens.unsqueeze(1), positions, mask, causal=False, state=state)
        log_probs = torch.log_softmax(self.output(hidden[:, 0]).float(), dim=-1)
        return log_probs, State(keys, values, real, state.position + 1)

    def reorder_state(self, state: State, index: torch.Tensor) -> State:
        """Rows `index` of the KV cache."""
        return state.select(index)

    def reorder_memory(self, memory: Prompt, index: torch.Tensor) -> Prompt:
        """Rows `index` of the prompts."""
        return memory.select(index)
