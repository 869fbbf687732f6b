"""Read a run folder or a sweep folder into plain data for the plots and the page (no torch, no matplotlib)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from decaylab.errors import DamagedFile, UserError
from decaylab.files import read_json_object, read_jsonl

# What still works when an optional file of a run is damaged
OPTIONAL = ("the checkpoints are not affected; remove the file and the report leaves out {what}")

# Per-trial values the report aggregates over folds: name -> how to get it from a trials.jsonl row.
# `train_loss` is the eval-mode training loss at the best-val-loss evaluation (val loss − gap).
AGGREGATED = ("best_val_loss", "train_loss", "bleu", "chrf", "gap")
METRIC_FIELDS = {"loss": "best_val_loss", "bleu": "bleu", "chrf": "chrf"}
HIGHER_IS_BETTER = {"bleu", "chrf"}


def _json(path: Path, still: str) -> dict[str, Any] | None:
    """A JSON file's object, or None when missing; a damaged one is a DamagedFile saying what still works."""
    try:
        return read_json_object(path)
    except DamagedFile as exc:
        raise exc.saying(still) from None


def _yaml(path: Path) -> dict[str, Any] | None:
    """A YAML file's mapping, or None when missing or unreadable."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def finite(value: Any) -> bool:
    """True for a real, finite number (not bool, not None, not NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def mean_se(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and standard error (sample std / √n); (None, None) for no values, SE None for one."""
    n = len(values)
    if n == 0:
        return None, None
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


@dataclass
class RunData:
    """One run folder: its config, meta, metric history and eval.json."""

    root: Path
    config: dict[str, Any]
    meta: dict[str, Any]
    history: list[dict[str, Any]]
    eval: dict[str, Any] | None = None

    @property
    def best(self) -> dict[str, Any] | None:
        """The evaluation with the lowest validation loss (the `best` checkpoint)."""
        rows = [r for r in self.history if finite(r.get("val_loss"))]
        return min(rows, key=lambda r: r["val_loss"]) if rows else None

    @property
    def regularization(self) -> dict[str, Any]:
        """The run's regularization section."""
        return dict(self.config.get("regularization") or {})

    @property
    def trained_by(self) -> str | None:
        """What trained this run outside decaylab's trainer (an objective `module:function`, `transformers.Trainer`
        through its callback), else None."""
        return trained_by(self.config)

    def checkpoint(self, name: str = "best") -> Path | None:
        """`checkpoints/<name>/model.safetensors` when present (else the other checkpoint)."""
        for which in (name, "last" if name == "best" else "best"):
            path = self.root / "checkpoints" / which / "model.safetensors"
            if path.is_file():
                return path
        return None


def trained_by(config: dict[str, Any] | None) -> str | None:
    """What a run folder's config.yaml says trained it outside decaylab's trainer: its `objective` (a sweep over a
    user's function, sweep/objective.py) or `trainer` (the Hugging Face callback); None for decaylab's own runs."""
    name = (config or {}).get("objective") or (config or {}).get("trainer")
    return str(name) if name else None


def run_trained_by(path: Path) -> str | None:
    """`trained_by` of the run folder `path` (None: decaylab's own trainer, or no run)."""
    return trained_by(_yaml(Path(path) / "config.yaml"))


def is_run(path: Path) -> bool:
    """True when `path` is a run folder (it has config.yaml)."""
    return (Path(path) / "config.yaml").is_file()


def is_sweep(path: Path) -> bool:
    """True when `path` is a sweep folder (it has sweep.yaml)."""
    return (Path(path) / "sweep.yaml").is_file()


def load_run(path: Path) -> RunData:
    """Read a run folder; a missing file is an empty value, not an error (a run may still be training)."""
    root = Path(path)
    if not is_run(root):
        raise UserError(f"{root}: not a decaylab run folder (no config.yaml)")
    config = _yaml(root / "config.yaml")
    if config is None:
        raise UserError(f"{root / 'config.yaml'}: not valid YAML")
    try:
        history = read_jsonl(root / "metrics.jsonl")
    except DamagedFile as exc:
        raise exc.saying("the report needs its rows; the checkpoints are not affected: generate and evaluate "
                         "still work") from None
    history.sort(key=lambda r: (r.get("step") or 0))
    return RunData(root, config, _json(root / "meta.json", OPTIONAL.format(what="the run's provenance")) or {},
                   history, _json(root / "eval.json", OPTIONAL.format(what="the `evaluate` results")))


@dataclass
class Point:
    """One swept setting (mode, λ, dropout) with its trials and fold statistics."""

    mode: str
    lam: float
    dropout: float | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    status: str = "done"
    tau: float | None = None  # a τ sweep's point: the timescale in epochs that gave λ

    @property
    def key(self) -> tuple[str, float, float | None]:
        return (self.mode, self.lam, self.dropout)

    @property
    def n_done(self) -> int:
        """Trials (folds) of this point that finished."""
        return sum(1 for r in self.rows if r.get("status") == "done")

    def mean(self, name: str) -> float | None:
        return self.stats.get(name, (None, None))[0]

    def se(self, name: str) -> float | None:
        return self.stats.get(name, (None, None))[1]

    def label(self) -> str:
        """Human name, e.g. `decoupled λ=0.001`, `decoupled τ = 2 epochs (λ = 0.1)` or `λ=0 (no decay)`."""
        if self.mode == "none":
            return "λ = 0 (no decay)"
        if self.tau is not None:
            return f"{self.mode} τ = {self.tau:g} epochs (λ = {self.lam:.4g})"
        return f"{self.mode} λ = {self.lam:g}"


def trial_value(row: dict[str, Any], name: str) -> float | None:
    """One aggregated value of a trials.jsonl row (train_loss is derived as best val loss − gap)."""
    if name == "train_loss":
        if finite(row.get("train_loss")):
            return float(row["train_loss"])
        if finite(row.get("best_val_loss")) and finite(row.get("gap")):
            return float(row["best_val_loss"]) - float(row["gap"])
        return None
    value = row.get(name)
    return float(value) if finite(value) else None


def furthest_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per trial: its furthest rung (successive halving writes one row per rung), file order kept."""
    keep: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = str(row.get("trial"))
        if key not in keep or (row.get("rung") or 0) >= (keep[key].get("rung") or 0):
            keep[key] = row
    order = list(dict.fromkeys(str(r.get("trial")) for r in rows))
    return [keep[k] for k in order]


def build_points(rows: list[dict[str, Any]], table: list[dict[str, Any]] | None) -> list[Point]:
    """Group trial rows by (mode, λ, dropout) and compute mean ± SE of every aggregated value over done folds."""
    points: dict[tuple, Point] = {}
    for row in rows:
        if not finite(row.get("lambda")):
            continue
        key = (str(row.get("mode", "none")), float(row["lambda"]), row.get("dropout"))
        point = points.setdefault(key, Point(*key))
        point.rows.append(row)
        if finite(row.get("tau")):
            point.tau = float(row["tau"])
    statuses = {(str(e.get("mode")), float(e.get("lambda", 0.0)), e.get("dropout")): e.get("status")
                for e in (table or []) if finite(e.get("lambda"))}
    for point in points.values():
        done = [r for r in point.rows if r.get("status") == "done"]
        for name in AGGREGATED:
            point.stats[name] = mean_se([v for v in (trial_value(r, name) for r in done) if v is not None])
        status = statuses.get(point.key) or statuses.get((point.mode, point.lam, None))
        point.status = status or ("done" if done else str(point.rows[-1].get("status", "unknown")))
    return sorted(points.values(), key=lambda p: (p.dropout or 0.0, p.mode != "none", p.mode, p.lam))


@dataclass
class SweepData:
    """One sweep folder: what was asked (sweep.yaml), every trial row, the summary and the trial runs."""

    root: Path
    record: dict[str, Any]
    rows: list[dict[str, Any]]
    summary: dict[str, Any] | None
    points: list[Point]
    runs: dict[str, RunData]
    final: RunData | None

    @property
    def spec(self) -> dict[str, Any]:
        """The sweep's settings (strategy, lambdas, modes, folds, rule, metric …) as recorded."""
        spec = self.record.get("spec")
        return dict(spec) if isinstance(spec, dict) else dict(self.record)

    @property
    def taus(self) -> bool:
        """True for a sweep of λ's timescale τ (`--taus`): its points show τ beside λ."""
        return self.spec.get("taus") is not None

    @property
    def chosen_info(self) -> dict[str, Any]:
        """summary.json's `chosen` (lambda, mode, rule, metric), or {} while the sweep is unfinished."""
        chosen = (self.summary or {}).get("chosen")
        return dict(chosen) if isinstance(chosen, dict) else {}

    @property
    def metric(self) -> str:
        return str(self.chosen_info.get("metric") or self.spec.get("metric") or "loss")

    @property
    def rule(self) -> str:
        return str(self.chosen_info.get("rule") or self.spec.get("rule") or "min")

    @property
    def metric_field(self) -> str:
        return METRIC_FIELDS.get(self.metric, "best_val_loss")

    @property
    def repeats(self) -> int:
        """Trials per point that a table row averages: folds × seeds (1 for one split and one seed)."""
        return len({(r.get("fold"), r.get("seed")) for r in self.rows}) or 1

    @property
    def repeats_word(self) -> str:
        """What those trials are: folds, seeds, or both."""
        folds = any(r.get("fold") is not None for r in self.rows)
        seeds = any(r.get("seed") is not None for r in self.rows)
        return "folds × seeds" if folds and seeds else "seeds" if seeds else "folds"

    @property
    def chosen(self) -> Point | None:
        """The chosen point, matched on mode, λ (and dropout when recorded)."""
        info = self.chosen_info
        if not finite(info.get("lambda")):
            return None
        lam, mode = float(info["lambda"]), str(info.get("mode", ""))
        matches = [p for p in self.points if math.isclose(p.lam, lam, rel_tol=1e-9, abs_tol=1e-15)
                   and (p.mode == mode or (lam == 0.0 and p.mode == "none"))]
        if "dropout" in info:
            matches = [p for p in matches if p.dropout == info["dropout"]] or matches
        return matches[0] if matches else None

    @property
    def best(self) -> Point | None:
        """The point with the best mean of the selection metric (the `min` rule's pick)."""
        name = self.metric_field
        scored = [p for p in self.points if p.status == "done" and p.mean(name) is not None]
        if not scored:
            return None
        sign = -1.0 if self.metric in HIGHER_IS_BETTER else 1.0
        return min(scored, key=lambda p: (sign * p.mean(name), p.lam))

    def baseline(self, dropout: float | None = None) -> Point | None:
        """The λ = 0 point (of the given dropout when there are several)."""
        zeros = [p for p in self.points if p.lam == 0.0]
        same = [p for p in zeros if p.dropout == dropout]
        return (same or zeros or [None])[0]

    def within_one_se(self) -> list[Point]:
        """Points whose mean is within one SE of the best mean (the 1-SE band)."""
        best, name = self.best, self.metric_field
        if best is None:
            return []
        width = best.se(name) or 0.0
        sign = -1.0 if self.metric in HIGHER_IS_BETTER else 1.0
        limit = sign * best.mean(name) + width
        return [p for p in self.points if p.status == "done" and p.mean(name) is not None
                and sign * p.mean(name) <= limit + 1e-12]

    def run_of(self, point: Point) -> RunData | None:
        """A representative run of the point: its first fold and seed (the first trial when there are none)."""
        ordered = sorted(point.rows, key=lambda r: (r.get("fold") or 0, r.get("seed") or 0))
        for row in ordered:
            run = self.runs.get(str(row.get("trial")))
            if run is not None:
                return run
        return None


def load_sweep(path: Path) -> SweepData:
    """Read a sweep folder: sweep.yaml, trials.jsonl, summary.json, every trial run and final/."""
    root = Path(path)
    if not is_sweep(root):
        raise UserError(f"{root}: not a decaylab sweep folder (no sweep.yaml)")
    record = _yaml(root / "sweep.yaml") or {}
    try:
        rows = furthest_rows(read_jsonl(root / "trials.jsonl"))
    except DamagedFile as exc:
        raise exc.saying("the report needs its rows; the trial run folders are not affected (each has its own "
                         "report)") from None
    summary = _json(root / "summary.json", f"`decaylab sweep --resume {root}` writes it again")
    table = summary.get("table") if summary and isinstance(summary.get("table"), list) else None
    runs: dict[str, RunData] = {}
    for row in rows:
        folder = root / str(row.get("run") or Path("trials") / str(row.get("trial")))
        if is_run(folder):
            runs[str(row.get("trial"))] = load_run(folder)
    final = load_run(root / "final") if is_run(root / "final") else None
    return SweepData(root, record, rows, summary, build_points(rows, table), runs, final)


def layer_norms(checkpoint: Path) -> dict[str, float]:
    """L2 norm of every tensor in a model.safetensors file, by parameter name (a damaged file: DamagedFile)."""
    import torch

    from decaylab.runfolder.checkpoint import read_tensors
    from decaylab.runfolder.load import other_checkpoint

    try:
        tensors = read_tensors(checkpoint)
    except DamagedFile as exc:  # checkpoint = RUN/checkpoints/<which>/model.safetensors
        raise exc.saying(other_checkpoint(checkpoint.parent.parent.parent, checkpoint.parent.name, option="")
                         ) from None
    return {name: float(torch.linalg.vector_norm(t.detach().to(torch.float64))) for name, t in sorted(tensors.items())}
