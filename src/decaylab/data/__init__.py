"""Datasets (builtin and user files), deterministic splits and folds, tokenization and batching."""

from decaylab.data.batching import Batch, EncodedPairs, bucket_batches, collate
from decaylab.data.builtin import builtin_datasets, get_builtin, load_builtin, load_builtin_documents
from decaylab.data.io import Pair, read_pairs
from decaylab.data.splits import Splits, kfold_indices, load_splits, split_pairs, unit_hash

__all__ = [
    "Batch", "EncodedPairs", "Pair", "Splits", "bucket_batches", "builtin_datasets", "collate",
    "get_builtin", "kfold_indices", "load_builtin", "load_builtin_documents", "load_splits", "read_pairs",
    "split_pairs", "unit_hash",
]
