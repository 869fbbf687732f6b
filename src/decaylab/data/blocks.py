"""Language-modelling data: documents encoded into one token stream, cut into blocks of `data.block_size` tokens.

The stream is EOS, then each document's tokens followed by EOS (GPT-2's end-of-text between documents), so the
model learns where documents end and a prompt can start a document after the same EOS. Block i holds the tokens
stream[i·T : i·T + T] as input and the same tokens one step later as targets (nanoGPT's x and y); the blocks do not
overlap, so one epoch scores each token of the split once, and the last block may be shorter (its targets padded).
An epoch's batches are the blocks in an order fixed by (seed, epoch), `train.batch_tokens // T` blocks per batch
(at most `train.max_batch_size`, at least one).
"""

from __future__ import annotations

import random

import torch
from tokenizers import Tokenizer

from decaylab.data.batching import Batch
from decaylab.data.tokenizer import EOS_ID, PAD_ID, encode


class EncodedBlocks:
    """A split's token stream cut into blocks; the same interface as `EncodedPairs` for training and scoring."""

    def __init__(self, stream: torch.Tensor, block_size: int, starts: list[int] | None = None,
                 characters: int | None = None):
        self.stream = stream
        self.block_size = block_size
        self.starts = starts if starts is not None else list(range(0, max(len(stream) - 1, 0), block_size))
        self.characters = characters  # characters of the text the targets encode (whole splits only)

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def tokens(self) -> int:
        """Target tokens over every block (each stream token after the first, for a whole split)."""
        end = len(self.stream) - 1
        return sum(min(self.block_size, end - start) for start in self.starts)

    def groups(self, batch_tokens: int, max_batch_size: int, seed: int, shuffle: bool = True) -> list[list[int]]:
        """Block indices per batch: every block once, in an order fixed by `seed` (or in stream order)."""
        order = list(range(len(self.starts)))
        if shuffle:
            random.Random(seed).shuffle(order)
        per_batch = max(1, min(max_batch_size, batch_tokens // self.block_size))
        return [order[i : i + per_batch] for i in range(0, len(order), per_batch)]

    def target_tokens(self, indices: list[int]) -> int:
        """Target tokens of the batch of blocks `indices` (its `n_tokens`), counted without building it."""
        end = len(self.stream) - 1
        return sum(min(self.block_size, end - self.starts[i]) for i in indices)

    def batch(self, indices: list[int]) -> Batch:
        """Blocks `indices` as a Batch with no source: `tgt_in` the tokens, `tgt_out` the next ones."""
        size, end = self.block_size, len(self.stream) - 1
        width = max(min(size, end - self.starts[i]) for i in indices)
        tgt_in = torch.full((len(indices), width), PAD_ID, dtype=torch.long)
        tgt_out = torch.full((len(indices), width), PAD_ID, dtype=torch.long)
        for row, i in enumerate(indices):
            start = self.starts[i]
            length = min(size, end - start)
            tgt_in[row, :length] = self.stream[start : start + length]
            tgt_out[row, :length] = self.stream[start + 1 : start + 1 + length]
        target_index = (tgt_out.view(-1) != PAD_ID).nonzero().squeeze(1)
        src = torch.zeros((len(indices), 0), dtype=torch.long)
        return Batch(src, torch.zeros(len(indices), dtype=torch.long), tgt_in, tgt_out, len(target_index),
                     target_index)

    def batches(self, batch_tokens: int, max_batch_size: int, seed: int, shuffle: bool = True) -> list[Batch]:
        """This split's batches for one epoch."""
        return [self.batch(g) for g in self.groups(batch_tokens, max_batch_size, seed, shuffle)]

    def subset(self, indices: list[int]) -> EncodedBlocks:
        """The blocks at `indices` (a fixed evaluation sample)."""
        return EncodedBlocks(self.stream, self.block_size, [self.starts[i] for i in indices])


def encode_documents(tokenizer: Tokenizer, documents: list[str], block_size: int) -> EncodedBlocks:
    """The documents as one stream (EOS, doc, EOS, doc, EOS, ...) cut into blocks of `block_size` tokens.

    Characters counted for bits per character: each document's characters plus one for the boundary its EOS
    predicts (as a newline would be counted in the text file).
    """
    stream = [EOS_ID]
    for ids in encode(tokenizer, documents):
        stream.extend(ids)  # `encode` ends each document with EOS
    characters = sum(len(doc) + 1 for doc in documents)
    return EncodedBlocks(torch.tensor(stream, dtype=torch.long), block_size, characters=characters)
