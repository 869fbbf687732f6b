"""experiments/: each experiment's --quick variant runs end to end (its numbers are not the result), resumes
without redoing finished trials, and writes results.json and its figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from experiments.common import start
from experiments.fits import fit_line, log_argmin


def test_folders_full_quick_and_given(tmp_path: Path) -> None:
    given = start("ground_truth", "", ["--output", str(tmp_path / "o")])
    assert given.output == tmp_path / "o" and given.runs == tmp_path / "o" / "runs" and not given.quick
    quick = start("ground_truth", "", ["--quick", "--output", str(tmp_path / "q")])
    assert quick.quick and quick.command.endswith(f"--quick --output {tmp_path / 'q'}")


def test_fits() -> None:
    line = fit_line([0, 1, 2, 3], [1, -1, -3, -5.2])
    assert line["slope"] == pytest.approx(-2.06) and 0 < line["slope_se"] < 0.1
    assert math.isnan(fit_line([0, 1], [0, 1])["slope_se"])
    lams = [1e-3, 1e-2, 1e-1, 1.0]
    # a parabola in log λ with its vertex at log λ = log 0.02 is found between the grid points
    values = [(math.log(lam) - math.log(0.02)) ** 2 for lam in lams]
    assert log_argmin(lams, values)[0] == pytest.approx(0.02)
    assert log_argmin(lams, values, refine=False) == (1e-2, 1)
    assert log_argmin(lams, [4, 3, 2, 1])[0] == 1.0  # an edge minimum stays at the edge


def _mtimes(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("metrics.jsonl")}


def test_ground_truth_quick_and_resume(tmp_path: Path) -> None:
    from experiments.ground_truth.__main__ import main

    results = main(["--quick", "--output", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["quick"] and saved["verdict"].split(":")[0] in ("reproduced", "partly reproduced",
                                                                  "not reproduced")
    assert saved["versions"]["decaylab"] and saved["machine"]["cores"] and saved["wall_s"] > 0
    assert (tmp_path / "cv_vs_optimum.png").stat().st_size > 20_000
    # the theory: λ* = σ²d/(m‖w*‖²) with m the fold's training size, and the Monte Carlo minimum agrees with it
    assert results["train_size_fold"] == 80 and results["lambda_star_fold"] == pytest.approx(20 / 80)
    assert results["monte_carlo"]["argmin_over_lambda_star"] == pytest.approx(1.0, rel=0.15)
    # every trial trained to the closed-form ridge solution of decaylab's l2 penalty
    assert results["convergence"]["max_closed_form_distance"] < 1e-5
    grid = saved["settings"]["grid"]
    for teacher in results["teachers"]:
        assert teacher["chosen"]["min"] in [0.0, *grid] and teacher["chosen"]["1se"] >= teacher["chosen"]["min"]
        assert teacher["final_test_loss"] == pytest.approx(teacher["test_loss"]["min"], abs=1e-6)
    # a killed experiment continues: teacher 1's sweep lost its summary (killed before the end); finished trials
    # are not trained again and the answer is the same
    sweep = tmp_path / "runs" / "teacher1"
    before = _mtimes(sweep / "trials")
    (sweep / "summary.json").unlink()
    again = main(["--quick", "--output", str(tmp_path)])
    assert _mtimes(sweep / "trials") == before
    assert again["teachers"][1]["chosen"] == results["teachers"][1]["chosen"]
    # results.json keeps the first invocation's clock beside the second's
    rewritten = json.loads((tmp_path / "results.json").read_text())
    assert [i["wall_s"] for i in rewritten["invocations"]][:1] == [saved["wall_s"]]
    assert len(rewritten["invocations"]) == 2 and rewritten["wall_s"] == rewritten["invocations"][1]["wall_s"]
    # a sweep started with other settings is refused by name, not read back as if it were this one's
    recorded = sweep.with_name("teacher1.options.json")
    options = json.loads(recorded.read_text())
    recorded.write_text(json.dumps({**options, "folds": 7}))
    with pytest.raises(SystemExit, match=r"teacher1: this sweep was started with other settings \(folds differ\)"):
        main(["--quick", "--output", str(tmp_path)])


def test_lr_lambda_quick_and_resume(tmp_path: Path) -> None:
    from experiments.lr_lambda.__main__ import main

    from decaylab.data.prepare import encode_split
    from decaylab.data.splits import load_splits
    from decaylab.evaluation.metrics import corpus_loss
    from decaylab.runfolder.load import load_trained

    out = main(["--quick", "--output", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["verdict"].split(":")[0] in ("reproduced", "partly reproduced", "not reproduced")
    for name in ("heatmaps", "slopes"):
        assert (tmp_path / f"{name}.png").stat().st_size > 20_000
    families = out["families"]
    assert set(families) == {"adam_l2", "adamw_lr", "adamw_schedule", "sgdw_schedule"}
    for key, family in families.items():
        assert [p["lr"] for p in family["per_lr"]] == saved["settings"]["lrs"][family["optimizer"]]
        for p in family["per_lr"]:
            lams = [c["lambda"] for c in p["cells"]]
            own_zero = key in ("adam_l2", "sgdw_schedule")  # sgdw's sibling sgd_l2 is not in --quick
            trained = families[family["view_of"] or key]
            expected = [lam * p["lr"] for lam in saved["settings"]["families"]["adamw_lr"]["lambdas"]] \
                if family["view_of"] else trained["lambdas"]
            assert lams == pytest.approx(([0.0] if own_zero else []) + expected, rel=1e-5)
            assert all(math.isfinite(c["final_val_loss"]) and len(c["final_per_seed"]) == 2 for c in p["cells"])
            assert all(c["final_val_loss"] == pytest.approx(sum(c["final_per_seed"]) / 2) for c in p["cells"])
            assert p["baseline"] is not None and p["baseline"]["lambda"] == 0  # its own, or its sibling's
            assert len(p["per_seed"]) == 2
            # the decay acted, as its rule says: more λ, smaller decayed weights at the end
            norms = [c["decay_norm"] for c in p["cells"]]
            assert all(a >= b - 1e-6 for a, b in zip(norms, norms[1:], strict=False)), (key, p["lr"], norms)
        assert len(family["fit_per_seed"]) == 2
    # AdamW × schedule is AdamW × η's runs read with λ·η: the same folders and losses, the slope moved by exactly 1
    view, source = families["adamw_schedule"], families["adamw_lr"]
    for p, q in zip(view["per_lr"], source["per_lr"], strict=True):
        assert [c["run"] for c in p["cells"]] == [c["run"] for c in q["cells"]]
        assert [c["final_val_loss"] for c in p["cells"]] == [c["final_val_loss"] for c in q["cells"]]
    if math.isfinite(source["fit"]["slope"]):
        assert view["fit"]["slope"] == pytest.approx(source["fit"]["slope"] + 1)
    # the paired test's per-sentence losses add up to decaylab's own corpus loss of the same model
    assert [p["training_seed"] for p in out["paired_test"]] == [0, 1]
    paired = out["paired_test"][0]
    run = load_trained(tmp_path / "runs" / paired["system_a"]["run"], "last", "cpu")
    test = encode_split(run.config, run.tokenizer, load_splits(run.config.data).test)
    assert paired["examples"] == len(test) == 40
    assert paired["a"] == pytest.approx(corpus_loss(run.model, test, run.device), rel=1e-6)
    assert paired["ci_low"] <= paired["difference"] <= paired["ci_high"]
    # the docs' tables come from results.json: one row per η, its λ* or why it is left out
    from experiments.lr_lambda.table import optima, paired

    adam_table = optima(saved, "adam").splitlines()
    assert len(adam_table) == 2 + len(saved["settings"]["lrs"]["adam"]) + 1 and "AdamW, decay × η" in adam_table[0]
    assert len(paired(saved).splitlines()) == 2 + 2
    # run again: every sweep is read back, nothing is trained
    before = _mtimes(tmp_path / "runs")
    again = main(["--quick", "--output", str(tmp_path)])
    assert _mtimes(tmp_path / "runs") == before
    assert again["families"]["adamw_lr"]["per_lr"] == families["adamw_lr"]["per_lr"]
