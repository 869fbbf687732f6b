"""`decaylab sweep`: the command line of decaylab.sweep (only typer at import time, so `--help` stays fast)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from decaylab.regularization.rules import SWEEPABLE


def sweep(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file (the base of every "
                                                "trial).")] = None,
    strategy: Annotated[str | None, typer.Option(help="grid, cv, optuna or halving (default: grid).")] = None,
    lambdas: Annotated[str | None, typer.Option(help="log:LO:HI:N (log-spaced, inclusive) or a list 0,1e-4,1e-3 "
                                                "(default: log:1e-5:1e-1:9); λ = 0 is added unless --no-zero.")]
    = None,
    mode: Annotated[str | None, typer.Option(help="Comma list of " + ", ".join(SWEEPABLE) + " (a rule that is not "
                                             "a mode, like l1, sweeps its own strength with mode none) (default: "
                                             "the config's mode, else decoupled).")] = None,
    dropout: Annotated[str | None, typer.Option(help="Comma list of dropout probabilities to sweep too.")] = None,
    folds: Annotated[int | None, typer.Option(help="cv: number of folds of the training split (default: 5).")]
    = None,
    rule: Annotated[str | None, typer.Option(help="min (best mean) or 1se (largest λ within one standard error "
                                             "of the best) (default: min).")] = None,
    metric: Annotated[str | None, typer.Option(help="loss (val nats/token), bleu or chrf (default: loss).")] = None,
    trials: Annotated[int | None, typer.Option(help="optuna: trials in the study (default: 30).")] = None,
    storage: Annotated[str | None, typer.Option(help="optuna: sqlite:///s.db, postgresql://user:pw@host/db (any "
                                                "SQLAlchemy URL) or journal:PATH (default: SWEEP/optuna.db).")]
    = None,
    study: Annotated[str | None, typer.Option(help="optuna: study name in the storage (default: the sweep "
                                              "folder's name); give the same one to every --join process.")]
    = None,
    join: Annotated[bool, typer.Option("--join", help="optuna: work on an existing study as an extra worker "
                                       "(no final step).")] = False,
    pruner: Annotated[str | None, typer.Option(help="optuna: median, halving or none (default: median).")] = None,
    seeds: Annotated[int | None, typer.Option(help="grid, cv: train every point (and fold) with this many seeds "
                                              "(--seed, --seed+1, ...; the data order stays fixed) and report "
                                              "mean ± SE over them.")] = None,
    workers: Annotated[int, typer.Option(help="Trials run in this many processes on this machine.")] = 1,
    vectorized: Annotated[bool, typer.Option("--vectorized", help="grid, cv, halving: train the points of each "
                                             "grid, fold or rung at once as one stacked model (fastest on a GPU; "
                                             "see docs/sweeps.md).")] = False,
    replicas: Annotated[int | None, typer.Option(help="--vectorized: at most this many replicas per stack "
                                                 "(bounds memory; default: all points).")] = None,
    eta: Annotated[int | None, typer.Option(help="halving: keep the best 1/eta per rung (default: 3).")] = None,
    min_epochs: Annotated[int | None, typer.Option(help="halving: epochs of the first rung (default: "
                                                   "epochs / eta^rungs).")] = None,
    no_zero: Annotated[bool, typer.Option("--no-zero", help="Do not add λ = 0 (the unregularized baseline).")]
    = False,
    no_final: Annotated[bool, typer.Option("--no-final", help="Skip the final model and the test evaluation.")]
    = False,
    data: Annotated[str | None, typer.Option(help="Builtin dataset name or a TSV/JSONL file.")] = None,
    preset: Annotated[str | None, typer.Option(help="Model size preset: tiny, small, base.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs of each trial.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    optimizer: Annotated[str | None, typer.Option(help="adam, adamw or sgd.")] = None,
    l1: Annotated[float | None, typer.Option(help="L1 strength λ₁ kept fixed (unless --mode l1).")] = None,
    decay_set: Annotated[str | None, typer.Option(help="all, no_bias_norm, matrices, matrices_no_embedding.")]
    = None,
    max_examples: Annotated[int | None, typer.Option(help="Use at most this many training pairs.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (also fixes the CV folds).")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32 or bf16 (autocast).")] = None,
    sets: Annotated[list[str] | None, typer.Option("--set", help="Override any key: section.key=value "
                                                   "(repeatable).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Sweep folder (default: "
                                                "sweeps/NAME).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue this sweep folder; finished trials are not "
                                                "recomputed.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the final table.")] = False,
) -> None:
    """Choose λ on evidence: grid, k-fold CV, Optuna or successive halving; writes sweeps/NAME/ and prints the table."""
    from decaylab.sweep.api import sweep as run_sweep
    from decaylab.sweep.render import render_table

    flags = {"data.name": data, "model.preset": preset, "train.epochs": epochs, "train.lr": lr,
             "train.optimizer": optimizer, "regularization.l1": l1, "regularization.decay_set": decay_set,
             "data.max_examples": max_examples, "seed": seed, "train.device": device, "train.precision": precision}
    if resume is not None and config is None:
        # Resuming: the flags given (if any) go on top of the stored config; any change is then refused.
        base, overrides = None, [f"{k}={v}" for k, v in flags.items() if v is not None] + list(sets or [])
    else:
        from decaylab.cli import build_run_config

        base, overrides = build_run_config(config, sets, **flags), []
    if output is None and resume is None:
        import time

        stem = config.stem if config is not None else "sweep"
        output = Path("sweeps") / f"{stem}-{strategy or 'grid'}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        result = run_sweep(base, overrides=overrides, strategy=strategy, lambdas=lambdas, modes=mode,
                           dropouts=dropout, folds=folds, rule=rule, metric=metric, trials=trials, storage=storage,
                           study=study, join=join, workers=workers, eta=eta, min_epochs=min_epochs, pruner=pruner,
                           no_zero=no_zero or None, output=output, resume=resume, final=not no_final, quiet=quiet,
                           vectorized=vectorized, replicas=replicas, seeds=seeds)
    except KeyboardInterrupt:
        typer.echo(f"interrupted; continue with `decaylab sweep --resume {resume or output}`", err=True)
        raise SystemExit(130) from None
    render_table(result.summary, f"sweep {result.path} ({result.summary['strategy']})")
    typer.echo(f"sweep folder {result.path}")
    if not join:  # a --join worker leaves the report to the process that chooses λ
        from decaylab.report import write_report

        typer.echo(f"report {write_report(result.path)}")
