"""The run folder (DESIGN.md §5): paths, the resolved config, and meta.json (versions, seed, data)."""

from __future__ import annotations

import functools
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from decaylab import __version__
from decaylab.config import Config, build_config, dump_yaml, load_yaml
from decaylab.errors import UserError
from decaylab.files import atomic_write_json, atomic_write_text, not_found


@dataclass(frozen=True)
class RunPaths:
    """Every file a run writes, relative to its folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def meta(self) -> Path:
        return self.root / "meta.json"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def last(self) -> Path:
        return self.root / "checkpoints" / "last"

    @property
    def best(self) -> Path:
        return self.root / "checkpoints" / "best"

    @property
    def samples(self) -> Path:
        return self.root / "samples.jsonl"

    @property
    def eval(self) -> Path:
        return self.root / "eval.json"

    def holds_run(self) -> bool:
        """True when the folder holds (part of) a run: its config, metrics or checkpoints."""
        return any((self.root / name).exists() for name in RUN_MARKERS)


# What a run and its report write into a run folder (files and folders); `--overwrite` removes these and only these.
RUN_ENTRIES = ("config.yaml", "meta.json", "tokenizer.json", "metrics.jsonl", "checkpoints", "eval.json",
               "report.html", "plots", "samples.jsonl", "tensorboard")
RUN_MARKERS = ("config.yaml", "metrics.jsonl", "checkpoints")  # any of them: the folder holds a run
SWEEP_RECORD = "sweep.yaml"  # the file that makes a folder a sweep folder (sweep/store.py)


def clear_run(paths: RunPaths) -> None:
    """Remove the run's files (RUN_ENTRIES and their leftover temp files); a user's own files stay."""
    for name in RUN_ENTRIES:
        entry = paths.root / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif entry.exists() or entry.is_symlink():
            entry.unlink()
        for tmp in paths.root.glob(f".{name}.*.tmp"):  # an atomic write cut off by a kill
            tmp.unlink(missing_ok=True)


def start_new_run(paths: RunPaths, overwrite: bool) -> None:
    """Before a new run: refuse a folder that holds a sweep, or a run (unless `overwrite`: its files are removed).

    A folder without a run's config, metrics or checkpoints is left as it is: a `plots/` there may be the user's.
    """
    if (paths.root / SWEEP_RECORD).is_file():
        raise UserError(f"{paths.root} holds a sweep ({SWEEP_RECORD}); a run needs a folder of its own")
    if not paths.holds_run():
        return
    if not overwrite:
        raise UserError(f"{paths.root} already holds a run; resume it with `decaylab train --resume {paths.root}`, "
                        "or pass --overwrite to replace it")
    clear_run(paths)


def versions() -> dict[str, str]:
    """Versions of Python and of every library that can change the numbers."""
    return dict(_versions())


@functools.cache  # a process's versions do not change; reading package metadata costs ~17 ms a run
def _versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "decaylab": __version__, "torch": torch.__version__}
    for package in ("tokenizers", "sacrebleu", "safetensors", "numpy", "pydantic"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def build_meta(config: Config, fingerprint: str, sizes: dict[str, int], origin: str, device: torch.device,
               n_params: int) -> dict[str, Any]:
    """What meta.json records so that the run can be reproduced and compared."""
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": sys.argv,
        "seed": config.seed,
        "data_seed": config.order_seed,
        "versions": versions(),
        "data": {"origin": origin, "fingerprint": fingerprint, "sizes": sizes},
        "host": {"node": platform.node(), "machine": platform.machine(), "system": platform.system(),
                 "cpu_threads": torch.get_num_threads()},
        "device": str(device),
        "parameters": n_params,
    }


def write_run_header(paths: RunPaths, config: Config, meta: dict[str, Any]) -> None:
    """Write config.yaml and meta.json atomically."""
    atomic_write_text(paths.config, dump_yaml(config))
    atomic_write_json(paths.meta, meta)


def load_run_config(run: Path) -> Config:
    """The resolved config of an existing run folder, or a clear error if it is not one."""
    paths = RunPaths(Path(run))
    if not paths.root.is_dir():
        raise UserError(not_found(Path(run), "run folder"))
    if not paths.config.is_file():
        raise UserError(f"{run}: not a decaylab run folder (no config.yaml)")
    return build_config(load_yaml(paths.config), origin=str(paths.config))
