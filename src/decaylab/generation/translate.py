"""Text in, text out: tokenize, decode in length-sorted batches, detokenize in the input order."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tokenizers import Tokenizer

from decaylab.data.tokenizer import EOS_ID, decode, encode
from decaylab.generation.filtering import check_sampling
from decaylab.generation.limits import CHARS_PER_TOKEN
from decaylab.generation.search import check_beam, decode_in_batches, max_lengths
from decaylab.models.contract import Seq2SeqModel

METHODS = ("greedy", "beam", "sample")


def translate(model: Seq2SeqModel, tokenizer: Tokenizer, sources: list[str], *, method: str = "greedy",
              beam: int = 5, length_penalty: float = 1.0, max_len_ratio: float = 1.5, max_len_extra: int = 10,
              batch_size: int = 64, device: torch.device | str | None = None, temperature: float = 1.0,
              top_k: int = 0, top_p: float = 1.0, seed: int | None = None, max_input_tokens: int | None = None,
              on_cut: Callable[[int, int], None] | None = None) -> list[str]:
    """Decode `sources` with greedy, beam or sampling; the model runs in eval mode and gets its mode back.

    Each output is limited to floor(source tokens, EOS included, * max_len_ratio) + max_len_extra tokens.
    With `max_input_tokens`, a longer source is cut to its first max_input_tokens − 1 tokens + EOS (and a text
    far longer is cut before tokenizing); `on_cut(index, tokens)` is told of each, with its length before the cut
    (-1 when it was cut by characters first).
    A source without tokens (empty or blank) gives "". `device` is where the inputs are built (default: the
    model's device); the search moves them to the model's device anyway. `seed` makes sampling reproducible.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)} (got {method!r})")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1 (got {batch_size!r})")
    if max_len_ratio < 0 or max_len_extra < 0:
        raise ValueError(f"max_len_ratio and max_len_extra must be >= 0 (got {max_len_ratio}, {max_len_extra})")
    if method == "beam":
        check_beam(beam, length_penalty)
    if method == "sample":
        check_sampling(temperature, top_k, top_p)
    model_device = next(model.parameters()).device
    device = torch.device(device) if device is not None else model_device
    generator = None
    if method == "sample" and seed is not None:
        generator = torch.Generator(device=model_device).manual_seed(seed)

    if max_input_tokens is not None and (isinstance(max_input_tokens, bool) or not isinstance(max_input_tokens, int)
                                         or max_input_tokens < 2):
        raise ValueError(f"max_input_tokens must be an integer >= 2 (got {max_input_tokens!r})")
    texts, cut_by_chars = list(sources), set()
    if max_input_tokens is not None:
        for i, text in enumerate(texts):
            if len(text) > max_input_tokens * CHARS_PER_TOKEN:
                texts[i] = text[: max_input_tokens * CHARS_PER_TOKEN]
                cut_by_chars.add(i)
    ids = encode(tokenizer, texts)
    if max_input_tokens is not None:
        for i, seq in enumerate(ids):
            if len(seq) > max_input_tokens or i in cut_by_chars:
                if on_cut is not None:
                    on_cut(i, -1 if i in cut_by_chars else len(seq))
                ids[i] = seq[: max_input_tokens - 1] + [EOS_ID] if len(seq) > max_input_tokens else seq
    outputs: list[list[int]] = [[] for _ in ids]
    # Longest first: little padding per batch, and an out-of-memory error shows up at once.
    todo = [i for i, (text, seq) in enumerate(zip(sources, ids, strict=True)) if text.strip() and len(seq) > 1]
    todo.sort(key=lambda i: -len(ids[i]))
    decoded = decode_in_batches(
        model, ids, todo, batch_size, device, lambda src_len: max_lengths(src_len, max_len_ratio, max_len_extra),
        method, beam, length_penalty, temperature, top_k, top_p, generator)
    for index, hyp in decoded.items():
        outputs[index] = hyp
    return decode(tokenizer, outputs)
