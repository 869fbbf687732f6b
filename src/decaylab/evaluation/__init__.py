"""Loss, perplexity, BLEU/chrF (sacrebleu, with signatures) and the generalization gap."""

from decaylab.evaluation.metrics import TextMetrics, corpus_loss, perplexity, text_metrics

__all__ = ["TextMetrics", "corpus_loss", "perplexity", "text_metrics"]
