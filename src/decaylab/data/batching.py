"""Length-bucketed batches by target-token budget, deterministic per (seed, epoch)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from decaylab.data.tokenizer import BOS_ID, PAD_ID


@dataclass
class Batch:
    """Padded tensors for one step; `tgt_in` is the target shifted right (BOS first)."""

    src: torch.Tensor  # [B, S]
    src_len: torch.Tensor  # [B] (CPU, as pack_padded_sequence wants)
    tgt_in: torch.Tensor  # [B, T]
    tgt_out: torch.Tensor  # [B, T]
    # Non-pad target tokens: what the step's loss sum is divided by. A data-parallel rank's share of a global batch
    # (training/loop.py) keeps the whole global batch's count, so the ranks' averaged gradients are the global step's.
    n_tokens: int
    # Flat positions (in B·T) of the non-pad targets, found on the CPU when the batch is built: selecting those
    # rows on a GPU with a boolean mask would make the host wait for the device to learn how many there are.
    target_index: torch.Tensor  # [n_tokens]

    def to(self, device: torch.device) -> Batch:
        """The same batch on another device (lengths stay on the CPU)."""
        return Batch(self.src.to(device, non_blocking=True), self.src_len,
                     self.tgt_in.to(device, non_blocking=True), self.tgt_out.to(device, non_blocking=True),
                     self.n_tokens, self.target_index.to(device, non_blocking=True))


def pad_sources(sources: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded source ids [B, S] and their lengths [B] (on the CPU, as pack_padded_sequence wants)."""
    src = torch.full((len(sources), max(map(len, sources))), PAD_ID, dtype=torch.long)
    for i, s in enumerate(sources):
        src[i, : len(s)] = torch.tensor(s)
    return src, torch.tensor([len(s) for s in sources], dtype=torch.long)


def collate(sources: list[list[int]], targets: list[list[int]]) -> Batch:
    """Pad a list of examples; targets are given ending with EOS and get BOS prepended for the input."""
    batch = len(sources)
    src, src_len = pad_sources(sources)
    tgt_len = max(map(len, targets))
    tgt_in = torch.full((batch, tgt_len), PAD_ID, dtype=torch.long)
    tgt_out = torch.full((batch, tgt_len), PAD_ID, dtype=torch.long)
    for i, t in enumerate(targets):
        tgt_out[i, : len(t)] = torch.tensor(t)
        tgt_in[i, 0] = BOS_ID
        tgt_in[i, 1 : len(t)] = torch.tensor(t[:-1])
    target_index = (tgt_out.view(-1) != PAD_ID).nonzero().squeeze(1)
    return Batch(src, src_len, tgt_in, tgt_out, len(target_index), target_index)


def bucket_batches(
    lengths: list[tuple[int, int]], batch_tokens: int, max_batch_size: int, seed: int, shuffle: bool = True,
) -> list[list[int]]:
    """Group example indices into batches of similar length whose padded size fits `batch_tokens`.

    Examples are shuffled, sorted by length inside windows of 100 batches (little padding, still random),
    cut by the budget, and the batches shuffled again; `shuffle=False` gives a fixed length-sorted order.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    if shuffle:
        rng.shuffle(order)
    window = max(1, 100 * max_batch_size)
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: (lengths[i][1], lengths[i][0]))
        current: list[int] = []
        longest = 0
        for index in chunk:
            size = max(lengths[index])
            grown = max(longest, size)
            if current and (grown * (len(current) + 1) > batch_tokens or len(current) >= max_batch_size):
                batches.append(current)
                current, grown = [], size
            current.append(index)
            longest = grown
        if current:
            batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return batches


class EncodedPairs:
    """A split encoded once into token ids, from which batches are cut per epoch."""

    def __init__(self, sources: list[list[int]], targets: list[list[int]]):
        self.sources = sources
        self.targets = targets
        self.lengths = [(len(s), len(t)) for s, t in zip(sources, targets, strict=True)]

    def __len__(self) -> int:
        return len(self.sources)

    def groups(self, batch_tokens: int, max_batch_size: int, seed: int, shuffle: bool = True) -> list[list[int]]:
        """Example indices per batch of one epoch: length-bucketed (`bucket_batches`), the order fixed by `seed`."""
        return bucket_batches(self.lengths, batch_tokens, max_batch_size, seed, shuffle)

    def target_tokens(self, indices: list[int]) -> int:
        """Non-pad target tokens of the batch of `indices` (its `n_tokens`), counted without building it."""
        return sum(self.lengths[i][1] for i in indices)

    def batch(self, indices: list[int]) -> Batch:
        """The examples at `indices` as one padded Batch."""
        return collate([self.sources[i] for i in indices], [self.targets[i] for i in indices])

    def batches(self, batch_tokens: int, max_batch_size: int, seed: int, shuffle: bool = True) -> list[Batch]:
        """This split's batches for one epoch (the order depends only on `seed`)."""
        return [self.batch(g) for g in self.groups(batch_tokens, max_batch_size, seed, shuffle)]

    def subset(self, indices: list[int]) -> EncodedPairs:
        """The examples at `indices`, e.g. one cross-validation fold."""
        return EncodedPairs([self.sources[i] for i in indices], [self.targets[i] for i in indices])
