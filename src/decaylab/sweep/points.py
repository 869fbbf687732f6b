"""Points of a sweep (mode, λ or its timescale τ, dropout) and the run configuration each one trains with."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import partial
from typing import Any

from decaylab.config import Config, build_config, config_to_dict
from decaylab.errors import UserError
from decaylab.regularization.rules import RULES, check_settings, fit_to_mode
from decaylab.regularization.timescale import lambda_for_tau
from decaylab.sweep.spec import SweepSpec


@dataclass(frozen=True)
class Point:
    """One regularization setting: `mode` none (the λ = 0 baseline) or a registered rule with a strength.

    A point of a τ sweep (`tau`, epochs) trains with `regularization.tau_epochs = tau`; its `lam` is the λ that τ
    gives on the sweep's training split (`with_lambdas`), the one its table row and the final model show.
    """

    mode: str
    lam: float
    dropout: float | None  # None: an objective's own dropout, not swept
    tau: float | None = None

    @property
    def key(self) -> str:
        """Folder-safe name, e.g. `decoupled-0.001-p0.1` (a τ point: `decoupled-tau2-p0.1`; no `-p…` when dropout
        is not swept)."""
        strength = f"{self.lam:g}" if self.tau is None else f"tau{self.tau:g}"
        return f"{self.mode}-{strength}" + ("" if self.dropout is None else f"-p{self.dropout:g}")

    def to_dict(self) -> dict[str, Any]:
        """The fields of a trials.jsonl / table row that identify the point (τ only for a τ point)."""
        return {"lambda": self.lam, **({} if self.tau is None else {"tau": self.tau}), "mode": self.mode,
                "dropout": self.dropout}


def grid_points(spec: SweepSpec, base: Config) -> list[Point]:
    """Every (mode, λ or τ, dropout) of the grid; λ = 0 is one shared `none` point per dropout, not one per mode.

    A τ point's λ is NaN until the sweep knows its data (`with_lambdas`).
    """
    dropouts = spec.dropouts if spec.dropouts is not None else [base.model.dropout]
    points = []
    for dropout in dropouts:
        if 0.0 in spec.lambdas:
            points.append(Point("none", 0.0, dropout))
        for mode in spec.modes:
            if spec.taus is not None:
                points.extend(Point(mode, math.nan, dropout, tau) for tau in spec.taus)
            else:
                points.extend(Point(mode, lam, dropout) for lam in spec.lambdas if lam > 0)
    return points


def point_lambda(base: Config, point: Point, swept_modes: list[str], steps_per_epoch: float) -> float:
    """The λ a τ point's trial derives on a training split of `steps_per_epoch` (the trainer's own arithmetic)."""
    cfg = trial_config(base, point, swept_modes)
    reg = cfg.regularization
    assert reg.tau_epochs is not None
    return lambda_for_tau(reg.tau_epochs, steps_per_epoch, reg.decay_scaling, cfg.train.lr)[0]


def with_lambdas(points: list[Point], base: Config, swept_modes: list[str], steps_per_epoch: float) -> list[Point]:
    """The points with each τ point's λ filled in from the steps per epoch of the sweep's training split."""
    return [point if point.tau is None else dataclasses.replace(
        point, lam=point_lambda(base, point, swept_modes, steps_per_epoch)) for point in points]


def trial_config(base: Config, point: Point, swept_modes: list[str], seed: int | None = None) -> Config:
    """The base config with the point's regularization and dropout (and a repeat's seed); the rest untouched.

    A seed repeat changes `seed` (initial weights, dropout) and keeps the base's data order (`data_seed`).
    """
    return build_config(_trial_raw(base, point, swept_modes, seed), origin=f"sweep point {point.key}")


def _trial_raw(base: Config, point: Point, swept_modes: list[str], seed: int | None = None) -> dict[str, Any]:
    raw = config_to_dict(base)
    if seed is not None:
        raw["data_seed"] = base.order_seed
        raw["seed"] = seed
    apply_point(raw["regularization"], point, swept_modes)
    raw["model"]["dropout"] = point.dropout
    return raw


def apply_point(reg: dict[str, Any], point: Point, swept_modes: list[str]) -> dict[str, Any]:
    """A regularization section (a dict, changed in place) set to the point's mode and strength; returns it."""
    # the swept axis (λ or τ) replaces whichever of the two the base config sets
    for key in ("tau_epochs", "timescale"):
        if key in reg:
            reg[key] = None
    if point.mode == "none":
        # The baseline has no weight decay; it keeps the base's other terms (L1) unless that term is being swept.
        reg.update(mode="none", weight_decay=0.0)
        for name in swept_modes:
            rule = RULES[name]
            if not rule.is_mode:
                reg[rule.strength] = 0.0
    else:
        rule = RULES[point.mode]
        if rule.is_mode:
            reg.update(mode=point.mode)
        else:
            reg.update(mode="none", weight_decay=0.0)
        if point.tau is not None:  # the trial derives its λ from τ on the data it trains on
            reg.update(weight_decay=0.0, tau_epochs=point.tau)
        else:
            reg[rule.strength] = point.lam
    return fit_to_mode(reg)  # a decay scaling or λ schedule only where the point's mode has one


def check_points(base: Config, points: list[Point], swept_modes: list[str]) -> None:
    """Build each distinct mode's optimizer on a toy module, so a contradiction fails before anything is written."""
    import torch
    from torch import nn

    from decaylab.regularization import Regularization

    seen: set[str] = set()
    for point in points:
        if point.mode in seen:
            continue
        seen.add(point.mode)
        raw = _trial_raw(base, point, swept_modes)
        try:
            check_settings(raw["regularization"], raw["train"]["optimizer"])
        except ValueError as exc:
            raise UserError(f"--mode {point.mode}: {exc}") from None
        cfg = trial_config(base, point, swept_modes)
        toy = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
        # `exclude`/`multipliers` regexes name the real model's parameters, which the toy lacks.
        settings = {**cfg.regularization.rule_settings(), "exclude": [], "multipliers": {}}
        try:
            reg = Regularization(**settings)
            kwargs: dict[str, Any] = ({"momentum": cfg.train.momentum} if cfg.train.optimizer == "sgd"
                                      else {"betas": cfg.train.betas})
            reg.optimizer(toy, cfg.train.optimizer, lr=cfg.train.lr, example=partial(toy, torch.zeros(1, 2)),
                          **kwargs)
        except ValueError as exc:
            raise UserError(f"--mode {point.mode}: {exc}") from None
