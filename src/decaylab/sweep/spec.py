"""What a sweep varies and how it chooses: λ grids (`log:LO:HI:N` or a list) or grids of λ's timescale τ, modes,
dropouts, and validation."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from decaylab.errors import UserError
from decaylab.regularization.rules import SWEEPABLE

STRATEGIES = ("grid", "cv", "optuna", "halving")
SEEDED_STRATEGIES = ("grid", "cv")  # those that can repeat every point with several seeds
# Every registered rule with a strength; a rule that is not a mode (l1) sweeps its own field with mode none
# (see points.trial_config).
MODES = SWEEPABLE
METRICS = ("loss", "bleu", "chrf")
RULES = ("min", "1se")
PRUNERS = ("median", "halving", "none")
DEFAULT_LAMBDAS = "log:1e-5:1e-1:9"  # the seed's "usually between 1e-5 and 1e-1"


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{what}: {text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise UserError(f"{what}: {text.strip()!r} is not a finite number")
    return value


def _parse_grid(text: str, option: str, examples: str, log_note: str) -> list[float]:
    """The values of `log:LO:HI:N` (log-spaced, both ends included) or `a,b,c`, as given (unsorted)."""
    text = (text or "").strip()
    if not text:
        raise UserError(f"{option}: empty list (give e.g. {examples})")
    if text.startswith("log:"):
        parts = text.split(":")
        example = examples.split(" or ")[0]
        if len(parts) != 4:
            raise UserError(f"{option} {text!r}: expected log:LO:HI:N, e.g. {example}")
        lo, hi = _number(parts[1], f"{option} LO"), _number(parts[2], f"{option} HI")
        try:
            n = int(parts[3])
        except ValueError:
            raise UserError(f"{option} {text!r}: N must be a whole number (got {parts[3]!r})") from None
        if lo <= 0 or hi <= 0:
            raise UserError(f"{option} {text!r}: LO and HI of a log grid must be > 0{log_note}")
        if lo > hi:
            raise UserError(f"{option} {text!r}: LO must not exceed HI")
        if n < 1 or (n == 1 and lo != hi):
            raise UserError(f"{option} {text!r}: N must be ≥ 2 (or 1 with LO = HI)")
        step = (math.log10(hi) - math.log10(lo)) / max(1, n - 1)
        # Round to 6 significant digits so 1e-3 prints as 0.001, not 0.0010000000000000002.
        return [float(f"{10 ** (math.log10(lo) + i * step):.6g}") for i in range(n)]
    items = [item for item in text.split(",") if item.strip()]
    if not items:
        raise UserError(f"{option}: empty list (give e.g. {examples})")
    return [_number(item, option) for item in items]


def parse_lambdas(text: str, add_zero: bool = True) -> list[float]:
    """`log:LO:HI:N` (log-spaced, both ends included) or `a,b,c`; sorted, deduplicated, 0 added unless told."""
    values = _parse_grid(text, "--lambdas", "log:1e-5:1e-1:9 or 0,1e-4,1e-3", " (λ = 0 is added by itself)")
    negative = [v for v in values if v < 0]
    if negative:
        raise UserError(f"--lambdas: λ must be ≥ 0 (got {negative[0]:g})")
    if add_zero:
        values.append(0.0)
    return sorted(set(values))


def parse_taus(text: str) -> list[float]:
    """EMA timescales in epochs, `log:LO:HI:N` or `a,b,c`, each > 0; sorted, deduplicated (the λ = 0 baseline,
    τ = ∞, is the sweep's `zero`, not a value here)."""
    values = _parse_grid(text, "--taus", "log:0.5:8:5 or 1,2,4", " (λ = 0, τ = ∞, is added by itself)")
    small = [v for v in values if v <= 0]
    if small:
        raise UserError(f"--taus: τ must be > 0 epochs (got {small[0]:g}; λ = 0, τ = ∞, is added by itself)")
    return sorted(set(values))


def parse_choices(text: str | Iterable[str], allowed: tuple[str, ...], what: str) -> list[str]:
    """A comma list (or list) of names, each one of `allowed`, order kept, duplicates dropped."""
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [str(item).strip().lower() for item in items if str(item).strip()]
    if not names:
        raise UserError(f"{what}: empty (allowed: {', '.join(allowed)})")
    for name in names:
        if name not in allowed:
            raise UserError(f"{what}: {name!r} is not one of {', '.join(allowed)}")
    return list(dict.fromkeys(names))


def parse_dropouts(text: str | Iterable[float] | None) -> list[float] | None:
    """`0,0.1,0.3` → [0.0, 0.1, 0.3]; None keeps the config's dropout."""
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    values = [_number(str(item), "--dropout") for item in items if str(item).strip()]
    if not values:
        raise UserError("--dropout: empty list (give e.g. 0,0.1,0.3)")
    for value in values:
        if not 0.0 <= value < 1.0:
            raise UserError(f"--dropout: each value must be in [0, 1) (got {value:g})")
    return sorted(set(values))


@dataclass
class SweepSpec:
    """Everything that decides which trials a sweep runs and how it picks; recorded in sweep.yaml."""

    strategy: str = "grid"
    lambdas: list[float] = field(default_factory=list)  # a τ sweep: [0.0] (the baseline) or []
    modes: list[str] = field(default_factory=lambda: ["decoupled"])
    dropouts: list[float] | None = None
    rule: str = "min"
    metric: str = "loss"
    # Options of one strategy only; None under the others.
    folds: int | None = None
    trials: int | None = None
    pruner: str | None = None
    storage: str | None = None  # optuna; None = the SQLite file optuna.db inside the sweep folder
    study: str | None = None  # optuna; None until the sweep folder is known (then its name)
    eta: int | None = None
    min_epochs: int | None = None
    zero: bool = True
    # grid and cv: train every point (and fold) with this many seeds (seed, seed+1, ...: initial weights and
    # dropout; the data order stays the base seed's); None is one seed, the base config's
    seeds: int | None = None
    # a sweep of λ's EMA timescale (--taus): τ in epochs; each point's λ is derived from it on the sweep's data
    taus: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for sweep.yaml."""
        return asdict(self)

    @property
    def lambda_range(self) -> tuple[float, float]:
        """[lo, hi] of the positive λ values (the Optuna search interval)."""
        positive = [v for v in self.lambdas if v > 0]
        return (min(positive), max(positive))

    @property
    def tau_range(self) -> tuple[float, float]:
        """[lo, hi] of the τ values (the Optuna search interval of a τ sweep)."""
        assert self.taus
        return (min(self.taus), max(self.taus))


def build_spec(strategy: str = "grid", lambdas: str | Iterable[float] | None = None,
               modes: str | Iterable[str] | None = None, dropouts: str | Iterable[float] | None = None,
               folds: int | None = None, rule: str = "min", metric: str = "loss", trials: int | None = None,
               eta: int | None = None, min_epochs: int | None = None, pruner: str | None = None,
               storage: str | None = None, study: str | None = None, join: bool = False, no_zero: bool = False,
               default_mode: str = "decoupled", seeds: int | None = None,
               taus: str | Iterable[float] | None = None) -> SweepSpec:
    """Parse and check every sweep option; a bad one is a UserError naming the option and what is allowed."""
    strategy = parse_choices(strategy, STRATEGIES, "--strategy")[0] if strategy else "grid"
    rule = parse_choices(rule or "min", RULES, "--rule")[0]
    metric = parse_choices(metric or "loss", METRICS, "--metric")[0]
    _only_for(strategy, "cv", folds=folds)
    _only_for(strategy, "optuna", trials=trials, storage=storage, study=study, join=join or None, pruner=pruner)
    _only_for(strategy, "halving", eta=eta, min_epochs=min_epochs)
    tau_values = None
    if taus is not None:
        if lambdas is not None:
            raise UserError("--taus and --lambdas: give one (--taus sweeps λ's timescale τ in epochs, --lambdas λ)")
        tau_values = parse_taus(taus if isinstance(taus, str) else ",".join(repr(float(v)) for v in taus))
        values = [] if no_zero else [0.0]  # the baseline (τ = ∞) is the one λ a τ sweep names
    else:
        if lambdas is None:
            lambdas = DEFAULT_LAMBDAS
        if isinstance(lambdas, str):
            values = parse_lambdas(lambdas, add_zero=not no_zero)
        else:
            values = parse_lambdas(",".join(repr(float(v)) for v in lambdas), add_zero=not no_zero)
    spec = SweepSpec(strategy=strategy, lambdas=values,
                     modes=parse_choices(modes if modes is not None else default_mode, MODES, "--mode"),
                     dropouts=parse_dropouts(dropouts), rule=rule, metric=metric, zero=not no_zero, taus=tau_values)
    if seeds is not None:
        if strategy not in SEEDED_STRATEGIES:
            raise UserError(f"--seeds: only applies to --strategy {' or '.join(SEEDED_STRATEGIES)} (this sweep is "
                            f"--strategy {strategy}, which compares points after fewer epochs or one by one)")
        if seeds < 1:
            raise UserError(f"--seeds: must be at least 1 (got {seeds})")
        spec.seeds = seeds if seeds > 1 else None
    if strategy == "cv":
        spec.folds = 5 if folds is None else folds
        if spec.folds < 2:
            raise UserError(f"--folds: must be at least 2 (got {spec.folds})")
    if strategy == "optuna":
        spec.trials = 30 if trials is None else trials
        if spec.trials < 1:
            raise UserError(f"--trials: must be at least 1 (got {spec.trials})")
        spec.pruner = parse_choices(pruner or "median", PRUNERS, "--pruner")[0]
        spec.storage = storage
        spec.study = study
        if tau_values is None and not any(v > 0 for v in values):
            raise UserError("--lambdas: Optuna needs a positive range, e.g. log:1e-5:1e-1:9")
    if strategy == "halving":
        spec.eta = 3 if eta is None else eta
        if spec.eta < 2:
            raise UserError(f"--eta: must be at least 2 (got {spec.eta})")
        if min_epochs is not None and min_epochs < 1:
            raise UserError(f"--min-epochs: must be at least 1 (got {min_epochs})")
        spec.min_epochs = min_epochs
    return spec


def _only_for(strategy: str, wanted: str, **given: object) -> None:
    """An option of another strategy is a mistake worth saying, not something to ignore silently."""
    for name, value in given.items():
        if value is not None and strategy != wanted:
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag}: only applies to --strategy {wanted} (this sweep is --strategy {strategy})")
