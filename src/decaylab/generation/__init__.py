"""Decoding: greedy, beam search and sampling over token ids; `translate` (pairs) and `continue_prompts` (a language
model) for text."""

from decaylab.generation.prompts import continue_prompts
from decaylab.generation.search import Hypothesis, beam_hypotheses, beam_search, greedy, max_lengths, sample
from decaylab.generation.translate import translate

__all__ = ["Hypothesis", "beam_hypotheses", "beam_search", "continue_prompts", "greedy", "max_lengths", "sample",
           "translate"]
