"""A trained run from Python: `run = decaylab.load("runs/x")`, then `run.generate(...)`, `run.evaluate(...)`.

The `generate` and `evaluate` commands are thin wrappers over this object (cli.py); see docs/python.md.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import nn

from decaylab.config import Config
from decaylab.errors import DamagedFile
from decaylab.files import read_json_object, read_jsonl
from decaylab.generation import continue_prompts, translate
from decaylab.generation.limits import input_token_limit
from decaylab.runfolder.load import TrainedRun, load_trained

METHODS = ("greedy", "beam", "sample")
DEFAULT_NEW_TOKENS = 64  # a language model's continuation when max_new_tokens is not given

CutHandler = Callable[[int, int], None]


class Run:
    """A run folder's trained model with its config and tokenizer, ready to generate and evaluate."""

    def __init__(self, trained: TrainedRun, checkpoint: str) -> None:
        self._trained = trained
        self.checkpoint = checkpoint

    # -- what the run is ------------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The run folder."""
        return self._trained.paths.root

    @property
    def config(self) -> Config:
        """The run's fully resolved config (config.yaml)."""
        return self._trained.config

    @property
    def model(self) -> nn.Module:
        """The model with the checkpoint's weights, in eval mode on `device`."""
        return self._trained.model

    @property
    def tokenizer(self) -> Tokenizer:
        """The run's BPE tokenizer (tokenizer.json), trained on its training split."""
        return self._trained.tokenizer

    @property
    def device(self) -> torch.device:
        """Where the model lives."""
        return self._trained.device

    @property
    def language_model(self) -> bool:
        """True for a decoder-only language model (text data: prompts are continued, not translated)."""
        return self.config.data.kind == "text"

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """metrics.jsonl as a list of dicts, one per evaluation (read afresh each time: a run may be training)."""
        try:
            return read_jsonl(self._trained.paths.metrics)
        except DamagedFile as exc:
            raise exc.saying("the checkpoints are not affected: generate and evaluate still work") from None

    @property
    def meta(self) -> dict[str, Any]:
        """meta.json: versions, seed, data fingerprint and sizes, host."""
        return read_json_object(self._trained.paths.meta) or {}

    @property
    def best(self) -> dict[str, Any] | None:
        """The metrics row with the lowest validation loss (the evaluation `checkpoints/best` was saved at)."""
        rows = [row for row in self.metrics if isinstance(row.get("val_loss"), (int, float))]
        return min(rows, key=lambda row: row["val_loss"]) if rows else None

    def input_limit(self) -> tuple[int, str]:
        """Most source tokens an encoder-decoder is given (longer inputs are cut), and where that number comes
        from (generation.max_input_tokens, or twice the longest training source)."""
        meta = json.loads(self._trained.paths.meta.read_text(encoding="utf-8")) if self._trained.paths.meta.is_file(
        ) else {}
        return input_token_limit(self.config, meta)

    @property
    def context(self) -> int | None:
        """The longest sequence a language model takes (learned positions), else None."""
        model = self.config.model
        return getattr(model, "max_positions", None) if getattr(model, "positions", None) == "learned" else None

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, arch={self.config.model.arch!r}, checkpoint={self.checkpoint!r})"

    # -- generation and evaluation --------------------------------------------------------------------------

    def generate(self, inputs: str | list[str], *, beam: int = 1, method: str | None = None,
                 max_new_tokens: int | None = None, length_penalty: float | None = None, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                 on_cut: CutHandler | None = None) -> str | list[str]:
        """Translate each source (an encoder-decoder) or continue each prompt (a language model).

        `method` greedy, beam or sample (default: beam when `beam` > 1, else greedy); sampling with `temperature`,
        `top_k`, `top_p`, reproducible by `seed`. `max_new_tokens` bounds each output (default: a language model
        64; an encoder-decoder follows generation.max_len_ratio and max_len_extra). An input too long for the model
        is cut and `on_cut(index, tokens)` is told (default: a warning). One string in, one string out.
        """
        single = isinstance(inputs, str)
        lines = [inputs] if single else list(inputs)
        check_options(beam, method, max_new_tokens, length_penalty, temperature, top_k, top_p)
        chosen = method or ("beam" if beam > 1 else "greedy")
        gen = self.config.generation
        penalty = gen.length_penalty if length_penalty is None else length_penalty
        if self.language_model:
            context = self.context
            outputs = continue_prompts(
                self.model, self.tokenizer, lines, max_new_tokens=max_new_tokens or DEFAULT_NEW_TOKENS,
                method=chosen, beam=beam, length_penalty=penalty, temperature=temperature, top_k=top_k, top_p=top_p,
                seed=seed, max_context=context, on_cut=on_cut or _warn(f"the model's {context} positions"))
        else:
            limit, why = self.input_limit()
            ratio, extra = (0.0, max_new_tokens) if max_new_tokens else (gen.max_len_ratio, gen.max_len_extra)
            outputs = translate(
                self.model, self.tokenizer, lines, method=chosen, beam=beam, length_penalty=penalty,
                max_len_ratio=ratio, max_len_extra=extra, device=self.device, temperature=temperature, top_k=top_k,
                top_p=top_p, seed=seed, max_input_tokens=limit,
                on_cut=on_cut or _warn(f"{limit} tokens ({why}; set generation.max_input_tokens to change it)"))
        return outputs[0] if single else outputs

    def evaluate(self, split: str = "test", *, beam: int | None = None,
                 max_examples: int | None = None) -> dict[str, Any]:
        """Loss, perplexity, BLEU and chrF (a language model: bits per character) and the gap on a split of the
        run's data; merged into the run's eval.json, as `decaylab evaluate` does."""
        from decaylab.evaluation.evaluate import evaluate_trained

        for name, value in (("beam", beam), ("max_examples", max_examples)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}: must be an integer >= 1 (got {value!r})")
        return evaluate_trained(self._trained, split, beam, self.checkpoint, max_examples)


