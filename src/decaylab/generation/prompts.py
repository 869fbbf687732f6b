"""Prompt in, text out, for a decoder-only language model: continue each prompt with greedy, beam or sampling.

A prompt becomes EOS + its tokens (no final EOS): training documents follow an EOS in the token stream, so a prompt
starts a document, and an empty prompt asks for a document from scratch. The continuation ends at EOS (the end
of a document) or after `max_new_tokens` tokens. The model is reached through the contract only (the prompt is its
"source"; see models/decoder.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tokenizers import Tokenizer

from decaylab.data.tokenizer import EOS_ID, decode, encode
from decaylab.generation.filtering import check_sampling
from decaylab.generation.search import check_beam, decode_in_batches
from decaylab.models.contract import Seq2SeqModel

METHODS = ("greedy", "beam", "sample")


def prompt_ids(tokenizer: Tokenizer, prompts: list[str]) -> list[list[int]]:
    """Each prompt's token ids as a language model sees it: EOS (a document boundary), then the prompt's tokens."""
    return [[EOS_ID] + ids[:-1] for ids in encode(tokenizer, prompts)]  # `encode` ends each with EOS


def continue_prompts(model: Seq2SeqModel, tokenizer: Tokenizer, prompts: list[str], *, max_new_tokens: int = 64,
                     method: str = "greedy", beam: int = 5, length_penalty: float = 1.0, temperature: float = 1.0,
                     top_k: int = 0, top_p: float = 1.0, seed: int | None = None, batch_size: int = 64,
                     max_context: int | None = None, on_cut: Callable[[int, int], None] | None = None) -> list[str]:
    """Each prompt followed by the model's continuation (the model runs in eval mode and gets its mode back).

    `max_context` (the longest sequence the model takes, e.g. learned positions) keeps a prompt's last
    max_context − max_new_tokens tokens; `on_cut(index, tokens)` is told of each prompt cut, with its length.
    `seed` makes sampling reproducible.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)} (got {method!r})")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1 (got {max_new_tokens!r})")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1 (got {batch_size!r})")
    if max_context is not None and max_new_tokens >= max_context:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's "
                         f"{max_context} positions")
    if method == "beam":
        check_beam(beam, length_penalty)
    if method == "sample":
        check_sampling(temperature, top_k, top_p)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed) if method == "sample" and seed is not None else None

    ids = prompt_ids(tokenizer, prompts)
    if max_context is not None:
        room = max_context - max_new_tokens
        for i, seq in enumerate(ids):
            if len(seq) > room:
                if on_cut is not None:
                    on_cut(i, len(seq) - 1)
                ids[i] = seq[-room:]  # the prompt's last tokens: it no longer starts a document
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # similar lengths share a batch: little padding
    decoded = decode_in_batches(model, ids, order, batch_size, device, lambda src_len: max_new_tokens, method, beam,
                                length_penalty, temperature, top_k, top_p, generator)
    continuations = [decoded[i] for i in range(len(ids))]
    # decoded with the prompt's tokens, so the continuation's first word keeps its leading space
    context = [seq[1:] if seq and seq[0] == EOS_ID else seq for seq in ids]
    whole = decode(tokenizer, [c + n for c, n in zip(context, continuations, strict=True)])
    alone = decode(tokenizer, context)
    return [prompt + text[len(head):] if text.startswith(head) else prompt + " " + decode(tokenizer, [new])[0]
            for prompt, text, head, new in zip(prompts, whole, alone, continuations, strict=True)]
