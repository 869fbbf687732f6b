"""Choosing λ on evidence: grid, k-fold CV, Optuna (TPE + pruning) and successive halving sweeps.

`from decaylab.sweep import sweep` runs one and returns a `SweepResult` (`.table`, `.best`, `.final`); the module
itself is callable too, so `decaylab.sweep(objective=fn, ...)` runs a sweep over a user's training function
(`Trial` is what that function receives; sweep/objective.py). The package imports nothing heavy until a sweep
runs, so `decaylab --help` stays fast.
"""

from __future__ import annotations

import sys
import types
from typing import Any

__all__ = ["SweepResult", "Trial", "sweep"]


def __getattr__(name: str) -> Any:
    if name in ("SweepResult", "sweep"):
        from decaylab.sweep import api

        return getattr(api, name)
    if name == "Trial":
        from decaylab.sweep import objective

        return objective.Trial
    raise AttributeError(f"module 'decaylab.sweep' has no attribute {name!r}")


class _CallableModule(types.ModuleType):
    """`decaylab.sweep` is both this package and the function: `decaylab.sweep(...)` runs `sweep.api.sweep`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from decaylab.sweep.api import sweep

        return sweep(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