def check_options(beam: int, method: str | None, max_new_tokens: int | None, length_penalty: float | None,
                   temperature: float, top_k: int, top_p: float) -> None:
    """Refuse a generation option out of range: a ValueError `name: what is allowed (got …)` (the command line says
    it as `generate: --name: …`)."""
    if isinstance(beam, bool) or not isinstance(beam, int) or beam < 1:
        raise ValueError(f"beam: must be >= 1 (got {beam})")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k: must be >= 0 (got {top_k})")
    if max_new_tokens is not None and (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int)
                                       or max_new_tokens < 1):
        raise ValueError(f"max_new_tokens: must be >= 1 (got {max_new_tokens})")
    if not temperature > 0:
        raise ValueError(f"temperature: must be > 0 (got {temperature:g})")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p: must be in (0, 1] (got {top_p:g})")
    if length_penalty is not None and not length_penalty >= 0:
        raise ValueError(f"length_penalty: must be >= 0 (got {length_penalty:g})")
    if method is not None and method not in METHODS:
        raise ValueError(f"method: must be one of {', '.join(METHODS)} (got {method!r})")


def _warn(room: str) -> CutHandler:
    def warn(index: int, tokens: int) -> None:
        size = "far more" if tokens < 0 else f"{tokens:,} tokens, more"
        warnings.warn(f"input {index}: {size} than fit {room}: cut", stacklevel=4)

    return warn


def load(path: str | Path, checkpoint: str = "best", device: str | None = None, *,
         option: str = "checkpoint=") -> Run:
    """A trained run folder as a `Run`: `checkpoints/<checkpoint>` (best or last) in eval mode on `device` (auto,
    cpu, cuda; default: the run's own setting). A damaged file is a DamagedFile saying what still works (through
    `option`: the keyword here, `--checkpoint` for the command line)."""
    return Run(load_trained(Path(path), checkpoint, device, option=option), checkpoint)

