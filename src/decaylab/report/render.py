"""Build the report: figures to plots/*.png, the page from the jinja2 template, report.html beside the data."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from decaylab import __version__
from decaylab.errors import UserError
from decaylab.files import atomic_write, atomic_write_text, not_found
from decaylab.report import collect, findings, plots
from decaylab.report.audit import audit_run, decayed_names
from decaylab.report.samples import Samples, translate_samples

PNG_DPI = 130
REPORT_FILE = "report.html"
PLOTS_DIR = "plots"
# Every figure a report can draw; a re-run removes those of this list it no longer draws (never other files).
FIGURE_NAMES = ("u_curve", "learning_curves", "weight_norms", "layer_norms", "steady_state", "gap")
STEADY_CAPTION = (
    "Left: ‖u‖/‖w‖, the last step's direction u (w_t+1 = (1 − d)·w_t − η·u: Adam's m̂/(√v̂ + ε), SGD's momentum "
    "update) over the pre-step weight, median over the decayed matrices (band: min–max), against Defazio's steady "
    "state √(2λ/η) (dashed), derived for scale-invariant weights and a step orthogonal to them; momentum makes "
    "consecutive steps correlated, which holds the measured value below it. Right: the angle between the weights "
    "before and after that step against Kosson et al.'s rotational equilibrium √(2ηλ(1 − β)/(1 + β)), β = Adam's "
    "β₁ or SGD's momentum (dashed). Measured on the step before each evaluation; decaylab's models have no strictly "
    "scale-invariant matrix, so the predictions are the values such weights would reach (docs/regularization.md).")
SUMMARY_LABELS = {"compute_s": "training compute, s (trials + final)", "wall_s": "sweep wall time, s",
                  "trials": "trial rows", "engine": "training engine (sequential runs or stacked replicas)",
                  "steps_per_epoch": "steps per epoch of the training split (τ → λ)"}


@dataclass
class Figures:
    """The figures of one report: each saved to plots/<name>.png and kept as a data URI for the page."""

    folder: Path
    items: dict[str, dict[str, str]] = field(default_factory=dict)

    def add(self, name: str, figure: Any, title: str, caption: str) -> None:
        """Render `figure` to PNG, write it under plots/ and keep it for the page."""
        assert name in FIGURE_NAMES, name
        data = plots.to_png(figure, PNG_DPI)
        atomic_write(self.folder / PLOTS_DIR / f"{name}.png", lambda tmp: tmp.write_bytes(data))
        self.items[name] = {"name": name, "title": title, "caption": caption, "file": f"{PLOTS_DIR}/{name}.png",
                            "src": "data:image/png;base64," + base64.b64encode(data).decode("ascii")}


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


def _layer_series(pairs: list[tuple[str, collect.RunData | None, str]]) -> list[tuple[str, dict[str, float], str]]:
    """(label, per-tensor norms, colour) for each run that has a checkpoint."""
    series = []
    for label, run, color in pairs:
        checkpoint = run.checkpoint("best") if run is not None else None
        if checkpoint is not None:
            series.append((label, collect.layer_norms(checkpoint), color))
    return series


def _steady_series(pairs: list[tuple[str, collect.RunData | None, Any]]) -> list[tuple[str, collect.RunData, Any]]:
    """The (label, run, colour) of the runs whose metrics carry the steady-state diagnostics."""
    return [(label, run, color) for label, run, color in pairs
            if run is not None and any(collect.finite(r.get("angle")) for r in run.history)]


def provenance(run: collect.RunData | None) -> dict[str, Any]:
    """Versions, seed, data origin and fingerprint from a run's meta.json."""
    meta = run.meta if run is not None else {}
    data = meta.get("data") or {}
    return {"versions": meta.get("versions") or {}, "seed": meta.get("seed"), "origin": data.get("origin"),
            "fingerprint": data.get("fingerprint"), "sizes": data.get("sizes") or {}, "host": meta.get("host") or {},
            "device": meta.get("device"), "parameters": meta.get("parameters"), "created": meta.get("created")}


