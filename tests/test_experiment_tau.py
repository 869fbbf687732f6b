"""experiments/tau_transfer (Wang & Aitchison): the sizes are nested subsets with one validation set, the minima
and their bootstrap find what synthetic curves hide, the verdict follows its thresholds, and the quick variant
runs end to end, derives λ from τ as decaylab does, and resumes without retraining."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from experiments.tau_transfer.__main__ import SCALES, overrides, verdict
from experiments.tau_transfer.curves import aligning_ratio, bootstrap_ratio, minimum, per_seed_ratios

from decaylab.config import load_config
from decaylab.data.splits import load_splits
from decaylab.errors import UserError


def test_sizes_are_nested_subsets_with_one_validation_set() -> None:
    s = SCALES["quick"]
    small, large = (load_splits(load_config(None, overrides(s, n)).data) for n in s["sizes"])
    assert (len(small.train), len(large.train)) == tuple(s["sizes"])
    assert {p.key for p in small.train} < {p.key for p in large.train}
    assert [p.key for p in small.valid] == [p.key for p in large.valid]


def _curve(best_tau: float, spe: float, lr: float = 0.01, seeds: int = 3, zero: float = 1.0) -> dict[str, Any]:
    """A synthetic τ sweep: a parabola in log τ with its vertex at best_tau, a seed-dependent offset and tilt."""
    taus = [0.5 * 2 ** k for k in range(7)]
    rng = np.random.default_rng(round(best_tau * 100))
    loss = [[(math.log(t / best_tau)) ** 2 + 0.1 * seed + 0.02 * rng.standard_normal() for t in taus]
            for seed in range(seeds)]
    return {"taus": taus, "lambdas": [1 / (lr * t * spe) for t in taus], "seeds": list(range(seeds)),
            "steps_per_epoch": spe, "loss": {"end": loss}, "zero": {"end": [zero + 0.1 * s for s in range(seeds)]}}


def test_minimum_and_ratios_on_synthetic_curves() -> None:
    small, large = _curve(3.0, 10.0), _curve(3.0, 40.0)  # τ transfers: λ* falls 4×
    a, b = minimum(small, "end"), minimum(large, "end")
    assert a["tau"] == pytest.approx(3.0, rel=0.1) and not a["edge"] and not a["zero_better"]
    assert a["tau"] * a["lambda"] == pytest.approx(1 / (0.01 * 10.0))  # the vertex is one point on both axes
    assert b["lambda"] / a["lambda"] == pytest.approx(0.25, rel=0.15)
    boot = bootstrap_ratio(small, large, "end", draws=200, seed=0)
    assert boot["tau_ratio"][0] <= 1.0 <= boot["tau_ratio"][-1] * 1.2 and boot["tau_ratio"][-1] < 1.5
    assert [r["seed"] for r in per_seed_ratios(small, large, "end")] == [0, 1, 2]
    edge = minimum(_curve(100.0, 10.0, zero=-5.0), "end")  # the minimum beyond the grid, and λ = 0 better
    assert edge["edge"] and edge["zero_better"] and edge["tau"] == 32.0


def test_aligning_ratio_finds_the_shift_of_a_whole_curve() -> None:
    small = _curve(3.0, 10.0)
    large = {**small, "loss": {"end": [[v + 0.7 for v in row] for row in _curve(12.0, 40.0)["loss"]["end"]]}}
    found = aligning_ratio(small, large, "end", h=4.0)  # the same U moved to 4× the τ and up by 0.7
    assert found["ratio"] == pytest.approx(4.0) and found["rms"] < 0.05 < found["rms_tau"]
    assert found["rms_lambda"] == found["rms"] and found["points"] == 5
    same = aligning_ratio(small, small, "end", h=0.25)
    assert same["ratio"] == 1.0 and same["rms_tau"] == 0.0 < same["rms_lambda"]


def _sizes(best: tuple[float, float], spe: tuple[float, float]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    curves = [_curve(t, s) for t, s in zip(best, spe, strict=True)]
    mins = [minimum(c, "end") for c in curves]
    sizes = [{"label": f"N = {n}", "minimum": {"end": m}} for n, m in zip((100, 400), mins, strict=True)]
    ratio = {"tau": mins[1]["tau"] / mins[0]["tau"], "lambda": mins[1]["lambda"] / mins[0]["lambda"],
             "steps_per_epoch": spe[1] / spe[0], "bootstrap": bootstrap_ratio(*curves, "end", 50, 0)}
    return ratio, sizes


def test_verdict_follows_its_thresholds() -> None:
    def word(best: tuple[float, float], spe: tuple[float, float] = (10.0, 40.0)) -> str:
        return verdict(*_sizes(best, spe), "4× the data").split(":")[0]

    assert word((3.0, 3.0)) == "reproduced"
    assert word((4.0, 1.0)) == "not reproduced"  # λ stayed put: τ fell with the 4× steps per epoch
    assert word((1.5, 4.5)) == "partly reproduced"  # τ nearer put than λ, but ×3
    assert word((3.0, 100.0)) == "not reproduced (inconclusive)"
    # the other direction (h > 1: λ fixed would make τ grow, as with the width at ½ the lr)
    assert word((3.0, 3.0), (40.0, 10.0)) == "reproduced"
    assert word((1.0, 4.0), (40.0, 10.0)) == "not reproduced"


def _mtimes(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("metrics.jsonl")}


def test_quick_runs_derives_lambda_from_tau_and_resumes(tmp_path: Path) -> None:
    from experiments.common import start
    from experiments.tau_transfer.__main__ import main, one_sweep

    results = main(["--quick", "--output", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["quick"] and saved["settings"]["scale"] == "quick"
    assert len(saved["invocations"]) == 1  # written twice (data, then width) by one invocation: one entry
    assert saved["verdict"].split(":")[0].split(" (")[0] in ("reproduced", "partly reproduced", "not reproduced")
    for name in ("tau_vs_lambda", "tau_vs_lambda_best_epoch", "tau_vs_lambda_width"):
        assert (tmp_path / f"{name}.png").stat().st_size > 20_000
    s = saved["settings"]
    small, large = results["sizes"]
    assert large["steps_per_epoch"] > 2.5 * small["steps_per_epoch"]  # 4× the documents: ~4× the steps
    for size in [*results["sizes"], results["wide"]]:
        curve, best, lr = size["curve"], size["minimum"]["end"], size["lr"]
        assert curve["taus"] == s["taus"] and curve["seeds"] == list(range(s["seeds"]))
        # each trial's λ is decaylab's 1/(η·τ·steps per epoch) on its own training split
        for tau, lam in zip(curve["taus"], curve["lambdas"], strict=True):
            assert lam == pytest.approx(1 / (lr * tau * size["steps_per_epoch"]), rel=1e-9)
        assert best["tau"] * best["lambda"] == pytest.approx(1 / (lr * size["steps_per_epoch"]), rel=1e-9)
        assert all(math.isfinite(v) for row in curve["loss"]["end"] for v in row)
    ratio = results["ratios"]["data"]["end"]
    assert ratio["tau"] * ratio["lambda"] * ratio["steps_per_epoch"] == pytest.approx(1.0, rel=1e-9)
    # the wide model trains on the same split and tokenizer at half the lr: λ fixed would double τ
    width = results["ratios"]["width"]["end"]
    assert width["steps_per_epoch"] == 1.0 and results["wide"]["d_model"] == 2 * s["d_model"]
    assert width["tau"] * width["lambda"] == pytest.approx(s["lr"] / s["wide"]["lr"], rel=1e-9)
    # a killed run continues: the large size's sweep lost its summary; no trial is trained again, same answer
    sweep = tmp_path / "runs" / f"quick-n{s['sizes'][1]}"
    before = _mtimes(sweep / "trials")
    (sweep / "summary.json").unlink()
    again = main(["--quick", "--output", str(tmp_path)])
    assert _mtimes(sweep / "trials") == before
    assert again["ratios"]["data"]["end"]["tau"] == ratio["tau"]
    # a changed setting is refused, not answered from the old sweep under the same key
    exp = start("tau_transfer", "", ["--quick", "--output", str(tmp_path)])
    for changed, what in (({**s, "seeds": 3}, "spec.seeds"), ({**s, "lr": 0.02}, "base.train.lr")):
        with pytest.raises(UserError, match=what):
            one_sweep(exp, changed, "quick", s["sizes"][1], "changed")
