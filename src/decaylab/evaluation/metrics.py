"""Metrics: mean token loss and perplexity of a split, and corpus BLEU/chrF through sacrebleu's objects."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from sacrebleu.metrics import BLEU, CHRF
from torch import nn

from decaylab.data.prepare import Encoded
from decaylab.device import autocast


@torch.inference_mode()
def corpus_loss(model: nn.Module, data: Encoded, device: torch.device, batch_tokens: int = 8192,
                precision: str = "fp32") -> float:
    """Mean cross-entropy in nats per target token (EOS included) over a split, in eval mode."""
    return float(corpus_losses(model, data, device, batch_tokens, precision))


def corpus_losses(model: Callable[..., torch.Tensor], data: Encoded, device: torch.device,
                  batch_tokens: int = 8192, precision: str = "fp32") -> torch.Tensor:
    """`corpus_loss` of a model whose forward returns a loss sum per replica: a float64 tensor [K] (or [])."""
    was_training = model.training
    model.eval()
    total, tokens = torch.zeros((), dtype=torch.float64, device=device), 0
    try:
        with torch.no_grad():
            for batch in data.batches(batch_tokens, 1024, seed=0, shuffle=False):
                batch = batch.to(device)
                with autocast(device, precision):
                    total = total + model(batch.src, batch.src_len, batch.tgt_in, batch.tgt_out,
                                           target_index=batch.target_index).double()
                tokens += batch.n_tokens
    finally:
        model.train(was_training)
    return total.cpu() / max(1, tokens)


def bits_per_character(loss: float, tokens: int, characters: int) -> float:
    """Bits per character of a text whose `tokens` target tokens scored `loss` nats each: comparable across
    tokenizers, since it divides the text's total information by its length in characters, not in tokens."""
    return loss * tokens / (math.log(2) * characters)


def perplexity(loss: float) -> float:
    """exp(loss), capped so a diverged model prints inf rather than overflowing."""
    return math.exp(loss) if loss < 700 else float("inf")


@dataclass
class TextMetrics:
    """Corpus BLEU and chrF with the sacrebleu signatures that say exactly how they were computed."""

    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str

    def to_dict(self) -> dict[str, float | str]:
        """Plain dict for JSON."""
        return asdict(self)


def text_metrics(hypotheses: list[str], references: list[str]) -> TextMetrics:
    """Corpus BLEU (13a tokenization) and chrF (character 6-grams, beta 2) against one reference each."""
    bleu, chrf = BLEU(), CHRF()
    bleu_score = bleu.corpus_score(hypotheses, [references])
    chrf_score = chrf.corpus_score(hypotheses, [references])
    return TextMetrics(bleu_score.score, chrf_score.score, str(bleu.get_signature()), str(chrf.get_signature()))
