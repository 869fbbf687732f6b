"""Checkpoints: `model.safetensors` + `trainer_state.pt` (weights_only), swapped in atomically as a folder."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from decaylab.errors import UserError
from decaylab.files import atomic_write

MODEL_FILE, STATE_FILE = "model.safetensors", "trainer_state.pt"


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with tied weights stored once (safetensors refuses shared storage)."""
    seen: set[int] = set()
    tensors = {}
    for name, tensor in model.state_dict(keep_vars=False).items():
        key = tensor.data_ptr()
        if key in seen and tensor.numel() > 0:
            continue
        seen.add(key)
        tensors[name] = tensor.detach().contiguous().cpu()
    return tensors


def save_checkpoint(folder: Path, model: nn.Module | dict[str, torch.Tensor], state: dict[str, Any] | None) -> None:
    """Write a checkpoint (a model, or its `model_tensors`) into `folder`; a kill leaves the old or the new whole."""
    folder = Path(folder)
    tensors = model_tensors(model) if isinstance(model, nn.Module) else model
    staging = folder.with_name(folder.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    atomic_write(staging / MODEL_FILE, lambda tmp: save_file(tensors, str(tmp)))
    if state is not None:
        atomic_write(staging / STATE_FILE, lambda tmp: torch.save(state, tmp))
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    staging.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def resolve_checkpoint(folder: Path) -> Path:
    """The complete checkpoint folder to read: `folder`, or its `.old` copy if a swap was interrupted."""
    for candidate in (folder, folder.with_name(folder.name + ".old")):
        if (candidate / MODEL_FILE).is_file():
            return candidate
    raise UserError(f"{folder}: no checkpoint found (expected {MODEL_FILE})")


def load_model_weights(folder: Path, model: nn.Module) -> None:
    """Load safetensors weights into `model` (tied weights are restored through their shared module)."""
    tensors = load_file(str(resolve_checkpoint(folder) / MODEL_FILE))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    really_missing = sorted(set(missing) - _tied_aliases(model))
    if really_missing or unexpected:
        raise UserError(f"{folder}: checkpoint does not match the model (missing {really_missing[:3]}, "
                        f"unexpected {unexpected[:3]})")


def _tied_aliases(model: nn.Module) -> set[str]:
    """Second names of tensors already stored under another name (e.g. a tied output projection)."""
    kept = {name for name, _ in model.named_parameters()}
    return {name for name, _ in model.named_parameters(remove_duplicate=False)} - kept


def load_trainer_state(folder: Path) -> dict[str, Any]:
    """The optimizer/scheduler/RNG/progress state, loaded with weights_only=True."""
    path = resolve_checkpoint(folder) / STATE_FILE
    if not path.is_file():
        raise UserError(f"{path.parent}: checkpoint has no {STATE_FILE}; cannot resume from it")
    return torch.load(path, weights_only=True, map_location="cpu")
