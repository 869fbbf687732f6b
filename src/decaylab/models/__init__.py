"""Model registry: `build_model(cfg, vocab_size)` by `model.arch`; every model meets `contract.Seq2SeqModel`."""

from torch import nn

from decaylab.config import ModelConfig
from decaylab.models.contract import Seq2SeqModel
from decaylab.models.decoder import DecoderLM
from decaylab.models.rnn import Seq2Seq, count_parameters
from decaylab.models.transformer import Transformer

# One line per architecture: its `model.arch` (config.MODEL_CONFIGS) -> its class, built as cls(cfg, vocab_size).
MODELS: dict[str, type[nn.Module]] = {
    "rnn": Seq2Seq,
    "transformer": Transformer,
    "decoder": DecoderLM,
}


def build_model(cfg: ModelConfig, vocab_size: int) -> nn.Module:
    """Instantiate the architecture named by `cfg.arch`."""
    return MODELS[cfg.arch](cfg, vocab_size)


__all__ = ["MODELS", "DecoderLM", "Seq2Seq", "Seq2SeqModel", "Transformer", "build_model", "count_parameters"]
