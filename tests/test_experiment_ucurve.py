"""experiments/ucurve: the curve logic on made-up numbers, and the --quick variant end to end (three datasets, five
regularizers, CV and whole-split sweeps, test-split paired tests), resumed without retraining."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from experiments.ucurve.curves import Curve, Point, over_regularization, steps_between, summary_row, u_shape
from experiments.ucurve.settings import FAMILIES, grid

LAMS = [0.0, 1e-4, 3.16228e-4, 1e-3, 3.16228e-3, 1e-2, 3.16228e-2, 1e-1]


def _curve(means: list[float], se: float = 0.01, family: str = "l2") -> Curve:
    return Curve("d", family, [Point(x, "none" if x == 0 else family, m, se, 3, test_loss=m + 0.1)
                               for x, m in zip(LAMS, means, strict=True)])


def test_curve_checks() -> None:
    u = _curve([5.10, 5.08, 5.05, 5.00, 5.005, 5.10, 5.30, 5.60])
    assert u.chosen("min").x == 1e-3 and u.chosen("1se").x == 3.16228e-3  # 5.005 lies within one SE of 5.00
    shape = u_shape(u)
    assert shape["u_shaped"] and shape["strong_end"] == 1e-1 and shape["zero_minus_min_se"] == pytest.approx(10)
    over = over_regularization(u, lambda a, b: None)
    assert over["10x"]["x"] == 1e-2 and over["10x"]["cv_delta_se"] == pytest.approx(10) and over["10x"]["hurts"]
    assert over["100x"]["x"] == 1e-1 and over["100x"]["hurts"]
    row = summary_row(u)
    assert row["test_optimal"] == 1e-3 and row["steps_to_test_optimal"] == {"min": 0, "1se": 1}
    assert steps_between(u, 0.0, 1e-4) == 1  # λ = 0 is the step below the smallest λ
    # flat within one SE at λ = 0: not a U (the left side does not rise), and the 100× end is off the grid
    flat = _curve([5.005, 5.004, 5.003, 5.000, 5.002, 5.003, 5.004, 5.30])
    assert not u_shape(flat)["u_shaped"]
    edge = _curve([5.5, 5.4, 5.3, 5.2, 5.1, 5.05, 5.0, 4.9])  # keeps falling: the minimum is the grid's end
    assert u_shape(edge)["interior"] is False and over_regularization(edge, lambda a, b: None)["10x"] is None


def _mtimes(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("metrics.jsonl")}


def test_ucurve_quick_and_resume(tmp_path: Path) -> None:
    from experiments.ucurve.__main__ import main

    results = main(["--quick", "--output", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["quick"] and saved["verdict"].startswith("item 1 ") and "item 4 " in saved["verdict"]
    settings = saved["settings"]
    assert results["shares"]["curves"] == 3 * len(FAMILIES)
    from experiments.ucurve.table import table

    assert len(table(saved).splitlines()) == 2 + 3 * len(FAMILIES)  # the docs' table: one row per curve
    for name, dataset in results["datasets"].items():
        assert (tmp_path / f"ucurve-{name}.png").stat().st_size > 20_000
        assert dataset["same_start"]  # one tokenizer and one initialization for all ten sweeps of a dataset
        baseline = {(f["points"][0]["cv_mean"], f["points"][0]["test_loss"]) for f in dataset["families"].values()}
        assert len(baseline) == 1  # λ = 0 (p = 0) was trained once and starts every curve
        for family, entry in dataset["families"].items():
            xs = [p["x"] for p in entry["points"]]
            expected = grid(settings, family) if family == "dropout" else [0.0, *grid(settings, family)]
            assert xs == pytest.approx(expected)
            means = [p["cv_mean"] for p in entry["points"]]
            assert entry["chosen"]["min"] == xs[means.index(min(means))]
            assert entry["chosen"]["1se"] >= entry["chosen"]["min"]
            tests = [p["test_loss"] for p in entry["points"]]
            assert all(math.isfinite(t) for t in tests) and entry["test_optimal"] == xs[tests.index(min(tests))]
            for rule in ("min", "1se"):
                steps = xs.index(entry["chosen"][rule]) - xs.index(entry["test_optimal"])
                assert entry["steps_to_test_optimal"][rule] == steps
                assert entry["within_one_step"][rule] == (abs(steps) <= 1)
                versus = entry["versus_zero"][rule]
                if versus is None:
                    assert entry["chosen"][rule] == 0.0
                    continue
                assert versus["loss"]["b"] == pytest.approx(tests[0]) and versus["loss"]["examples"] > 0
                assert ("bleu" in versus) == (dataset["arch"] != "decoder")
    # a killed run continues: one sweep lost its summary; no finished trial is trained again, the answer is the same
    sweep = tmp_path / "runs" / "bible-kjv-web-cv-l1"
    before = _mtimes(sweep / "trials")
    (sweep / "summary.json").unlink()
    again = main(["--quick", "--output", str(tmp_path)])
    assert _mtimes(sweep / "trials") == before
    # and it resumes as it started, without a final model (final=False is handed to the resume too)
    assert json.loads((sweep / "summary.json").read_text())["final"] is None
    kjv = "bible-kjv-web"
    assert again["datasets"][kjv]["families"]["l1"] == results["datasets"][kjv]["families"]["l1"]


def test_verdict_leaves_out_what_the_grid_did_not_measure() -> None:
    from experiments.ucurve.__main__ import verdict

    shares = {"curves": 2, "u_shaped": 1.0, "beats_zero": 1.0, "over_hurts": None, "over_measured": 0,
              "over10_measured": 1, "over10_hurts_cv": 1.0, "over10_hurts_test": 1.0,
              "within_one_step": {"min": 1.0, "1se": 0.5}}
    said = verdict(shares)
    # no grid reaching 100× above its optimum is "not measured", not a 0 % share that fails item 1
    assert said.startswith("item 1 reproduced") and "not measured" in said and "item 4 reproduced" in said
    assert verdict({**shares, "over_hurts": 0.0, "over_measured": 2}).startswith("item 1 not reproduced")
