"""Wang & Aitchison (ICML 2025): the best τ_epoch = 1/(η·λ·steps per epoch) against the best λ when the training set
grows 4× at a fixed number of epochs. One τ sweep (AdamW, decay × lr, grid × seeds, one vectorized stack) per
training-set size, on nested subsets of shakespeare-plays with the same validation set; and one at the smaller size
with the width doubled and the lr halved. `--scale medium|long`: smaller runs for a busy machine (results into
results/SCALE/)."""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from decaylab.config import parse_override
from decaylab.errors import UserError
from decaylab.sweep.store import SweepStore
from experiments.common import Experiment, start
from experiments.tau_transfer.curves import (
    METRICS,
    aligning_ratio,
    bootstrap_ratio,
    minimum,
    per_seed_ratios,
    read_curves,
)
from experiments.tau_transfer.figures import draw

BASE: dict[str, Any] = {
    "data": "shakespeare-plays", "valid_examples": 500, "test_examples": 200, "eval_blocks": 100, "block_size": 64,
    "vocab": 512, "d_model": 32, "heads": 2, "layers": 2, "ffn": 128, "optimizer": "adamw", "lr": 0.01,
    "betas": [0.9, 0.95], "schedule": "constant", "batch_tokens": 1024, "clip_norm": 1.0, "decay_set": "matrices",
    "decay_scaling": "lr", "bootstrap_draws": 2000,
    # width ×2 (heads ×2, head size kept) at lr ÷2: at a fixed lr, width leaves η and the steps per epoch alone, so
    # τ ∝ 1/λ with one constant and the question is empty; with η ∝ 1/width (μP for Adam's hidden matrices) τ
    # transferring means λ* ×2, λ transferring means λ* ×1
    "wide": {"d_model": 64, "heads": 4, "ffn": 256, "lr": 0.005},
    "threads": 1,  # one thread: on a shared 2-core machine two spinning OpenMP threads made a step 3× slower
}
SCALES: dict[str, dict[str, Any]] = {
    # the long run's regime (λ = 0 overfits at both sizes, the minima inside the grid) at 2× the data, 3 seeds
    "full": {**BASE, "sizes": [200, 800], "epochs": 40, "taus": [0.25 * 2 ** k for k in range(9)], "seeds": 3},
    # first try on the busy machine: 10 epochs are only 140 steps at N = 200; under-trained (docs/results.md)
    "medium": {**BASE, "sizes": [200, 800], "epochs": 10, "taus": [0.5 * 2 ** k for k in range(7)], "seeds": 2,
               "wide": None},
    # the busy machine's run (docs/results.md): 40 epochs, where λ = 0 overfits at both sizes
    "long": {**BASE, "sizes": [100, 400], "epochs": 40, "taus": [0.5 * 2 ** k for k in range(8)], "seeds": 2},
    "quick": {**BASE, "sizes": [30, 120], "epochs": 2, "taus": [0.5, 2.0, 8.0], "seeds": 2, "valid_examples": 40,
              "test_examples": 20, "eval_blocks": 20, "block_size": 32, "vocab": 300, "d_model": 16, "layers": 1,
              "ffn": 32, "batch_tokens": 512, "bootstrap_draws": 200,
              "wide": {"d_model": 32, "heads": 4, "ffn": 64, "lr": 0.005}},
}
PRIMARY = "end"  # the val loss after the last epoch: the weights the timescale view speaks of (not early-stopped)
# The verdict, fixed before the runs, per change (4× data; 2× width at ½ lr). τ transfers: τ*(b)/τ*(a) ≈ 1; λ
# transfers: it ≈ h = (η·steps per epoch of a)/(that of b), e.g. ≈ 1/4 for 4× the data. Reproduced: the τ ratio within
# ×TAU_FACTOR of 1 and nearer (in log) to 1 than the λ ratio is, its bootstrap 16 % (84 % when h > 1) quantile on
# τ's side of √h, both minima inside the grid and below λ = 0. Partly: the τ ratio nearer 1 than the λ ratio, the
# rest not all met. Not reproduced: λ as near 1 as τ, or nearer; or inconclusive: a minimum at the grid's edge or
# above λ = 0 (its ratio would be the grid's, not the data's).
TAU_FACTOR = 2.0


