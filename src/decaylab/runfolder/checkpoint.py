"""Checkpoints: `model.safetensors` + `trainer_state.pt` (weights_only), swapped in atomically as a folder.

Every read is validated: a truncated, empty or overwritten file is a DamagedFile naming it and what is wrong,
never a library traceback; `intact_checkpoints` says which checkpoints of a run can still be used.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from decaylab.errors import DamagedFile, UserError, WriteError
from decaylab.files import atomic_write_bytes, disk_full, os_reason

MODEL_FILE, STATE_FILE = "model.safetensors", "trainer_state.pt"
STATE_KEYS = ("optimizer", "scheduler", "progress", "rng_torch")
_MAX_HEADER = 100 * 2**20  # safetensors refuses headers over 100 MB: a larger length field is not a header


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


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write a safetensors file atomically (serialized here, so a full disk is an OSError we see, not Rust's)."""
    atomic_write_bytes(path, save(tensors))


def write_trainer_state(path: Path, state: dict[str, Any]) -> None:
    """Write a trainer state atomically (torch serializes into memory; the write is ours)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def save_checkpoint(folder: Path, model: nn.Module | dict[str, torch.Tensor], state: dict[str, Any] | None) -> None:
    """Write a checkpoint (a model, or its `model_tensors`) into `folder`; a kill leaves the old or the new whole.

    A failed write (a full disk) raises WriteError naming the file and leaves `folder` as it was; the half-written
    staging folder is removed.
    """
    folder = Path(folder)
    tensors = model_tensors(model) if isinstance(model, nn.Module) else model
    staging = folder.with_name(folder.name + ".new")
    target = folder / MODEL_FILE
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        write_tensors(staging / MODEL_FILE, tensors)
        if state is not None:
            target = folder / STATE_FILE
            write_trainer_state(staging / STATE_FILE, state)
        target = folder
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            folder.rename(old)
        staging.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, WriteError) and isinstance(exc.__cause__, OSError):  # name the file, not its staging
            raise WriteError(f"could not write {target} ({os_reason(exc.__cause__)})", full=exc.full
                             ) from exc.__cause__
        if isinstance(exc, OSError):
            raise WriteError(f"could not write {target} ({os_reason(exc)})", full=disk_full(exc)) from exc
        raise


def resolve_checkpoint(folder: Path) -> Path:
    """The complete checkpoint folder to read: `folder`, or its `.old` copy if a swap was interrupted."""
    for candidate in (folder, folder.with_name(folder.name + ".old")):
        if (candidate / MODEL_FILE).is_file():
            return candidate
    raise UserError(f"{folder}: no checkpoint found (expected {MODEL_FILE})")


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file (`truncated`, `empty`, …), from its header and size; None if whole."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(8)
            if size == 0:
                return "empty"
            if len(head) < 8:
                return "truncated"
            length = int.from_bytes(head, "little")
            if length > _MAX_HEADER:
                return "not a safetensors file: random or overwritten bytes"
            if 8 + length > size:
                return "truncated"
            raw = handle.read(length)
    except OSError as exc:
        return f"unreadable: {os_reason(exc)}"
    try:
        header = json.loads(raw.decode("utf-8"))
        ends = [int(entry["data_offsets"][1]) for name, entry in header.items() if name != "__metadata__"]
    except (UnicodeDecodeError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return "not a safetensors file: its header is not valid, random or overwritten bytes"
    data = size - 8 - length
    if max(ends, default=0) > data:
        return "truncated"
    if max(ends, default=0) < data:
        return f"{data - max(ends, default=0)} bytes longer than its header says: overwritten"
    return None


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, or DamagedFile saying what is wrong with it."""
    path = Path(path)
    problem = safetensors_problem(path)
    if problem is not None:
        raise DamagedFile(path, problem)
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors' SafetensorError derives from Exception only
        raise DamagedFile(path, f"unreadable: {_first_line(exc)}") from None