def sweep_page(sweep: collect.SweepData, figures: Figures, n_samples: int) -> dict[str, Any]:
    """Everything the template shows for a sweep."""
    baseline, compared = findings.compared_points(sweep)
    base_run = sweep.run_of(baseline) if baseline is not None else None
    comp_run = sweep.run_of(compared) if compared is not None else None
    final = sweep.final
    reference = final or comp_run or base_run or next(iter(sweep.runs.values()), None)
    audit = audit_run(reference.root, reference.history) if reference is not None else {"error": "no run found"}

    figures.add("u_curve", plots.u_curve(sweep), "U-curve: validation loss against λ",
                "Solid: validation loss at each trial's best epoch (mean ± standard error over folds or seeds); "
                "dashed: eval-mode training loss at that epoch, so the vertical distance is the generalization gap. "
                "The star is the chosen λ; the shaded band is one standard error above the best mean (the 1-SE "
                "rule picks the largest λ inside it). λ = 0 sits at the left edge, past the axis break."
                + (" The top axis gives each point's EMA timescale τ in epochs, the swept value that gave its λ."
                   if sweep.taus else ""))
    models = [("λ = 0", base_run, plots.mode_color("none"))] if base_run is not None else []
    if comp_run is not None and compared is not None:
        tag = "chosen" if sweep.chosen is not None and compared.key == sweep.chosen.key else "best λ > 0"
        models.append((f"{tag}: {compared.mode} λ = {findings.fmt_lambda(compared.lam)}", comp_run,
                       plots.mode_color(compared.mode)))
    samples = translate_samples([(label, run.root) for label, run, _ in models], n_samples)
    figures.add("learning_curves", plots.learning_curves(sweep), "Learning curves per λ",
                "Validation (solid) and eval-mode training loss (dashed) per epoch; colour = log λ, black = λ = 0. "
                "The dot is the epoch with the lowest validation loss, whose checkpoint each trial keeps.")
    figures.add("weight_norms", plots.norm_curves(sweep), "Weight norms over training",
                "L2 norm of the parameters in the decay set at each evaluation; weight decay holds it down.")
    series = _layer_series(models)
    if series:
        figures.add("layer_norms", plots.layer_norm_bars(series, decayed_names(audit)),
                    "Final per-tensor norms: λ = 0 against the chosen λ",
                    "L2 norm of every parameter tensor in the best checkpoint of each model (fold 1 when there "
                    "are folds). Hatched tensors are outside the decay set, so λ does not act on them directly.")
    norm, color_of = plots.lambda_colors([p.lam for p in sweep.points])
    steady = _steady_series([(p.label(), sweep.run_of(p), color_of(p.lam)) for p in sweep.points])
    if steady:
        figures.add("steady_state", plots.steady_state(steady, norm), "Steady state: measured against predicted",
                    STEADY_CAPTION + " One line per λ (the first of its folds or seeds).")
    figures.add("gap", plots.gap_curve(sweep), "Generalization gap against λ",
                "Validation minus eval-mode training loss at each trial's best epoch (mean ± SE over folds or seeds).")
    summary = sweep.summary or {}
    final_info = summary.get("final") if isinstance(summary.get("final"), dict) else {}
    test = final_info.get("test") if isinstance(final_info.get("test"), dict) else None
    if test is None and final is not None:
        test = findings.evaluations(final).get("test")
    # a continuation's chrF against the text that really followed says little about a language model: no such fact
    chrf = [] if samples.language_model else list(zip(samples.labels, samples.corpus_chrf, strict=True))
    extra = {SUMMARY_LABELS.get(k, k): v for k, v in summary.items()
             if k not in ("chosen", "table", "final", "strategy", "spec")}
    return {
        "kind": "sweep", "title": f"sweep {sweep.root.name}",
        "verdict": findings.sweep_verdict(sweep, test, [(lbl.split(':')[0], v) for lbl, v in chrf]),
        "figures": figures.items, "samples": samples, "points": findings.points_table(sweep),
        "sample_models": [(label, str(run.root.relative_to(sweep.root))) for label, run, _ in models],
        "trials": findings.trials_table(sweep), "spec": sweep.spec, "rule": findings.RULES.get(sweep.rule, sweep.rule),
        "metric": findings.METRIC_NAMES.get(sweep.metric, sweep.metric), "test": test or {},
        "test_values": findings.key_values(test or {}),
        "final_values": findings.key_values({k: v for k, v in final_info.items() if k != "test"}),
        "extra_scalars": {k: v for k, v in extra.items() if not isinstance(v, (dict, list))},
        "extra_nested": {k: v for k, v in extra.items() if isinstance(v, (dict, list))}, "audit": audit,
        "audit_of": "the final model (final/)" if final is not None else f"trial {reference.root.name}"
        if reference is not None else "",
        "config_yaml": _text(reference.root / "config.yaml") if reference is not None else "",
        "record_yaml": _text(sweep.root / "sweep.yaml"), "provenance": provenance(reference),
        "n_trials": len(sweep.rows),
        "steady": [(label, findings.steady_finding(run)) for label, run, _ in steady],
    }