def overrides(s: dict[str, Any], examples: int) -> list[str]:
    """The config of one training-set size (`data.max_examples` caps the training split by hash: nested subsets;
    the validation and test splits do not depend on it)."""
    return [f"data.name={s['data']}", f"data.max_examples={examples}", f"data.max_valid_examples={s['valid_examples']}",
            f"data.max_test_examples={s['test_examples']}", f"data.block_size={s['block_size']}",
            f"tokenizer.vocab_size={s['vocab']}", "model.arch=decoder", "model.dropout=0",
            f"model.d_model={s['d_model']}", f"model.heads={s['heads']}", f"model.layers={s['layers']}",
            f"model.ffn={s['ffn']}", f"train.optimizer={s['optimizer']}", f"train.lr={s['lr']}",
            f"train.betas=[{s['betas'][0]},{s['betas'][1]}]", f"train.schedule={s['schedule']}",
            f"train.epochs={s['epochs']}", f"train.batch_tokens={s['batch_tokens']}",
            f"train.clip_norm={s['clip_norm']}", f"train.max_eval_examples={s['eval_blocks']}",
            f"train.threads={s['threads']}",
            "regularization.mode=decoupled", f"regularization.decay_set={s['decay_set']}",
            f"regularization.decay_scaling={s['decay_scaling']}"]


def verdict(ratio: dict[str, Any], sizes: list[dict[str, Any]], change: str) -> str:
    """Reproduced / partly / not for one change (`change` says which, e.g. "4× the data"), with its numbers."""
    r_tau, r_lam = ratio["tau"], ratio["lambda"]
    # If λ transferred, τ would move by h = r_τ·r_λ (the η·steps-per-epoch ratio); the log-midpoint splits the two
    h = r_tau * r_lam
    midpoint = math.sqrt(h)
    tau_nearer = abs(math.log(r_tau)) < abs(math.log(r_lam))
    # the bootstrap quantile on the side facing the λ hypothesis
    side = ratio["bootstrap"]["tau_ratio"][1] if h < 1 else ratio["bootstrap"]["tau_ratio"][2]
    flaws = [f"{s['label']}: minimum at the grid's edge" for s in sizes if s["minimum"][PRIMARY]["edge"]]
    flaws += [f"{s['label']}: λ = 0 better" for s in sizes if s["minimum"][PRIMARY]["zero_better"]]
    if (side <= midpoint) if h < 1 else (side >= midpoint):
        flaws.append(f"bootstrap {'16' if h < 1 else '84'} % quantile of the τ ratio {side:.2f} is on λ's side "
                     f"of {midpoint:.2f}")
    if abs(math.log(r_tau)) > math.log(TAU_FACTOR):
        flaws.append(f"τ ratio beyond ×{TAU_FACTOR:g} of 1")
    if any(s["minimum"][PRIMARY]["edge"] or s["minimum"][PRIMARY]["zero_better"] for s in sizes):
        return (f"not reproduced (inconclusive): at {change} a minimum is not inside the τ grid, so its ratio says "
                f"nothing ({'; '.join(flaws)})")
    word = "not reproduced" if not tau_nearer else "reproduced" if not flaws else "partly reproduced"
    return (f"{word}: at {change} the best τ_epoch moved ×{r_tau:.2f} and the best λ ×{r_lam:.3f} (λ fixed would "
            f"move τ ×{h:.2f}; val loss at the end of training, seed mean); "
            f"{'τ' if tau_nearer else 'λ'} is the one that stays nearer put"
            + (f"; short of reproduced: {'; '.join(flaws)}" if flaws and tau_nearer else ""))


def compare(a: dict[str, Any], b: dict[str, Any], draws: int) -> dict[str, dict[str, Any]]:
    """Per metric: τ*(b)/τ*(a), λ*(b)/λ*(a), the steps-per-epoch ratio, their bootstrap and per-seed ratios."""
    h = a["lr"] * a["steps_per_epoch"] / (b["lr"] * b["steps_per_epoch"])  # τ's ratio if λ transferred
    return {m: {"tau": b["minimum"][m]["tau"] / a["minimum"][m]["tau"],
                "lambda": b["minimum"][m]["lambda"] / a["minimum"][m]["lambda"],
                "steps_per_epoch": b["steps_per_epoch"] / a["steps_per_epoch"],
                "bootstrap": bootstrap_ratio(a["curve"], b["curve"], m, draws, seed=0),
                "per_seed": per_seed_ratios(a["curve"], b["curve"], m),
                # descriptive, added after the medium run, not part of the verdict: whole curves, not minima
                "aligning": aligning_ratio(a["curve"], b["curve"], m, h)} for m in METRICS}


