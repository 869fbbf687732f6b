"""Decoding: greedy, beam search and sampling over token ids, and `translate` for text."""

from decaylab.generation.search import Hypothesis, beam_hypotheses, beam_search, greedy, max_lengths, sample
from decaylab.generation.translate import translate

__all__ = ["Hypothesis", "beam_hypotheses", "beam_search", "greedy", "max_lengths", "sample", "translate"]
