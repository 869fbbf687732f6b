"""Next-token log-prob processing: forbidden specials, temperature, top-k and nucleus (top-p) filtering."""

from __future__ import annotations

import math

import torch

from decaylab.data.tokenizer import BOS_ID, PAD_ID

# Never a training target (pad positions are ignored by the loss, BOS only ever starts the decoder input),
# so every search forbids them; the scores of the other tokens are left as they are (no renormalisation).
NEVER_GENERATED = (PAD_ID, BOS_ID)


def mask_specials(log_probs: torch.Tensor) -> torch.Tensor:
    """Set the log-probs [N, V] of PAD and BOS to -inf in place and return them."""
    log_probs[:, list(NEVER_GENERATED)] = float("-inf")
    return log_probs


def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
    """Raise ValueError unless temperature > 0 (finite), top_k >= 0 (int) and 0 < top_p <= 1."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0 (got {temperature!r})")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0, 0 meaning no top-k filtering (got {top_k!r})")
    if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1], 1 meaning no nucleus filtering (got {top_p!r})")


def filter_logits(log_probs: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
                  ) -> torch.Tensor:
    """Logits [N, V] to sample from: log-probs / temperature, then top-k, then the top-p nucleus (-inf = dropped)."""
    logits = log_probs / temperature
    if 0 < top_k < logits.size(-1):
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = logits.sort(dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        # Drop a token when the more likely ones already hold top_p of the mass (the best is always kept).
        drop = probs.cumsum(dim=-1) - probs >= top_p
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
    return logits


def sample_tokens(log_probs: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """One token [N] per row drawn from the filtered distribution."""
    probs = filter_logits(log_probs, temperature, top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
