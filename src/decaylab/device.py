"""The device a run uses, its precision context, and the seeds that make its numbers repeat."""

from __future__ import annotations

import random
from contextlib import nullcontext

import numpy as np
import torch

from decaylab.errors import UserError


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when available; asking for CUDA without it is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: 'cuda' was asked for but torch sees no CUDA device (use auto or cpu)")
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    """bf16 autocast when asked for, a no-op context otherwise."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so the same config and seed give the same numbers."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
