"""The test split, touched only by the grid sweeps' models: per-example losses (cached beside the sweeps, so a rerun
does not recompute them), paired bootstraps between two λ, and greedy BLEU with sacrebleu's paired bootstrap."""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

import decaylab
from decaylab.config import config_to_dict
from decaylab.data.prepare import Encoded, encode_split
from decaylab.data.splits import Splits, load_splits
from decaylab.evaluation.significance import bleu_paired_bootstrap, example_losses, paired_bootstrap
from decaylab.files import atomic_write_json
from decaylab.runfolder.layout import load_run_config
from decaylab.runfolder.load import load_trained


@cache
def _splits(data_json: str) -> Splits:
    from decaylab.config import DataConfig

    return load_splits(DataConfig(**json.loads(data_json)))


def _cached(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class TestSplit:
    """Per-example test losses and greedy translations of run folders, cached as JSON under `cache`."""

    def __init__(self, cache_dir: Path, bleu_examples: int, resamples: int) -> None:
        self.cache_dir = cache_dir
        self.bleu_examples = bleu_examples
        self.resamples = resamples
        self._encoded: dict[str, Encoded] = {}

    def _file(self, run_dir: Path, kind: str) -> Path:
        digest = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:12]
        return self.cache_dir / f"{run_dir.parent.parent.name}--{run_dir.name}--{digest}.{kind}.json"

    def losses(self, run_dir: Path) -> dict[str, np.ndarray]:
        """Summed loss (nats) and target tokens of every test example under the run's best checkpoint."""
        path = self._file(run_dir, "losses")
        saved = _cached(path)
        if saved is None:
            run = load_trained(run_dir, "best", "cpu")
            data_json = json.dumps(config_to_dict(run.config)["data"], sort_keys=True)
            key = data_json + run.tokenizer.to_str()
            if key not in self._encoded:  # every sweep of a dataset shares data and tokenizer: encode once
                self._encoded[key] = encode_split(run.config, run.tokenizer, _splits(data_json).test)
            sums, tokens = example_losses(run.model, self._encoded[key], run.device)
            saved = {"sums": sums.tolist(), "tokens": tokens.tolist()}
            atomic_write_json(path, saved)
        return {"sums": np.asarray(saved["sums"]), "tokens": np.asarray(saved["tokens"])}

    def loss(self, run_dir: Path) -> float:
        """The test loss in nats per target token (the corpus mean, as `evaluate` reports it)."""
        got = self.losses(run_dir)
        return float(got["sums"].sum() / got["tokens"].sum())

    def paired(self, run_a: Path, run_b: Path) -> dict[str, Any]:
        """Paired bootstrap of a − b in test loss (nats/token), resampling examples."""
        a, b = self.losses(run_a), self.losses(run_b)
        return paired_bootstrap(a["sums"], b["sums"], a["tokens"], metric="test loss (nats/token)",
                                resamples=self.resamples).to_dict()

    def translations(self, run_dir: Path) -> list[str]:
        """Greedy translations of the first `bleu_examples` test sources."""
        path = self._file(run_dir, "greedy")
        saved = _cached(path)
        if saved is None:
            run = decaylab.load(run_dir)
            sources = [p.source for p in self.references_pairs(run_dir)]
            saved = {"hypotheses": list(run.generate(sources)), "examples": len(sources)}
            atomic_write_json(path, saved)
        return list(saved["hypotheses"])

    def references_pairs(self, run_dir: Path) -> list[Any]:
        """The test pairs that BLEU is computed on (the first `bleu_examples`)."""
        data_json = json.dumps(config_to_dict(load_run_config(run_dir))["data"], sort_keys=True)
        return _splits(data_json).test[:self.bleu_examples]

    def bleu(self, run_a: Path, run_b: Path) -> dict[str, Any]:
        """sacrebleu's paired bootstrap of A's greedy BLEU against B's on the same test sources."""
        references = [p.target for p in self.references_pairs(run_a)]
        return {**bleu_paired_bootstrap(self.translations(run_a), self.translations(run_b), references,
                                        resamples=self.resamples), "examples": len(references)}
