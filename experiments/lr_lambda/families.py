"""The optimizer-and-decay combinations compared, and what the timescale view predicts for each."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """One combination: its optimizer, decay rule and decay scaling, the λ grid it is swept over, and the slope of
    log λ* against log η that the timescale view predicts (None: it makes no prediction)."""

    key: str
    label: str
    optimizer: str
    mode: str
    scaling: str
    lambdas: tuple[float, ...]
    prediction: float | None
    why: str
    zero: bool = True  # sweep λ = 0 too (False where a sibling family's λ = 0 is the very same run)
    lrs: str = "adam"  # which learning-rate axis (settings["lrs"][lrs])
    view_of: str | None = None  # not trained: `view_of`'s runs with λ re-expressed (λ·η_max), see families()

    def overrides(self, lr: float) -> list[str]:
        """The config overrides of this family at learning rate `lr`."""
        return [f"train.optimizer={self.optimizer}", f"train.lr={lr}", f"regularization.mode={self.mode}",
                f"regularization.decay_scaling={self.scaling}"]


def log_grid(lo: float, hi: float, per_decade: int = 2) -> tuple[float, ...]:
    """lo, lo·10^(1/per_decade), …, hi (both ends on the grid), rounded to 6 significant digits."""
    import math

    n = round(math.log10(hi / lo) * per_decade)
    return tuple(float(f"{lo * 10 ** (i / per_decade):.6g}") for i in range(n + 1))


def families(grids: dict[str, tuple[float, float]]) -> list[Family]:
    """The five combinations, each over the λ range `grids[key]` (two points per decade).

    AdamW × schedule is not trained: its per-step decay s_t·λ (s_t = η_t/η_max) equals torch AdamW's η_t·λ' with
    λ' = λ/η_max under every schedule, so its runs are AdamW × η's with λ = η_max·λ' (the same trajectories; the
    first version of this experiment trained both and got the same losses). The two predictions (slope −1 and 0)
    are therefore one claim, "the best per-step decay does not depend on η", read in two parameterizations.
    A family without a range in `grids` gets an empty grid (an experiment that leaves it out)."""
    def log_grid_of(key: str) -> tuple[float, ...]:
        return log_grid(*grids[key]) if key in grids else ()

    return [
        Family("adam_l2", "Adam + L2 (coupled)", "adam", "coupled", "lr", log_grid_of("adam_l2"), None,
               "no prediction: Adam divides λw by √v̂, so the decay's timescale is not 1/(ηλ)"),
        Family("adamw_lr", "AdamW, decay × η (torch)", "adam", "decoupled", "lr", log_grid_of("adamw_lr"),
               -1.0, "τ_iter = 1/(ηλ) fixed at its best: λ* ∝ 1/η", zero=False),
        Family("adamw_schedule", "AdamW, decay × schedule (L&H)", "adam", "decoupled", "schedule", (), 0.0,
               "τ_iter = 1/λ does not involve η: λ* independent of η", zero=False, view_of="adamw_lr"),
        Family("sgd_l2", "SGD + L2 (coupled)", "sgd", "coupled", "lr", log_grid_of("sgd_l2"), -1.0,
               "λw passes through the same η (and momentum) as the gradient: τ ∝ 1/(ηλ), λ* ∝ 1/η", lrs="sgd"),
        Family("sgdw_schedule", "SGDW, decay × schedule (L&H)", "sgd", "decoupled", "schedule",
               log_grid_of("sgdw_schedule"), 0.0, "τ_iter = 1/λ: λ* independent of η", zero=False,
               lrs="sgd"),
    ]
