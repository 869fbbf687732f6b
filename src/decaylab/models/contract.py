"""The model contract: what training, evaluation and generation may call on a model (DESIGN.md §7).

Every architecture in `MODELS` (models/__init__.py) is a `torch.nn.Module` that meets `Seq2SeqModel`. Callers
know nothing else about it: generation reads the device from `parameters()`, switches `eval()`/`train()`, and
otherwise goes through these methods only. `Memory` (what the decoder reads about the sources) and `State` (the
decoder's per-hypothesis state between steps) are opaque: their layout (tensors, batch dimension, a tuple or a
dict) belongs to the architecture, and only its own `reorder_*` methods index them.

Rows: `encode` gives one memory row per source; `initial_state(memory)` one state row per memory row; `step`
takes one token per state row and gives one log-probability row per state row. An `index` is a LongTensor on
the model's device; the result's row i is the argument's row index[i] (rows may repeat, reorder or drop).
"""

from __future__ import annotations

from typing import Protocol, TypeVar, runtime_checkable

import torch

from decaylab.data.batching import Batch

MemoryT = TypeVar("MemoryT")
StateT = TypeVar("StateT")


@runtime_checkable
class Seq2SeqModel(Protocol[MemoryT, StateT]):
    """An encoder-decoder over token ids: a summed training loss and incremental, reorderable decoding."""

    def forward(self, src: torch.Tensor, src_len: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor,
                label_smoothing: float = 0.0, target_index: torch.Tensor | None = None) -> torch.Tensor:
        """Summed token cross-entropy (nats) of padded targets [B, T] given sources [B, S] and lengths [B] (CPU)."""
        ...

    def loss(self, batch: Batch, label_smoothing: float = 0.0) -> torch.Tensor:
        """`forward` of a `data.batching.Batch` (its `target_index` included)."""
        ...

    def encode(self, src: torch.Tensor, src_len: torch.Tensor) -> MemoryT:
        """The memory of padded sources [B, S] with lengths [B]: one row per source."""
        ...

    def initial_state(self, memory: MemoryT) -> StateT:
        """The decoder's state before the first step: one row per memory row."""
        ...

    def step(self, tokens: torch.Tensor, memory: MemoryT, state: StateT) -> tuple[torch.Tensor, StateT]:
        """One decoding step: float log-probabilities [N, V] of the token after `tokens` [N], and the new state."""
        ...

    def reorder_state(self, state: StateT, index: torch.Tensor) -> StateT:
        """Rows `index` of a decoding state (beam search calls it every step with the parents of the survivors)."""
        ...

    def reorder_memory(self, memory: MemoryT, index: torch.Tensor) -> MemoryT:
        """Rows `index` of a memory (repeated per beam, or compacted when sentences finish)."""
        ...
