"""Batched decoding for any encoder-decoder meeting `models.contract.Seq2SeqModel`: greedy, beam search, sampling.

Shared conventions:
- `max_len` (an int, or a LongTensor with one value per row) bounds the number of output tokens, EOS not
  counted; `max_lengths` gives the usual floor(src_len * ratio) + extra.
- Outputs exclude BOS and the final EOS. PAD and BOS are never generated (see `filtering.NEVER_GENERATED`).
- Everything runs under `torch.inference_mode()` on the model's device; train/eval mode is the caller's choice.
- Rows that are finished leave the batch (the memory and decoding state are compacted), so they cost nothing later.
- The model's memory and state are opaque: only the model's `initial_state`, `step`, `reorder_state` and
  `reorder_memory` touch them. Beam search reorders the state every step and the memory only when sentences leave.

Beam search (`beam_hypotheses`):
- All sentences and beams run as one [n * beam] batch. At the first step only beam 0 is alive (the others
  score -inf), so the beam never holds duplicates.
- Every hypothesis is a complete sequence y + EOS: one that reaches `max_len` tokens is completed with a
  forced EOS. Its log-prob is log p(y, EOS | x) and its length is len(y) + 1 (the tokens scored, EOS included);
  the final choice maximises score = log_prob / length ** length_penalty (0 = raw log-prob; 1 = per-token).
- Each step takes the 2 * beam best extensions of each sentence. EOS candidates among the first `beam` move to
  the sentence's finished set (outside them a plain beam would not have kept them, which is what makes
  beam=1 exactly greedy); the best `beam` other candidates stay alive.
- Stopping rule: a sentence is done when (a) `beam` finished hypotheses all have a log-prob at least as high
  as the best alive one (a plain beam in which finished hypotheses keep their slots would hold only finished
  ones; with beam=1 this is the moment greedy emits EOS), or (b) no alive hypothesis can beat the best finished
  normalised score (an exact bound: log-probs only fall and the length can grow to at most max_len + 1, so an
  alive log-prob s <= 0 can at most reach s / (max_len + 1) ** length_penalty), or (c) nothing is alive.
  (b) only saves work: continuing could not change the result. Unlike fairseq's "stop at `beam` finished", (a)
  does not let poor early EOS hypotheses end the search while a much better prefix is still growing.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

import torch

from decaylab.data.batching import pad_sources
from decaylab.data.tokenizer import BOS_ID, EOS_ID
from decaylab.generation.filtering import check_sampling, mask_specials, sample_tokens
from decaylab.models.contract import Seq2SeqModel

NEG_INF = float("-inf")


@dataclass
class Hypothesis:
    """A beam-search result: tokens (no BOS/EOS), log p(tokens + EOS | source) and the normalised score."""

    tokens: list[int]
    log_prob: float
    score: float


def max_lengths(src_len: torch.Tensor, ratio: float, extra: int) -> torch.Tensor:
    """Per-row output-length limits floor(src_len * ratio) + extra (a CPU LongTensor)."""
    return torch.floor(src_len.detach().cpu().double() * ratio).long() + extra


def _limits(max_len: int | torch.Tensor, batch: int) -> torch.Tensor:
    """`max_len` as a CPU LongTensor [batch] of non-negative limits."""
    if isinstance(max_len, torch.Tensor):
        limits = max_len.detach().to("cpu", torch.long)
        limits = limits.expand(batch) if limits.dim() == 0 else limits.reshape(-1)
        if limits.numel() != batch:
            raise ValueError(f"max_len has {limits.numel()} values for a batch of {batch} rows")
    else:
        if isinstance(max_len, bool):
            raise ValueError(f"max_len must be an int or a LongTensor (got {max_len!r})")
        limits = torch.full((batch,), operator.index(max_len), dtype=torch.long)
    if (limits < 0).any():
        raise ValueError(f"max_len must be >= 0 (got {limits.min().item()})")
    return limits.clone()


def _device(model: Seq2SeqModel) -> torch.device:
    """The device of the model's parameters (every model is an nn.Module)."""
    return next(model.parameters()).device


