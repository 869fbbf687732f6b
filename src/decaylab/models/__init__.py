"""Model registry: `build_model(cfg, vocab_size)` by `model.arch`; every model meets `contract.Seq2SeqModel`.

`STACKED_MODELS` maps an architecture to its stacked form (K replicas as one model, for the stacked engine of
`sweep --vectorized`); an architecture without one is trained by the single-model engine only.
"""

from collections.abc import Callable

import torch
from torch import nn

from decaylab.config import ModelConfig
from decaylab.models.contract import Seq2SeqModel
from decaylab.models.decoder import DecoderLM
from decaylab.models.rnn import Seq2Seq, count_parameters
from decaylab.models.stacked import StackedModel
from decaylab.models.stacked_rnn import StackedSeq2Seq
from decaylab.models.stacked_transformer import StackedDecoderLM, StackedTransformer
from decaylab.models.transformer import Transformer

# One line per architecture: its `model.arch` (config.MODEL_CONFIGS) -> its class, built as cls(cfg, vocab_size).
MODELS: dict[str, type[nn.Module]] = {
    "rnn": Seq2Seq,
    "transformer": Transformer,
    "decoder": DecoderLM,
}

# `model.arch` -> its stacked form, built as cls(cfg, params, dropouts, generators) over the single model's names.
STACKED_MODELS: dict[str, type[StackedModel]] = {
    "rnn": StackedSeq2Seq,
    "transformer": StackedTransformer,
    "decoder": StackedDecoderLM,
}


def build_model(cfg: ModelConfig, vocab_size: int) -> nn.Module:
    """Instantiate the architecture named by `cfg.arch`."""
    return MODELS[cfg.arch](cfg, vocab_size)


def example_forward(model: nn.Module) -> Callable[[], torch.Tensor]:
    """One forward pass of a decaylab model on a made-up two-row batch (what a scoped decay scaling traces)."""
    from decaylab.data.batching import collate
    from decaylab.data.tokenizer import EOS_ID

    targets = [[4, 5, 6, EOS_ID], [7, 8, EOS_ID]]
    sources = [[] for _ in targets] if isinstance(model, DecoderLM) else targets  # a decoder LM reads no source
    batch = collate(sources, targets)
    device = next(model.parameters()).device
    return lambda: model.loss(batch.to(device))


def build_stacked(cfg: ModelConfig, params: dict[str, torch.Tensor], dropouts: list[float],
                  generators: list[torch.Generator] | None = None) -> StackedModel:
    """K replicas of the architecture named by `cfg.arch` over stacked `params` (KeyError: it has no stacked form)."""
    return STACKED_MODELS[cfg.arch](cfg, params, dropouts, generators)


__all__ = ["MODELS", "STACKED_MODELS", "DecoderLM", "Seq2Seq", "Seq2SeqModel", "StackedModel", "Transformer",
           "build_model", "build_stacked", "count_parameters", "example_forward"]
