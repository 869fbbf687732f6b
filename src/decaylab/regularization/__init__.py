"""Weight decay done right: the rule registry, the decay set, penalties, optimizers, stacked kernels and an audit.

Depends only on torch (rich is imported lazily to print an audit). The names below load on first use, so that
reading the registry (`decaylab.regularization.rules`: config validation, the CLI's help) imports no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "AuditReport": "audit", "AuditRow": "audit", "print_audit": "audit",
    "ComparisonRow": "audit", "DecaySetComparison": "audit", "compare_decay_sets": "audit",
    "Regularization": "core",
    "DecayPlan": "decay_set", "ParamInfo": "decay_set",
    "ReplicaDecay": "replicas", "UnsupportedRule": "replicas",
    "DECAY_MODES": "rules", "DECAY_SCALINGS": "rules", "DECAY_SETS": "rules", "MODES": "rules", "OPTIMIZERS": "rules",
    "DECAY_SET_RULES": "rules", "DecaySet": "rules", "decay_set_names": "rules",
    "RULES": "rules", "SWEEPABLE": "rules", "Acts": "rules", "Rule": "rules", "get_rule": "rules",
    "SGDW": "decoupled_sgd", "sgdw": "decoupled_sgd",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{home}", __name__), name)