def _decode(model: Seq2SeqModel, src: torch.Tensor, src_len: torch.Tensor, max_len: int | torch.Tensor,
            pick: Callable[[torch.Tensor], torch.Tensor]) -> list[list[int]]:
    """Left-to-right decoding where `pick` chooses each row's next token from its masked log-probs [N, V]."""
    device = _device(model)
    batch = src.size(0)
    limits = _limits(max_len, batch)
    outputs: list[list[int]] = [[] for _ in range(batch)]
    rows = torch.nonzero(limits > 0).squeeze(1)  # original index of each active row
    if rows.numel() == 0:
        return outputs
    memory = model.encode(src.to(device), src_len)
    if rows.numel() < batch:
        memory = model.reorder_memory(memory, rows.to(device))
    state, limits = model.initial_state(memory), limits[rows]
    tokens = torch.full((rows.numel(),), BOS_ID, dtype=torch.long, device=device)
    step = 0
    while True:
        step += 1
        log_probs, state = model.step(tokens, memory, state)
        tokens = pick(mask_specials(log_probs))
        chosen = tokens.cpu()
        ended = chosen == EOS_ID
        for row, token in zip(rows[~ended].tolist(), chosen[~ended].tolist(), strict=True):
            outputs[row].append(token)
        done = ended | (limits <= step)
        if done.all():
            return outputs
        if done.any():  # compact: finished rows are never recomputed
            keep = torch.nonzero(~done).squeeze(1)
            index = keep.to(device)
            memory, state = model.reorder_memory(memory, index), model.reorder_state(state, index)
            tokens = tokens.index_select(0, index)
            rows, limits = rows[keep], limits[keep]


def greedy(model: Seq2SeqModel, src: torch.Tensor, src_len: torch.Tensor, max_len: int | torch.Tensor
           ) -> list[list[int]]:
    """Greedy decoding of a padded batch [B, S] (lengths [B]); one token list per row."""
    with torch.inference_mode():
        return _decode(model, src, src_len, max_len, lambda log_probs: log_probs.argmax(dim=-1))


def sample(model: Seq2SeqModel, src: torch.Tensor, src_len: torch.Tensor, max_len: int | torch.Tensor,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           generator: torch.Generator | None = None) -> list[list[int]]:
    """Ancestral sampling with temperature, top-k and nucleus filtering (`generator` on the model's device)."""
    check_sampling(temperature, top_k, top_p)
    with torch.inference_mode():
        return _decode(model, src, src_len, max_len,
                       lambda log_probs: sample_tokens(log_probs, temperature, top_k, top_p, generator))


def check_beam(beam: int, length_penalty: float) -> None:
    """Raise ValueError unless beam is an int >= 1 and length_penalty a finite number >= 0."""
    if isinstance(beam, bool) or not isinstance(beam, int) or beam < 1:
        raise ValueError(f"beam must be an integer >= 1 (got {beam!r})")
    if not (isinstance(length_penalty, (int, float)) and math.isfinite(length_penalty) and length_penalty >= 0):
        raise ValueError(f"length_penalty must be a finite number >= 0 (got {length_penalty!r})")


