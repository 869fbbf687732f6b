"""Model registry: `build_model(cfg, vocab_size)` by `model.arch`."""

from torch import nn

from decaylab.config import ModelConfig
from decaylab.models.rnn import Memory, Seq2Seq, count_parameters

MODELS = {"rnn": Seq2Seq}


def build_model(cfg: ModelConfig, vocab_size: int) -> nn.Module:
    """Instantiate the architecture named by `cfg.arch`."""
    return MODELS[cfg.arch](cfg, vocab_size)


__all__ = ["MODELS", "Memory", "Seq2Seq", "build_model", "count_parameters"]
