"""A run's data made ready to train on: encoded splits, the fixed evaluation subsets, and the batches of each epoch."""

from __future__ import annotations

import random

from tokenizers import Tokenizer

from decaylab.config import Config
from decaylab.data.batching import EncodedPairs
from decaylab.data.blocks import EncodedBlocks, encode_documents
from decaylab.data.splits import Splits
from decaylab.data.tokenizer import encode
from decaylab.errors import UserError

# A split as the trainers, evaluation and scoring see it: pairs, or (a language model's) blocks of running text.
Encoded = EncodedPairs | EncodedBlocks


def encode_pairs(tokenizer: Tokenizer, pairs: list) -> EncodedPairs:
    """Token ids of a split (sources and targets end with EOS)."""
    return EncodedPairs(encode(tokenizer, [p.source for p in pairs]), encode(tokenizer, [p.target for p in pairs]))


def eval_subset(n: int, limit: int | None, seed: int) -> list[int]:
    """A fixed sample of indices (the train subset used for the eval-mode training loss)."""
    if limit is None or n <= limit:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), limit))


def encode_split(config: Config, tokenizer: Tokenizer, examples: list) -> Encoded:
    """One split encoded for the run's model: pairs, or its documents' stream cut into `data.block_size` blocks."""
    if config.data.kind == "text":
        return encode_documents(tokenizer, [p.target for p in examples], config.data.block_size)
    return encode_pairs(tokenizer, examples)


def encode_run_data(config: Config, tokenizer: Tokenizer, splits: Splits) -> tuple[Encoded, Encoded, Encoded, Encoded]:
    """A run's encoded training and validation splits, and the fixed subsets each evaluation scores."""
    train, valid = encode_split(config, tokenizer, splits.train), encode_split(config, tokenizer, splits.valid)
    if isinstance(train, EncodedBlocks):
        size = config.data.block_size
        if len(train.stream) - 1 < size:
            raise UserError(f"{splits.origin}: the training split holds {len(train.stream) - 1:,} tokens, fewer than "
                            f"one block of data.block_size={size}; give more text or a smaller data.block_size")
    limit = config.train.max_eval_examples or len(valid)
    return (train, valid, valid.subset(eval_subset(len(valid), limit, config.order_seed)),
            train.subset(eval_subset(len(train), limit, config.order_seed)))


def epoch_groups(config: Config, train: Encoded, epoch: int) -> list[list[int]]:
    """Example (or block) indices per batch of `epoch`, in an order fixed by the data seed and the epoch."""
    cfg = config.train
    return train.groups(cfg.batch_tokens, cfg.max_batch_size, seed=config.order_seed * 100_003 + epoch)


def total_steps(config: Config, train: Encoded) -> int:
    """Optimizer steps of the whole run (`train.max_steps`, else every epoch's batches): the schedule's length."""
    return config.train.max_steps or sum(len(epoch_groups(config, train, e)) for e in range(config.train.epochs))


def longest_source(data: Encoded) -> int | None:
    """The longest source of an encoded split in tokens (EOS included): the run's input limit basis (None: blocks)."""
    if isinstance(data, EncodedBlocks):
        return None
    return max(map(len, data.sources), default=0)
