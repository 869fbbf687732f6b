"""How long an input `generate` and `evaluate` take: a model never meets a source far beyond what it trained on.

An attention decoder's work and memory grow with the source length (and the output limit follows it), so an
unbounded input line could take minutes and gigabytes; beyond the longest training source its output is noise
anyway. The limit is `generation.max_input_tokens`, else twice the longest training source that the run recorded in
meta.json (`data.max_source_tokens`), else `FALLBACK_TOKENS` for a run that predates the record.
"""

from __future__ import annotations

from typing import Any

from decaylab.config import Config

FALLBACK_TOKENS = 512
# A text longer than this many characters per allowed token is cut before tokenizing (no BPE token is this long),
# so a multi-megabyte line costs no more than a line at the limit.
CHARS_PER_TOKEN = 32


def input_token_limit(config: Config, meta: dict[str, Any]) -> tuple[int, str]:
    """The longest source (tokens, EOS included) the run's model is given, and where the number comes from."""
    if config.generation.max_input_tokens is not None:
        return config.generation.max_input_tokens, "generation.max_input_tokens"
    longest = meta.get("data", {}).get("max_source_tokens")
    if isinstance(longest, int) and longest > 0:
        return 2 * longest, f"twice the longest training source, {longest} tokens"
    return FALLBACK_TOKENS, "the default for runs without a recorded training maximum"