def beam_hypotheses(model: Seq2SeqModel, src: torch.Tensor, src_len: torch.Tensor, beam: int,
                    max_len: int | torch.Tensor, length_penalty: float = 1.0) -> list[Hypothesis]:
    """Beam search over a padded batch; the best finished hypothesis of each row (see the module docstring)."""
    check_beam(beam, length_penalty)
    device = _device(model)
    batch = src.size(0)
    limits = _limits(max_len, batch)  # per active sentence, like everything below on the CPU
    if batch == 0:
        return []
    k = beam
    with torch.inference_mode():
        memory = model.encode(src.to(device), src_len)
        memory = model.reorder_memory(memory, torch.arange(batch, device=device).repeat_interleave(k))
        state = model.initial_state(memory)
        sents = torch.arange(batch)  # original index of each active sentence
        best: list[Hypothesis | None] = [None] * batch
        best_score = torch.full((batch,), NEG_INF, dtype=torch.float64)
        finished = torch.full((batch, k), NEG_INF, dtype=torch.float64)  # the k best finished log-probs
        scores = torch.full((batch, k), NEG_INF, dtype=torch.float64, device=device)
        scores[:, 0] = 0.0  # only beam 0 is alive at first: no duplicate hypotheses
        tokens = torch.full((batch * k,), BOS_ID, dtype=torch.long, device=device)
        prefixes = torch.zeros((batch * k, 0), dtype=torch.long, device=device)
        step = 0
        while True:
            step += 1
            n = sents.numel()
            log_probs, state = model.step(tokens, memory, state)
            log_probs = mask_specials(log_probs)  # [n * k, V]
            vocab = log_probs.size(1)
            forced = limits < step  # at max_len tokens: only EOS may follow
            if forced.any():
                rows = forced.to(device).repeat_interleave(k)
                eos = log_probs[rows, EOS_ID]
                log_probs[rows] = NEG_INF
                log_probs[rows, EOS_ID] = eos
            # A sentence's best 2k extensions lie among each hypothesis's own best 2k tokens (adding the
            # hypothesis's score keeps a row's order), so only those are summed: the same candidates and scores
            # as summing the whole [n * k, V] matrix, which cost more than the model step on a CPU.
            # float64 sums keep the order of float32 log-probs exactly (beam=1 ranks like greedy's argmax).
            width = min(2 * k, vocab)
            row_top, row_token = log_probs.topk(width, dim=1)  # [n * k, width], sorted
            cand = scores.view(-1, 1) + row_top.double()
            top, pick = cand.view(n, k * width).topk(min(2 * k, k * width), dim=1)  # sorted, best first
            token = row_token.view(n, k * width).gather(1, pick).cpu()
            top, pick = top.cpu(), pick.cpu()
            parent = torch.div(pick, width, rounding_mode="floor")
            rank = torch.arange(top.size(1))
            live = top > NEG_INF
            is_eos = token == EOS_ID

            # Finished: EOS among the first k candidates; remember each sentence's best by normalised score.
            finish = is_eos & live & (rank < k)
            finished = torch.cat([finished, top.masked_fill(~finish, NEG_INF)], dim=1).topk(k, dim=1).values
            norm = (top / step**length_penalty).masked_fill(~finish, NEG_INF)
            step_best, pos = norm.max(dim=1)
            improved = torch.nonzero(step_best > best_score).squeeze(1)
            if improved.numel():
                rows = improved * k + parent[improved, pos[improved]]
                words = prefixes.index_select(0, rows.to(device)).tolist()
                for i, seq in zip(improved.tolist(), words, strict=True):
                    best[int(sents[i])] = Hypothesis(seq, top[i, pos[i]].item(), step_best[i].item())
                best_score[improved] = step_best[improved]

            # Alive: the best k non-EOS candidates in rank order (missing ones are dead slots scoring -inf).
            grows = live & ~is_eos
            order = torch.where(grows, rank, rank + top.size(1)).argsort(dim=1)[:, :k]
            alive = grows.gather(1, order)
            new_scores = top.gather(1, order).masked_fill(~alive, NEG_INF)
            new_parent, new_token = parent.gather(1, order), token.gather(1, order)

            best_alive = new_scores[:, 0]
            bound = best_alive / (limits + 1).double() ** length_penalty
            done = (finished[:, -1] >= best_alive) | (best_score >= bound) | ~alive[:, 0]
            if done.all():
                break
            keep = torch.nonzero(~done).squeeze(1)
            rows = (keep.unsqueeze(1) * k + new_parent[keep]).view(-1).to(device)
            state = model.reorder_state(state, rows)
            tokens = new_token[keep].view(-1).to(device)
            prefixes = torch.cat([prefixes.index_select(0, rows), tokens.unsqueeze(1)], dim=1)
            scores = new_scores[keep].to(device)
            if keep.numel() < n:  # compact: finished sentences are never recomputed
                memory = model.reorder_memory(memory, (keep.unsqueeze(1) * k + torch.arange(k)).view(-1).to(device))
                sents, limits = sents[keep], limits[keep]
                best_score, finished = best_score[keep], finished[keep]
    return [h if h is not None else Hypothesis([], NEG_INF, NEG_INF) for h in best]


def beam_search(model: Seq2SeqModel, src: torch.Tensor, src_len: torch.Tensor, beam: int,
                max_len: int | torch.Tensor, length_penalty: float = 1.0) -> list[list[int]]:
    """Beam search over a padded batch [B, S]; the best hypothesis's tokens for each row."""
    return [h.tokens for h in beam_hypotheses(model, src, src_len, beam, max_len, length_penalty)]


def decode_in_batches(model: Seq2SeqModel, ids: list[list[int]], order: list[int], batch_size: int,
                      device: torch.device, limit: Callable[[torch.Tensor], int | torch.Tensor], method: str,
                      beam: int = 5, length_penalty: float = 1.0, temperature: float = 1.0, top_k: int = 0,
                      top_p: float = 1.0, generator: torch.Generator | None = None) -> dict[int, list[int]]:
    """The output tokens of the inputs `ids[i]` for i in `order`, decoded by `method` (greedy, beam or sample) in
    batches of `batch_size` consecutive entries of `order`; `limit(src_len)` gives each batch's output limit. The
    model runs in eval mode and gets its mode back."""
    outputs: dict[int, list[int]] = {}
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            src, src_len = pad_sources([ids[i] for i in chunk])
            src = src.to(device)
            if method == "greedy":
                hyps = greedy(model, src, src_len, limit(src_len))
            elif method == "beam":
                hyps = beam_search(model, src, src_len, beam, limit(src_len), length_penalty)
            else:
                hyps = sample(model, src, src_len, limit(src_len), temperature, top_k, top_p, generator)
            outputs.update(zip(chunk, hyps, strict=True))
    finally:
        model.train(was_training)
    return outputs
