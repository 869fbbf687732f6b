"""The examples in examples/ run, on small data: each tunes λ through decaylab.sweep and writes its report."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

from decaylab.files import read_jsonl

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def example(name: str) -> ModuleType:
    """Import examples/<name>.py as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_cv_sweep(out: Path, points: int, folds: int = 3) -> dict:
    """A finished CV sweep with its report: every point on every fold, the final model tested once."""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["strategy"] == "cv" and summary["spec"]["folds"] == folds
    assert [row["n_folds"] for row in summary["table"]] == [folds] * points
    assert summary["final"]["test"]["loss"] > 0 and summary["final"]["reused_trial"] is None
    assert len(read_jsonl(out / "trials.jsonl")) == points * folds
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "audit unavailable" not in page and (out / "plots" / "u_curve.png").is_file()
    return summary


def test_hf_gpt2_trainer_tuned_by_3_fold_cv(tmp_path: Path) -> None:
    hf = example("hf_gpt2_cv")
    result = hf.main(["--output", str(tmp_path / "hf"), "--documents", "60", "--vocab", "128", "--epochs", "1",
                      "--lambdas", "1"])
    summary = check_cv_sweep(tmp_path / "hf", points=2)
    assert summary["objective"].endswith("hf_gpt2_cv.py:gpt2") and result.best["rule"] == "1se"
    trial = tmp_path / "hf" / "trials" / "decoupled-1-fold1"
    assert list((trial / "hf").glob("checkpoint-*"))  # the Trainer's own checkpoint, recorded for resume
    audit = json.loads((trial / "audit.json").read_text())
    decayed = {row["name"] for row in audit["rows"] if row["decayed"]}
    assert "transformer.h.0.attn.c_attn.weight" in decayed and "transformer.h.0.ln_1.weight" not in decayed


def test_plain_torch_loop_tuned_by_3_fold_cv(tmp_path: Path) -> None:
    lm = example("torch_lm_cv")
    lm.main(["--output", str(tmp_path / "lm"), "--speeches", "60", "--width", "16", "--epochs", "2",
             "--lambdas", "1"])
    check_cv_sweep(tmp_path / "lm", points=2)
    rows = read_jsonl(tmp_path / "lm" / "trials" / "decoupled-1-fold2" / "metrics.jsonl")
    assert [row["epoch"] for row in rows] == [1.0, 2.0] and rows[0]["decay_factor"] < 1


def test_the_seed_listing_tuned_by_a_grid(tmp_path: Path) -> None:
    seed = example("seed_listing_fixed")
    result = seed.tune_listing_2(str(tmp_path / "seed"), lambdas="1", epochs=2, width=16)
    summary = json.loads((tmp_path / "seed" / "summary.json").read_text())
    assert [(row["mode"], row["lambda"]) for row in summary["table"]] == [("none", 0.0), ("decoupled", 1.0)]
    assert summary["final"]["reused_trial"] == ("none-0" if result.best["lambda"] == 0 else "decoupled-1")
    assert 0 <= summary["final"]["test"]["exact_match"] <= 1
    assert (tmp_path / "seed" / "report.html").is_file()
