"""A run's data made ready to train on: encoded splits, the fixed evaluation subsets, the batches of each epoch, and
the λ that `regularization.tau_epochs` gives on them."""

from __future__ import annotations

import random

from tokenizers import Tokenizer

from decaylab.config import Config, build_config, config_to_dict
from decaylab.data.batching import EncodedPairs
from decaylab.data.blocks import EncodedBlocks, encode_documents
from decaylab.data.splits import Splits, load_splits
from decaylab.data.tokenizer import encode, train_tokenizer
from decaylab.errors import UserError
from decaylab.regularization.timescale import lambda_for_tau, timescale_formula

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


def epoch_steps(config: Config, train: Encoded) -> list[int]:
    """Batches (optimizer steps) of each of the run's `train.epochs` epochs; bucketing makes them differ slightly."""
    return [len(epoch_groups(config, train, e)) for e in range(config.train.epochs)]


def total_steps(config: Config, train: Encoded, per_epoch: list[int] | None = None) -> int:
    """Optimizer steps of the whole run (`train.max_steps`, else every epoch's batches): the schedule's length."""
    return config.train.max_steps or sum(epoch_steps(config, train) if per_epoch is None else per_epoch)


def steps_per_epoch(config: Config, train: Encoded, per_epoch: list[int] | None = None) -> float:
    """The run's mean optimizer steps per epoch (over its `train.epochs` epochs): τ_epoch's unit of steps."""
    counts = epoch_steps(config, train) if per_epoch is None else per_epoch
    if not sum(counts):
        raise UserError("the training split gives no batches, so an epoch has no steps to count")
    return sum(counts) / len(counts)


def resolve_timescale(config: Config, train: Encoded) -> Config:
    """The config with `regularization.weight_decay` derived from `tau_epochs` on this training data (and how, in
    `regularization.timescale`); the config itself when `tau_epochs` is unset.

    λ = 1/(c_peak·τ_iter) with τ_iter = tau_epochs × steps per epoch and c_peak the decay scaling's c_t at the peak
    lr (regularization/timescale.py). A resolved config resolves again to the same λ on the same data.
    """
    reg = config.regularization
    if reg.tau_epochs is None:
        return config
    per_epoch = steps_per_epoch(config, train)
    lam, tau_iter = lambda_for_tau(reg.tau_epochs, per_epoch, reg.decay_scaling, config.train.lr)
    raw = config_to_dict(config)
    raw["regularization"].update(weight_decay=lam, timescale={
        "steps_per_epoch": per_epoch, "tau_iter": tau_iter, "peak_lr": config.train.lr,
        "rule": timescale_formula(reg.decay_scaling)})
    return build_config(raw, origin="regularization.tau_epochs")


def run_steps(config: Config, splits: Splits | None = None, tokenizer: Tokenizer | None = None
              ) -> tuple[list[int], int]:
    """(steps of each epoch, total steps) of a run of `config`, from its data, tokenizer and batching alone (the
    tokenizer trained on the training split as a run trains it, unless given); no model is built."""
    splits = splits if splits is not None else load_splits(config.data)
    if tokenizer is None:
        tokenizer = train_tokenizer([p.source for p in splits.train] + [p.target for p in splits.train],
                                    config.tokenizer)
    train = encode_split(config, tokenizer, splits.train)
    per_epoch = epoch_steps(config, train)
    return per_epoch, total_steps(config, train, per_epoch)


def longest_source(data: Encoded) -> int | None:
    """The longest source of an encoded split in tokens (EOS included): the run's input limit basis (None: blocks)."""
    if isinstance(data, EncodedBlocks):
        return None
    return max(map(len, data.sources), default=0)
