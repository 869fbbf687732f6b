"""Is model A better than model B on the same test examples? Per-example losses and a paired bootstrap over them;
BLEU's paired bootstrap through sacrebleu's own implementation (its `--paired-bs`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from decaylab.data.prepare import Encoded, encode_split
from decaylab.data.splits import load_splits
from decaylab.errors import UserError
from decaylab.runfolder.load import load_trained

RESAMPLES = 1000  # sacrebleu's default for --paired-bs
SACREBLEU_SEED = 12345  # sacrebleu's default seed (SACREBLEU_SEED)


@dataclass(frozen=True)
class PairedBootstrap:
    """a − b on one metric over the same examples: the observed difference, its bootstrap CI and p-value."""

    metric: str
    a: float
    b: float
    difference: float  # a − b on the whole set
    ci_low: float
    ci_high: float
    confidence: float
    p_value: float  # two-sided: how often a resampled difference, centred, is as far from 0 as the observed one
    examples: int
    resamples: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields."""
        return asdict(self)


@torch.no_grad()
def example_losses(model: nn.Module, data: Encoded, device: torch.device | str = "cpu",
                   limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Summed target-token loss (nats) and target-token count of each example (sentence pair or text block), in
    eval mode: one example per forward pass, so that no padding or batch-mate changes a number."""
    was_training = model.training
    model.eval()
    n = len(data) if limit is None else min(limit, len(data))
    sums, tokens = np.zeros(n), np.zeros(n)
    try:
        for i in range(n):
            batch = data.batch([i]).to(torch.device(device))
            sums[i] = float(model.loss(batch))
            tokens[i] = batch.n_tokens
    finally:
        model.train(was_training)
    return sums, tokens


def paired_bootstrap(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                     weights: Sequence[float] | np.ndarray | None = None, *, metric: str = "loss",
                     resamples: int = RESAMPLES, seed: int = 0, confidence: float = 0.95) -> PairedBootstrap:
    """Paired bootstrap of a − b over examples (Koehn 2004): resample the examples with replacement, recompute both
    metrics on the same resample. With `weights` (e.g. target tokens) the metric is Σvalue/Σweight, a corpus loss
    per token; without, the plain mean. The p-value centres the resampled differences (sacrebleu's convention)."""
    a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_arr.shape != b_arr.shape or a_arr.ndim != 1 or len(a_arr) == 0:
        raise ValueError(f"paired_bootstrap: a and b must be equally long 1-D sequences (got {a_arr.shape}, "
                         f"{b_arr.shape})")
    w = np.ones_like(a_arr) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != a_arr.shape:
        raise ValueError(f"paired_bootstrap: weights must be as long as a (got {w.shape})")
    if resamples < 1:
        raise ValueError(f"paired_bootstrap: resamples must be at least 1 (got {resamples})")
    rng = np.random.default_rng(seed)
    n = len(a_arr)
    diffs = np.empty(resamples)
    chunk = max(1, 2_000_000 // n)  # bounded memory for long test sets
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        wsum = w[idx].sum(axis=1)
        diffs[start:start + len(idx)] = (a_arr[idx].sum(axis=1) - b_arr[idx].sum(axis=1)) / wsum
    value_a, value_b = a_arr.sum() / w.sum(), b_arr.sum() / w.sum()
    observed = value_a - value_b
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(diffs, [tail, 1.0 - tail])
    far = np.abs(diffs - diffs.mean()) >= abs(observed)
    p_value = (1.0 + far.sum()) / (resamples + 1.0)
    return PairedBootstrap(metric, float(value_a), float(value_b), float(observed), float(low), float(high),
                           confidence, float(p_value), n, resamples, seed)


def compare_runs(run_a: Path | str, run_b: Path | str, split: str = "test", *, checkpoint: str = "best",
                 resamples: int = RESAMPLES, seed: int = 0, limit: int | None = None,
                 device: str | None = "cpu") -> PairedBootstrap:
    """Paired bootstrap of two trained runs' loss (nats per target token) on the same split's examples.

    The runs must share data and tokenizer (the trials of one sweep do): with another tokenizer a text's blocks,
    and every per-token loss, would be other units."""
    a, b = load_trained(Path(run_a), checkpoint, device), load_trained(Path(run_b), checkpoint, device)
    if a.tokenizer.to_str() != b.tokenizer.to_str():
        raise UserError(f"{run_a} and {run_b}: different tokenizers, so their examples' losses are not paired; "
                        "compare runs of one sweep (they share shared/tokenizer.json)")
    splits = load_splits(a.config.data)
    if load_splits(b.config.data).fingerprint != splits.fingerprint:
        raise UserError(f"{run_a} and {run_b}: trained on different data; a paired comparison needs the same "
                        f"{split} examples")
    examples = getattr(splits, split)
    data = encode_split(a.config, a.tokenizer, examples)
    sums_a, tokens = example_losses(a.model, data, a.device, limit)
    sums_b, _ = example_losses(b.model, data, b.device, limit)
    return paired_bootstrap(sums_a, sums_b, tokens, metric=f"{split} loss (nats/token)", resamples=resamples,
                            seed=seed)


def bleu_paired_bootstrap(hypotheses_a: Sequence[str], hypotheses_b: Sequence[str], references: Sequence[str],
                          resamples: int = RESAMPLES, seed: int = SACREBLEU_SEED) -> dict[str, Any]:
    """sacrebleu's paired bootstrap (`sacrebleu --paired-bs`) of system A against baseline B on one reference set:
    both BLEU scores with sacrebleu's 95 % CI of A's, the p-value of the difference and the signature."""
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    if not (len(hypotheses_a) == len(hypotheses_b) == len(references)) or not references:
        raise ValueError("bleu_paired_bootstrap: A, B and the references must be equally long and not empty")
    saved = os.environ.get("SACREBLEU_SEED")
    os.environ["SACREBLEU_SEED"] = str(seed)  # sacrebleu reads its seed from the environment only
    try:
        test = PairedTest([("b", list(hypotheses_b)), ("a", list(hypotheses_a))], {"BLEU": BLEU()},
                          [list(references)], test_type="bs", n_samples=resamples)
        signatures, scores = test()
    finally:
        if saved is None:
            os.environ.pop("SACREBLEU_SEED", None)
        else:
            os.environ["SACREBLEU_SEED"] = saved
    base, system = scores["BLEU"]
    difference = float(system.score - base.score)
    # sacrebleu counts resamples with a difference strictly above the observed one, so two systems with the same
    # BLEU (identical outputs, or both at 0) get p = 1/(n + 1), "significant"; there is no difference to test.
    p_value = 1.0 if difference == 0 else float(system.p_value)
    return {"bleu_a": float(system.score), "bleu_b": float(base.score), "difference": difference,
            "ci_a": float(system.ci), "mean_a": float(system.mean), "p_value": p_value,
            "p_value_sacrebleu": float(system.p_value), "resamples": resamples, "seed": seed,
            "signature": str(signatures["BLEU"])}
