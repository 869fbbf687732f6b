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
from decaylab.errors import UserError
from decaylab.models import build_model
from decaylab.runfolder.checkpoint import load_model_weights
from decaylab.runfolder.layout import RunPaths, load_run_config

CHECKPOINTS = ("best", "last")


@dataclass
class TrainedRun:
    """A run folder's model, ready for inference."""

    paths: RunPaths
    config: Config
    tokenizer: Tokenizer
    model: nn.Module
    device: torch.device


def load_trained(run_dir: Path, checkpoint: str = "best", device: str | None = None) -> TrainedRun:
    """Load `checkpoints/<checkpoint>` of a run in eval mode on `device` (default: the run's setting)."""
    if checkpoint not in CHECKPOINTS:
        raise UserError(f"--checkpoint: must be one of {', '.join(CHECKPOINTS)} (got {checkpoint!r})")
    config = load_run_config(run_dir)
    paths = RunPaths(Path(run_dir))
    tokenizer = load_tokenizer(paths.tokenizer)
    target = resolve_device(device or config.train.device)
    model = build_model(config.model, tokenizer.get_vocab_size())
    load_model_weights(paths.root / "checkpoints" / checkpoint, model)
    return TrainedRun(paths, config, tokenizer, model.to(target).eval(), target)
