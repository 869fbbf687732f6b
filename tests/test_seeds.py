"""Seed repeats: `data_seed` fixes the data order, `sweep --seeds N` repeats every point with N seeds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from decaylab.data.prepare import epoch_groups
from decaylab.errors import UserError
from decaylab.files import read_jsonl
from decaylab.sweep import sweep
from decaylab.sweep.points import Point, trial_config
from decaylab.training import Trainer
from tests.conftest import tiny_config
from tests.test_sweep import CLI, tiny_flags


def test_data_seed_fixes_the_batch_order_and_seed_the_weights(tmp_path: Path) -> None:
    base = tiny_config("seed=3")
    repeat = tiny_config("seed=4", "data_seed=3")
    other = tiny_config("seed=4")
    a = Trainer(base, tmp_path / "a", quiet=True)
    b = Trainer(repeat, tmp_path / "b", quiet=True)
    c = Trainer(other, tmp_path / "c", quiet=True)
    for epoch in range(2):
        assert epoch_groups(repeat, b.train_data, epoch) == epoch_groups(base, a.train_data, epoch)
    assert epoch_groups(other, c.train_data, 0) != epoch_groups(base, a.train_data, 0)
    assert b.valid_eval.sources == a.valid_eval.sources  # evaluation subsets follow the data order's seed
    first = next(iter(a.model.state_dict()))
    assert not a.model.state_dict()[first].equal(b.model.state_dict()[first])  # initial weights follow `seed`


def test_grid_with_seeds_repeats_every_point_and_reports_mean_and_se(tmp_path: Path) -> None:
    cfg = tiny_config("model.dropout=0", "seed=5")
    result = sweep(cfg, lambdas="0.3", modes="decoupled", seeds=3, output=tmp_path / "s", final=False)
    assert [r["trial"] for r in result.trials] == [f"{point}-seed{s}" for point in ("none-0-p0", "decoupled-0.3-p0")
                                                   for s in (5, 6, 7)]
    assert all(row["n_folds"] == 3 and row["se"] is not None and row["se"] > 0 for row in result.table)
    losses = [r["best_val_loss"] for r in result.trials[:3]]
    assert len(set(losses)) == 3  # the seeds really differ
    assert result.table[0]["mean"] == pytest.approx(sum(losses) / 3)


def test_a_seed_repeat_equals_its_own_run(tmp_path: Path) -> None:
    cfg = tiny_config("model.dropout=0.1", "seed=5", "train.epochs=2")
    result = sweep(cfg, lambdas="0.3", modes="decoupled", seeds=2, output=tmp_path / "s", final=False)
    row = next(r for r in result.trials if r["trial"] == "decoupled-0.3-p0.1-seed6")
    single = trial_config(cfg, Point("decoupled", 0.3, 0.1), ["decoupled"], seed=6)
    assert single.seed == 6 and single.data_seed == 5
    alone = Trainer(single, tmp_path / "alone", quiet=True).fit()  # draws its own initial weights with seed 6
    assert [r["val_loss"] for r in read_jsonl(tmp_path / "s" / row["run"] / "metrics.jsonl")] == \
        [r["val_loss"] for r in alone.history]


def test_vectorized_seeds_match_the_sequential_sweep(tmp_path: Path) -> None:
    cfg = tiny_config("model.dropout=0")
    common = {"strategy": "cv", "folds": 2, "lambdas": "0.3", "modes": "decoupled", "seeds": 2, "final": False}
    sequential = sweep(cfg, output=tmp_path / "seq", **common)
    vectorized = sweep(cfg, output=tmp_path / "vec", vectorized=True, **common)
    assert [r["trial"] for r in vectorized.trials] == [r["trial"] for r in sequential.trials]
    assert len(sequential.trials) == 2 * 2 * 2  # points × seeds × folds
    for v, s in zip(vectorized.trials, sequential.trials, strict=True):
        assert (v["seed"], v["fold"]) == (s["seed"], s["fold"])
        assert v["best_val_loss"] == pytest.approx(s["best_val_loss"], rel=1e-4)
    assert len({r["stack"] for r in vectorized.trials}) == 2  # one stack per fold, seeds and points in it


def test_the_final_model_reuses_the_base_seed_trial(tmp_path: Path) -> None:
    result = sweep(tiny_config(), lambdas="0.3", modes="decoupled", seeds=2, output=tmp_path / "s")
    assert result.final["reused_trial"] is not None and result.final["reused_trial"].endswith("-seed0")


@pytest.mark.parametrize("options,message", [
    ({"strategy": "halving", "seeds": 2}, "--seeds: only applies to --strategy grid or cv"),
    ({"strategy": "optuna", "seeds": 2}, "--seeds: only applies to --strategy grid or cv"),
    ({"seeds": 0}, "--seeds: must be at least 1"),
])
def test_bad_seeds_are_refused(options: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=message):
        sweep(tiny_config(), output=tmp_path / "s", **options)
    assert not (tmp_path / "s").exists()


def test_seeds_through_the_cli(tmp_path: Path) -> None:
    import subprocess

    out = tmp_path / "s"
    done = subprocess.run(CLI + ["sweep", *tiny_flags(), "--lambdas", "0.3", "--seeds", "2", "--no-final", "-q",
                                 "-o", str(out)], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert sorted(r["seed"] for r in read_jsonl(out / "trials.jsonl")) == [0, 0, 1, 1]
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "2 settings × 2 seeds" in page
    assert re.search(r"<th[^>]*>seed</th>", page)  # the trials table's column


def test_a_seeded_sweep_resumes_with_its_own_seeds(tmp_path: Path) -> None:
    out = tmp_path / "s"
    first = sweep(tiny_config(), lambdas="0.3", modes="decoupled", seeds=2, output=out, final=False)
    again = sweep(resume=out, final=False)  # --seeds comes from sweep.yaml
    assert again.table == first.table and len(again.trials) == 4
    with pytest.raises(UserError, match="spec.seeds=2, not 3"):
        sweep(resume=out, seeds=3, final=False)
