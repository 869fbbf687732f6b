"""Choosing λ on evidence: grid, k-fold CV, Optuna (TPE + pruning) and successive halving sweeps.

`from decaylab.sweep import sweep` runs one and returns a `SweepResult` (`.table`, `.best`, `.final`).
The package imports nothing heavy until a sweep runs, so `decaylab --help` stays fast.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SweepResult", "sweep"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from decaylab.sweep import api

        return getattr(api, name)
    raise AttributeError(f"module 'decaylab.sweep' has no attribute {name!r}")