def run_page(run: collect.RunData, figures: Figures, n_samples: int) -> dict[str, Any]:
    """Everything the template shows for a single run."""
    audit = audit_run(run.root, run.history)
    figures.add("learning_curves", plots.run_curves(run), "Learning curves",
                "Training loss (running mean in train mode, and re-evaluated in eval mode) and validation loss per "
                "evaluation; the star marks the best epoch, whose checkpoint is kept.")
    figures.add("weight_norms", plots.run_norms(run), "Weight norms over training",
                "L2 norms of the decayed parameters, of the others, and of all of them.")
    series = _layer_series([("best checkpoint", run, plots.mode_color(run.regularization.get("mode", "none")))])
    if series:
        figures.add("layer_norms", plots.layer_norm_bars(series, decayed_names(audit)), "Final per-tensor norms",
                    "L2 norm of every parameter tensor in the best checkpoint; hatched tensors are not decayed.")
    steady = _steady_series([("this run", run, plots.mode_color(run.regularization.get("mode", "none")))])
    if steady:
        figures.add("steady_state", plots.steady_state(steady), "Steady state: measured against predicted",
                    STEADY_CAPTION)
    samples: Samples = translate_samples([("model", run.root)], n_samples)
    return {
        "kind": "run", "title": f"run {run.root.name}", "verdict": findings.run_verdict(run),
        "figures": figures.items, "samples": samples, "history": findings.history_table(run), "sample_models": [],
        "eval_values": [(f"{split}: {k}", v) for split, result in findings.evaluations(run).items()
                        for k, v in findings.key_values(result)], "audit": audit, "audit_of": "this run's model",
        "config_yaml": _text(run.root / "config.yaml"), "provenance": provenance(run),
        "steady": [(label, findings.steady_finding(r)) for label, r, _ in steady],
    }


def render_html(page: dict[str, Any]) -> str:
    """The self-contained page (inline CSS, JS and images) from templates/report.html.j2."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("decaylab.report", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = findings.fmt
    env.filters["lam"] = findings.fmt_lambda
    return env.get_template("report.html.j2").render(**page)


def write_report(path: Path, samples: int = 5) -> Path:
    """Write `report.html` and `plots/*.png` inside a run or sweep folder; returns the report's path."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(not_found(root, "folder"))
    started = time.perf_counter()
    figures = Figures(root)
    if collect.is_sweep(root):
        page = sweep_page(collect.load_sweep(root), figures, samples)
    elif collect.is_run(root):
        page = run_page(collect.load_run(root), figures, samples)
    else:
        raise UserError(f"{root}: neither a decaylab run folder (config.yaml) nor a sweep folder (sweep.yaml)")
    page.update(path=str(root), created=time.strftime("%Y-%m-%d %H:%M:%S"), decaylab_version=__version__,
                build_s=time.perf_counter() - started)
    target = root / REPORT_FILE
    atomic_write_text(target, render_html(page))
    for name in set(FIGURE_NAMES) - set(figures.items):  # a figure an earlier report drew and this one does not
        (root / PLOTS_DIR / f"{name}.png").unlink(missing_ok=True)
    return target