def load_model_weights(folder: Path, model: nn.Module) -> None:
    """Load safetensors weights into `model` (tied weights are restored through their shared module)."""
    path = resolve_checkpoint(folder) / MODEL_FILE
    tensors = read_tensors(path)
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:  # shapes differ: the tokenizer or the config is not the one it was trained with
        detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), _first_line(exc))
        raise UserError(f"{path}: does not match the run's tokenizer.json and config.yaml ({detail.rstrip('.')}); "
                        "one of them was changed after training") from None
    really_missing = sorted(set(missing) - _tied_aliases(model))
    if really_missing or unexpected:
        raise UserError(f"{folder}: checkpoint does not match the model (missing {really_missing[:3]}, "
                        f"unexpected {unexpected[:3]})")


def _tied_aliases(model: nn.Module) -> set[str]:
    """Second names of tensors already stored under another name (e.g. a tied output projection)."""
    kept = {name for name, _ in model.named_parameters()}
    return {name for name, _ in model.named_parameters(remove_duplicate=False)} - kept


def read_trainer_state(path: Path) -> dict[str, Any]:
    """A trainer_state.pt (loaded with weights_only=True), or DamagedFile saying what is wrong with it."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise DamagedFile(path, f"unreadable: {os_reason(exc)}") from None
    if size == 0:
        raise DamagedFile(path, "empty")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive whose directory is at the very end
        raise DamagedFile(path, "truncated" if magic == b"PK\x03\x04"
                          else "not a torch checkpoint: random or overwritten bytes")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        raise DamagedFile(path, f"holds objects that weights_only=True refuses to load: {_first_line(exc)}") from None
    except Exception as exc:  # torch reports a damaged archive as RuntimeError, EOFError, …
        raise DamagedFile(path, f"unreadable: {_first_line(exc)}") from None
    missing = [key for key in STATE_KEYS if not isinstance(state, dict) or key not in state]
    if missing or not isinstance(state["progress"], dict) or not isinstance(state["progress"].get("step"), int):
        raise DamagedFile(path, f"not a decaylab trainer state (no {(missing or ['progress.step'])[0]!r})")
    return state


def load_trainer_state(folder: Path) -> dict[str, Any]:
    """The optimizer/scheduler/RNG/progress state, loaded with weights_only=True."""
    path = resolve_checkpoint(folder) / STATE_FILE
    if not path.is_file():
        raise UserError(f"{path.parent}: checkpoint has no {STATE_FILE}; cannot resume from it")
    return read_trainer_state(path)


def checkpoint_problem(folder: Path, with_state: bool = False) -> str | None:
    """Why the checkpoint in `folder` cannot be used (`missing`, or `model.safetensors is damaged (…)`); None if
    it is whole (its trainer state too when `with_state`)."""
    try:
        resolved = resolve_checkpoint(folder)
    except UserError:
        return "missing"
    problem = safetensors_problem(resolved / MODEL_FILE)
    if problem is not None:
        return f"{MODEL_FILE} is damaged ({problem})"
    if with_state:
        try:
            load_trainer_state(resolved)
        except DamagedFile as exc:
            return f"{STATE_FILE} is damaged ({exc.reason})"
        except UserError:
            return f"no {STATE_FILE}"
    return None


def intact_checkpoints(root: Path) -> str:
    """Which checkpoints of the run folder `root` are whole, in words (with the step of `last`)."""
    checkpoints = Path(root) / "checkpoints"
    whole = []
    if checkpoint_problem(checkpoints / "last", with_state=True) is None:
        step = load_trainer_state(checkpoints / "last")["progress"]["step"]
        whole.append(f"checkpoints/last (step {step})")
    if checkpoint_problem(checkpoints / "best") is None:
        whole.append("checkpoints/best")
    if not whole:
        written = any((checkpoints / name).exists() for name in ("last", "last.old", "best", "best.old"))
        return "no checkpoint is intact" if written else "no checkpoint was written yet"
    return " and ".join(whole) + (" are intact" if len(whole) > 1 else " is intact")


def _first_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= 200 else text[:197] + "..."
