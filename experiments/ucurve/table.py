"""The docs' table from a results.json: `python -m experiments.ucurve.table PATH/results.json`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _versus(entry: dict[str, Any]) -> str:
    """The CV choice (rule min) against λ = 0 on the test split: loss difference and p; BLEU of both and p."""
    chosen = entry["versus_zero"]["min"]
    if chosen is None:
        return "λ = 0 chosen | –"
    loss = chosen["loss"]
    bleu = chosen.get("bleu")
    shown = f"{bleu['bleu_a']:.1f} vs {bleu['bleu_b']:.1f}, p = {bleu['p_value']:.3f}" if bleu else "–"
    return f"{loss['difference']:+.3f} (p = {loss['p_value']:.3f}) | {shown}"


def _over(entry: dict[str, Any]) -> str:
    """10× above the CV optimum, where the grid has it: CV excess in SEs and test excess."""
    ten = entry["over_regularization"]["10x"]
    if ten is None:
        return "not on the grid"
    test = ten.get("test")
    return f"+{ten['cv_delta_se']:.1f} SE; test {test['difference']:+.3f}" if test else f"+{ten['cv_delta_se']:.1f} SE"


def _test_optimal(entry: dict[str, Any]) -> str:
    """The test-optimal point's test loss against λ = 0's and against CV's choice (rule min): whole-split models,
    not paired-tested."""
    by_x = {p["x"]: p["test_loss"] for p in entry["points"]}
    zero, best, chosen = entry["points"][0]["test_loss"], by_x[entry["test_optimal"]], by_x[entry["chosen"]["min"]]
    return f"{best - zero:+.3f} / {best - chosen:+.3f}"


def table(results: dict[str, Any]) -> str:
    """One row per (dataset, regularizer) curve."""
    lines = ["| dataset (model) | regularizer | CV min (SE of min) | λ = 0 − min (SEs) | U | CV choice: min / 1-SE "
             "| test-optimal | steps (min / 1-SE) | chosen − λ = 0 on test, nats/token | greedy BLEU chosen vs λ = 0 "
             "| 10× above the optimum | test-optimal − λ = 0 / − CV choice |",
             "| --- | --- | --- | ---: | --- | --- | --- | --- | ---: | --- | --- | ---: |"]
    for name, data in results["results"]["datasets"].items():
        for family, e in data["families"].items():
            u = e["u_shape"]
            steps = e["steps_to_test_optimal"]
            lines.append(
                f"| {name} ({data['arch']}) | {family} | {u['min']:g} ({u['min_se']:.3f}) | "
                f"{u['zero_minus_min']:.3f} ({u['zero_minus_min_se']:.1f}) | {'yes' if u['u_shaped'] else 'no'} | "
                f"{e['chosen']['min']:g} / {e['chosen']['1se']:g} | {e['test_optimal']:g} | "
                f"{steps['min']:+d} / {steps['1se']:+d} | {_versus(e)} | {_over(e)} | {_test_optimal(e)} |")
    return "\n".join(lines)


def main(path: str) -> None:
    """Print the table and the verdict of one results.json."""
    results = json.loads(Path(path).read_text(encoding="utf-8"))
    print(table(results), end="\n\n")
    print(json.dumps(results["results"]["shares"]))
    print(results["verdict"])


if __name__ == "__main__":
    main(sys.argv[1])
