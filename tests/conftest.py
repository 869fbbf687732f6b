"""Shared fixtures: the hand-written pair file and a tiny, fast run configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from decaylab.config import Config, load_config

FIXTURES = Path(__file__).parent / "fixtures"
TINY_PAIRS = FIXTURES / "tiny_pairs.tsv"

TINY_OVERRIDES = [
    f"data.name={TINY_PAIRS}",
    "data.split=[0.8, 0.1, 0.1]",
    "model.preset=tiny",
    "tokenizer.vocab_size=120",
    "tokenizer.min_frequency=1",
    "train.epochs=3",
    "train.batch_tokens=256",
    "train.threads=1",
]


def tiny_config(*overrides: str) -> Config:
    """A config that trains in about a second on the fixture pairs."""
    return load_config(None, TINY_OVERRIDES + list(overrides))


@pytest.fixture
def tiny() -> Config:
    """The tiny config with default settings."""
    return tiny_config()
