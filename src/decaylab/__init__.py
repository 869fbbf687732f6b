"""decaylab: weight-decay regularization done right for text-generation models.

The Python face (docs/python.md): `decaylab.load(path)` opens a trained run, `decaylab.sweep(...)` chooses λ
(for decaylab's own models or over your training function, which receives a `decaylab.Trial`).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# The public names, handed out on first use by module name: `import decaylab` stays light, and the package root
# (imported by every layer, e.g. for __version__) names no higher layer in an import statement. Nothing inside the
# package reaches these through the root (tests/test_layers.py checks both).
PUBLIC = {"load": "decaylab.run", "Run": "decaylab.run", "sweep": "decaylab.sweep",
          "Trial": "decaylab.sweep.objective", "SweepResult": "decaylab.sweep.api"}


def __getattr__(name: str) -> Any:
    home = PUBLIC.get(name)
    if home is None:
        raise AttributeError(f"module 'decaylab' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(home)
    return module if name == "sweep" else getattr(module, name)  # the sweep package is callable: sweep(...)


def __dir__() -> list[str]:
    return sorted([*globals(), *PUBLIC])