def check_recorded(folder: Path, options: list[str], taus: list[float], seeds: int) -> None:
    """Refuse a sweep folder started with other settings: exp.sweep reads a sweep back (or resumes it) by its key
    alone, so a changed setting would otherwise reuse the old trials silently."""
    store = SweepStore(folder)
    if not store.is_sweep():
        return
    record = store.read_record()
    asked = {"spec.taus": taus, "spec.seeds": seeds} | dict(
        (".".join(["base", *path]), value) for path, value in map(parse_override, options))
    for name, value in asked.items():
        recorded: Any = record
        for part in name.split("."):
            recorded = recorded[part]
        if recorded != value:
            raise UserError(f"{folder}: this sweep was run with {name}={recorded!r}, not {value!r}; remove the "
                            "folder (or the whole runs/) to run it with the new settings")


def one_sweep(exp: Experiment, s: dict[str, Any], scale: str, examples: int, label: str,
              wide: bool = False) -> dict[str, Any]:
    """One τ sweep (all τ × seeds in one vectorized stack), read back as curves and minima."""
    key = f"{scale}-n{examples}" + ("-wide" if wide else "")  # the scale in the key: never another scale's sweep
    cfg = {**s, **s["wide"]} if wide else s
    options = overrides(cfg, examples)
    check_recorded(exp.runs / key, options, s["taus"], s["seeds"])
    summary = exp.sweep(key, overrides=options, strategy="grid", taus=s["taus"], seeds=s["seeds"],
                        modes="decoupled", vectorized=True, quiet=True)
    curve = read_curves(exp.runs / key)
    return {"label": label, "examples": examples, "d_model": cfg["d_model"], "lr": cfg["lr"],
            "steps_per_epoch": summary["steps_per_epoch"], "curve": curve,
            "minimum": {m: minimum(curve, m) for m in METRICS}, "chosen": summary["chosen"],
            "sweep_wall_s": summary["wall_s"]}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run (or continue) the experiment; write results.json and the figures; return the results."""
    args = list(argv) if argv is not None else sys.argv[1:]
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--scale", choices=[k for k in SCALES if k != "quick"], default="full")
    known, rest = parser.parse_known_args(args)
    exp = start("tau_transfer", __doc__ or "", rest)
    exp.command = shlex.join(["python", "-m", "experiments.tau_transfer", *args])
    scale = "quick" if exp.quick else known.scale
    if scale not in ("quick", "full") and "--output" not in rest:  # a smaller scale never overwrites the full run
        exp.output = exp.output / scale
        exp.output.mkdir(parents=True, exist_ok=True)
    s = SCALES[scale]
    small, large = (one_sweep(exp, s, scale, n, f"N = {n}") for n in s["sizes"])
    draws, n = s["bootstrap_draws"], s["sizes"][0]
    ratios = {"data": compare(small, large, draws)}
    results: dict[str, Any] = {"scale": scale, "primary_metric": PRIMARY, "sizes": [small, large], "ratios": ratios}
    title = (f"{s['data']}, decoder d={s['d_model']}×{s['layers']}, AdamW lr {s['lr']:g}, {s['epochs']} epochs, "
             f"{s['seeds']} seeds ({scale})")
    exp.save_figure(draw([small, large], PRIMARY, title), "tau_vs_lambda")
    exp.save_figure(draw([small, large], "best", title + ", best epoch"), "tau_vs_lambda_best_epoch")
    text = verdict(ratios["data"][PRIMARY], [small, large], "4× the data")
    settings = {**s, "scale": scale, "primary_metric": PRIMARY, "tau_factor": TAU_FACTOR}
    exp.write_results(settings, results, text)  # the data comparison stands on its own while the width one runs
    if s["wide"] is not None:
        w = s["wide"]
        wide = one_sweep(exp, s, scale, n, f"N = {n}, d = {w['d_model']}, lr {w['lr']:g}", wide=True)
        narrow = {**small, "label": f"N = {n}, d = {s['d_model']}, lr {s['lr']:g}"}
        ratios["width"] = compare(small, wide, draws)
        results["wide"] = wide
        exp.save_figure(draw([narrow, wide], PRIMARY, title + f", width ×2 at lr ÷2 (N = {n})"),
                        "tau_vs_lambda_width")
        text += ". Width (secondary): " + verdict(ratios["width"][PRIMARY], [narrow, wide],
                                                  "2× the width with ½ the lr")
        exp.write_results(settings, results, text)
    return results


if __name__ == "__main__":
    main()
