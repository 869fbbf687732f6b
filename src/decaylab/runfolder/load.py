"""Loading a trained run (config, tokenizer, model weights) for generation and evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import nn

from decaylab.config import Config
from decaylab.data.tokenizer import load_tokenizer
from decaylab.device import resolve_device
from decaylab.errors import DamagedFile, UserError
from decaylab.models import build_model
from decaylab.runfolder.checkpoint import checkpoint_problem, load_model_weights
from decaylab.runfolder.layout import RunPaths, load_run_config

CHECKPOINTS = ("best", "last")
TOKENIZER_NEEDED = ("its checkpoints can only be used with the tokenizer they were trained with: restore "
                    "tokenizer.json from a copy of the run, or train it again (metrics.jsonl is unaffected)")


@dataclass
class TrainedRun:
    """A run folder's model, ready for inference."""

    paths: RunPaths
    config: Config
    tokenizer: Tokenizer
    model: nn.Module
    device: torch.device


def other_checkpoint(run_dir: Path, damaged: str, option: str = "--checkpoint") -> str:
    """What still works when `checkpoints/<damaged>` cannot be read: the other checkpoint, if it is whole."""
    other = "last" if damaged == "best" else "best"
    if checkpoint_problem(Path(run_dir) / "checkpoints" / other) is None:
        if option:  # a flag (--checkpoint last) or a Python keyword (checkpoint="last")
            use = f'{option}"{other}"' if option.endswith("=") else f"{option} {other}"
            return f"checkpoints/{other} is intact: use {use}"
        return f"checkpoints/{other} is intact (generate and evaluate work with --checkpoint {other})"
    return f"checkpoints/{other} cannot be used either, so no weights of this run are left: train it again"


def load_trained(run_dir: Path, checkpoint: str = "best", device: str | None = None,
                 option: str = "--checkpoint") -> TrainedRun:
    """Load `checkpoints/<checkpoint>` of a run in eval mode on `device` (default: the run's setting).

    A damaged tokenizer or checkpoint is a DamagedFile saying what still works (e.g. the other checkpoint, through
    the command's `option`; "" for a command without one).
    """
    if checkpoint not in CHECKPOINTS:
        raise UserError(f"--checkpoint: must be one of {', '.join(CHECKPOINTS)} (got {checkpoint!r})")
    config = load_run_config(run_dir)
    paths = RunPaths(Path(run_dir))
    try:
        tokenizer = load_tokenizer(paths.tokenizer)
    except DamagedFile as exc:
        raise exc.saying(TOKENIZER_NEEDED) from None
    target = resolve_device(device or config.train.device)
    model = build_model(config.model, tokenizer.get_vocab_size())
    try:
        load_model_weights(paths.root / "checkpoints" / checkpoint, model)
    except DamagedFile as exc:
        raise exc.saying(other_checkpoint(paths.root, checkpoint, option)) from None
    return TrainedRun(paths, config, tokenizer, model.to(target).eval(), target)
