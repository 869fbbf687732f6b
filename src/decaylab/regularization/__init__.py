"""Weight decay done right: the decay set, l2/l1 penalties, coupled/decoupled optimizers, and an audit.

Depends only on torch (rich is imported lazily to print an audit).
"""

from .audit import AuditReport, AuditRow, print_audit
from .core import Regularization
from .decay_set import DECAY_SETS, DecayPlan, ParamInfo
from .optim import OPTIMIZERS
from .sgdw import SGDW, sgdw
from .validate import DECAY_SCALINGS, MODES

__all__ = [
    "DECAY_SCALINGS",
    "DECAY_SETS",
    "MODES",
    "OPTIMIZERS",
    "SGDW",
    "AuditReport",
    "AuditRow",
    "DecayPlan",
    "ParamInfo",
    "Regularization",
    "print_audit",
    "sgdw",
]
