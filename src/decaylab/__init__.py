"""decaylab: weight-decay regularization done right for text-generation models."""

__version__ = "0.1.0"
