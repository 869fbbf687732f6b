"""k-fold cross-validation splits over the training split; the validation and test splits are never used."""

from __future__ import annotations

from decaylab.data.splits import Splits, kfold_indices


def fold_indices(n_train: int, folds: int, seed: int) -> list[list[int]]:
    """Disjoint held-out index sets covering range(n_train), fixed by the seed (a UserError if folds is bad)."""
    return kfold_indices(n_train, folds, seed)


def fold_splits(splits: Splits, held_out: list[int], fold: int, folds: int) -> Splits:
    """Train on the training split minus the held-out fold, validate on that fold; no test pairs."""
    held = set(held_out)
    train = [pair for i, pair in enumerate(splits.train) if i not in held]
    valid = [splits.train[i] for i in held_out]
    return Splits(train, valid, [], f"{splits.origin}, fold {fold + 1} of {folds} of the training split")
