"""Shared fixtures: the hand-written pair file and a tiny, fast run configuration."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from decaylab.cli import main
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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest (and steadiest on a busy machine) on one intra-op thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    """The tiny config's splits and tokenizer, built once per test module."""
    from decaylab.data.splits import load_splits
    from decaylab.data.tokenizer import train_tokenizer

    base = tiny_config("model.dropout=0")
    splits = load_splits(base.data)
    tokenizer = train_tokenizer([p.source for p in splits.train] + [p.target for p in splits.train], base.tokenizer)
    return splits, tokenizer


@dataclass
class CliResult:
    """Exit code and captured output of one in-process `decaylab` invocation."""

    code: int
    out: str
    err: str


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run `decaylab ARGS` in-process through the installed entry point (a subprocess per case costs seconds)."""

    def invoke(*args: str) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["decaylab", *args])
        monkeypatch.setattr(sys, "stdin", io.StringIO(""))
        capsys.readouterr()  # only this invocation's output
        with pytest.raises(SystemExit) as exit_info:
            main()
        captured = capsys.readouterr()
        return CliResult(exit_info.value.code, captured.out, captured.err)

    return invoke
