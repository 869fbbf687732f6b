"""A run's data made ready to train on: encoded splits, the fixed evaluation subsets, and the batches of each epoch."""

from __future__ import annotations

import random

from tokenizers import Tokenizer

from decaylab.config import Config
from decaylab.data.batching import EncodedPairs, bucket_batches
from decaylab.data.splits import Splits
from decaylab.data.tokenizer import encode


def encode_pairs(tokenizer: Tokenizer, pairs: list) -> EncodedPairs:
    """Token ids of a split (sources and targets end with EOS)."""
    return EncodedPairs(encode(tokenizer, [p.source for p in pairs]), encode(tokenizer, [p.target for p in pairs]))


def eval_subset(n: int, limit: int | None, seed: int) -> list[int]:
    """A fixed sample of indices (the train subset used for the eval-mode training loss)."""
    if limit is None or n <= limit:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), limit))


def encode_run_data(config: Config, tokenizer: Tokenizer, splits: Splits
                    ) -> tuple[EncodedPairs, EncodedPairs, EncodedPairs, EncodedPairs]:
    """A run's encoded training and validation splits, and the fixed subsets each evaluation scores."""
    train, valid = encode_pairs(tokenizer, splits.train), encode_pairs(tokenizer, splits.valid)
    limit = config.train.max_eval_examples or len(valid)
    return (train, valid, valid.subset(eval_subset(len(valid), limit, config.order_seed)),
            train.subset(eval_subset(len(train), limit, config.order_seed)))


def epoch_groups(config: Config, train: EncodedPairs, epoch: int) -> list[list[int]]:
    """Example indices per batch of `epoch`: length-bucketed, in an order fixed by the data seed and the epoch."""
    cfg = config.train
    return bucket_batches(train.lengths, cfg.batch_tokens, cfg.max_batch_size,
                          seed=config.order_seed * 100_003 + epoch)


def total_steps(config: Config, train: EncodedPairs) -> int:
    """Optimizer steps of the whole run (`train.max_steps`, else every epoch's batches): the schedule's length."""
    return config.train.max_steps or sum(len(epoch_groups(config, train, e)) for e in range(config.train.epochs))


def longest_source(data: EncodedPairs) -> int:
    """The longest source of an encoded split in tokens (EOS included): recorded as the run's input limit basis."""
    return max(map(len, data.sources), default=0)
