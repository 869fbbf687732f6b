"""Learning-rate schedules as multipliers of the peak lr: linear warmup, then constant, linear or cosine."""

from __future__ import annotations

import math
from collections.abc import Callable


def lr_multiplier(kind: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """s(step) in [0, 1] for torch's LambdaLR; step counts optimizer steps already taken."""

    def multiplier(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier
