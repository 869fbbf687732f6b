"""The adaptive softmax (`model.output=adaptive`): log-probabilities in float32 over torch's module's own layers.

`nn.AdaptiveLogSoftmaxWithLoss` (Grave et al. 2017) splits the vocabulary, ranked by frequency, into a head (the
most frequent ranks plus one token per tail cluster) and tail clusters behind low-rank projections:
log p(w) = log p_head(w) for head ranks, log p_head(cluster) + log p_tail(w | cluster) otherwise. The result
is an exactly normalized distribution. Its own `forward`/`log_prob` run the log-softmax in the autocast dtype
(bf16 on a CPU) and fill a tensor of the input's dtype, which loses ~1e-3 nats under bf16 and breaks on CUDA,
where autocast runs log-softmax in float32. Here the projections run under autocast and every log-softmax, gather
and sum in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from decaylab.config import ModelSection
from decaylab.errors import UserError


def adaptive_cutoffs(cfg: ModelSection, vocab_size: int) -> list[int]:
    """The clusters' first frequency ranks: `model.adaptive_cutoffs`, or V/4 and V/2."""
    cutoffs = list(cfg.adaptive_cutoffs or [vocab_size // 4, vocab_size // 2])
    if cutoffs[0] < 1 or cutoffs[-1] > vocab_size - 2:
        raise UserError(f"model.adaptive_cutoffs: must lie between 1 and the vocabulary size - 2 = "
                        f"{vocab_size - 2} (got {cutoffs})")
    return cutoffs


def target_log_probs(asm: nn.AdaptiveLogSoftmaxWithLoss, rows: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """log p(target) [N] (float32) for rows [N, H] and the targets' frequency ranks [N]."""
    shortlist = asm.shortlist_size
    head = F.log_softmax(asm.head(rows).float(), dim=-1)
    cluster = sum(ranks.ge(start).long() for start in asm.cutoffs[:-1])  # 0: the head, i: tail cluster i
    column = torch.where(cluster == 0, ranks, shortlist + cluster - 1)
    log_probs = head.gather(1, column.unsqueeze(1)).squeeze(1)
    for i, tail in enumerate(asm.tail):
        index = (cluster == i + 1).nonzero().squeeze(1)
        if index.numel():  # a tail's projection runs only for the rows whose target lies in it
            within = F.log_softmax(tail(rows.index_select(0, index)).float(), dim=-1)
            offset = (ranks.index_select(0, index) - asm.cutoffs[i]).unsqueeze(1)
            log_probs = log_probs.index_add(0, index, within.gather(1, offset).squeeze(1))
    return log_probs


def full_log_probs(asm: nn.AdaptiveLogSoftmaxWithLoss, rows: torch.Tensor) -> torch.Tensor:
    """log p over the whole vocabulary [N, V] (float32), in rank order."""
    shortlist = asm.shortlist_size
    head = F.log_softmax(asm.head(rows).float(), dim=-1)
    parts = [head[:, :shortlist]]
    for i, tail in enumerate(asm.tail):
        parts.append(F.log_softmax(tail(rows).float(), dim=-1) + head[:, shortlist + i : shortlist + i + 1])
    return torch.cat(parts, dim=1)
