"""Sweep building blocks without training: λ grids, option checks, folds, selection rules, halving plans."""

from __future__ import annotations

import math

import pytest

from decaylab.errors import UserError
from decaylab.sweep.folds import fold_indices, fold_splits
from decaylab.sweep.halving import halving_budgets, keep_count, rank
from decaylab.sweep.points import Point, grid_points, trial_config
from decaylab.sweep.selection import build_table, choose, mean_se
from decaylab.sweep.spec import build_spec, parse_lambdas
from decaylab.sweep.store import first_difference
from tests.conftest import tiny_config


def test_log_grid_is_inclusive_and_adds_zero() -> None:
    values = parse_lambdas("log:1e-5:1e-1:5")
    assert values == [0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    assert parse_lambdas("log:1e-5:1e-1:5", add_zero=False)[0] == 1e-5
    assert parse_lambdas("1e-3, 0.1,1e-3") == [0.0, 1e-3, 0.1]  # sorted, deduplicated
    assert parse_lambdas("0,1e-2", add_zero=False) == [0.0, 1e-2]  # an explicit 0 stays


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty list"),
        (" , ", "empty list"),
        ("0.1,-1e-3", "λ must be ≥ 0"),
        ("log:0:1e-1:4", "must be > 0"),
        ("log:1e-1:1e-3:4", "LO must not exceed HI"),
        ("log:1e-5:1e-1", "expected log:LO:HI:N"),
        ("log:1e-5:1e-1:x", "N must be a whole number"),
        ("1e-3,abc", "'abc' is not a number"),
        ("nan", "not a finite number"),
    ],
)
def test_bad_lambda_lists(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_lambdas(text)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "random"}, "--strategy: 'random' is not one of grid, cv, optuna, halving"),
        ({"modes": "decoupled,weird"}, "--mode: 'weird' is not one of"),
        ({"modes": "none"}, "--mode: 'none' is not one of"),
        ({"metric": "accuracy"}, "--metric: 'accuracy'"),
        ({"rule": "2se"}, "--rule: '2se'"),
        ({"strategy": "cv", "folds": 1}, "--folds: must be at least 2"),
        ({"strategy": "optuna", "trials": 0}, "--trials: must be at least 1"),
        ({"strategy": "optuna", "pruner": "hyperband"}, "--pruner: 'hyperband'"),
        ({"strategy": "halving", "eta": 1}, "--eta: must be at least 2"),
        ({"strategy": "grid", "folds": 3}, "--folds: only applies to --strategy cv"),
        ({"strategy": "grid", "storage": "sqlite:///x.db"}, "--storage: only applies to --strategy optuna"),
        ({"strategy": "cv", "join": True}, "--join: only applies to --strategy optuna"),
        ({"dropouts": "0,1.5"}, "--dropout: each value must be in"),
        ({"strategy": "optuna", "lambdas": "0", "no_zero": False}, "Optuna needs a positive range"),
    ],
)
def test_bad_sweep_options(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        build_spec(**kwargs)


def test_points_share_one_zero_baseline_and_map_l1() -> None:
    base = tiny_config("regularization.l1=0.5")
    spec = build_spec(lambdas="0,1e-3", modes="decoupled,coupled,l1", dropouts="0,0.2")
    points = grid_points(spec, base)
    assert [p for p in points if p.lam == 0] == [Point("none", 0.0, 0.0), Point("none", 0.0, 0.2)]
    assert len(points) == 2 * (1 + 3)
    l1 = trial_config(base, Point("l1", 1e-3, 0.2), spec.modes)
    assert (l1.regularization.mode, l1.regularization.weight_decay, l1.regularization.l1) == ("none", 0.0, 1e-3)
    assert l1.model.dropout == 0.2
    zero = trial_config(base, Point("none", 0.0, 0.0), spec.modes)
    assert (zero.regularization.weight_decay, zero.regularization.l1) == (0.0, 0.0)  # l1 is swept: baseline has none
    dec = trial_config(base, Point("decoupled", 1e-3, 0.0), spec.modes)
    assert (dec.regularization.mode, dec.regularization.weight_decay, dec.regularization.l1) == ("decoupled", 1e-3,
                                                                                                 0.5)


def test_fold_assignment_is_deterministic_disjoint_and_covering() -> None:
    folds = fold_indices(44, 5, seed=3)
    assert folds == fold_indices(44, 5, seed=3)
    assert folds != fold_indices(44, 5, seed=4)
    flat = [i for fold in folds for i in fold]
    assert sorted(flat) == list(range(44))  # disjoint and covering
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    with pytest.raises(UserError, match="folds: must be between 2 and the number of training examples"):
        fold_indices(4, 5, seed=0)


def test_fold_splits_never_touch_validation_or_test(tiny) -> None:
    from decaylab.data.splits import load_splits

    splits = load_splits(tiny.data)
    folds = fold_indices(len(splits.train), 3, tiny.seed)
    for k, held in enumerate(folds):
        part = fold_splits(splits, held, k, 3)
        assert len(part.train) + len(part.valid) == len(splits.train)
        assert {p.key for p in part.valid}.isdisjoint({p.key for p in part.train})
        assert {p.key for p in part.valid} <= {p.key for p in splits.train}
        assert part.test == []


def test_mean_and_standard_error() -> None:
    mean, se = mean_se([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert se == pytest.approx(math.sqrt(5 / 3) / 2)
    assert mean_se([3.0]) == (3.0, None)


def _rows(values: dict[tuple[str, float], list[float]], status: str = "done") -> list[dict]:
    return [{"trial": f"{mode}-{lam}-{i}", "mode": mode, "lambda": lam, "dropout": 0.1, "best_val_loss": v,
             "bleu": 100 - 10 * v, "chrf": None, "status": status, "epochs": 3}
            for (mode, lam), vs in values.items() for i, v in enumerate(vs)]


def test_min_and_one_standard_error_rules_on_a_hand_made_table() -> None:
    # means: λ=0 → 3.0, 1e-3 → 2.5 (best, SE 0.1), 1e-2 → 2.55 (within 1 SE), 1e-1 → 2.7 (outside)
    rows = _rows({("none", 0.0): [3.0, 3.0, 3.0], ("decoupled", 1e-3): [2.4, 2.5, 2.6],
                  ("decoupled", 1e-2): [2.45, 2.55, 2.65], ("decoupled", 1e-1): [2.6, 2.7, 2.8]})
    table = build_table(rows, "loss")
    by_lam = {e["lambda"]: e for e in table}
    assert by_lam[1e-3]["mean"] == pytest.approx(2.5) and by_lam[1e-3]["n_folds"] == 3
    assert by_lam[1e-3]["se"] == pytest.approx(0.1 / math.sqrt(3))
    assert choose(table, "min", "loss")["lambda"] == 1e-3
    # SE of the best = 0.0577: 1e-2 (2.55) is within 2.5577, 1e-1 is not
    assert choose(table, "1se", "loss")["lambda"] == 1e-2
    # BLEU: higher is better, the same ranking mirrored
    assert choose(build_table(rows, "bleu"), "min", "bleu")["lambda"] == 1e-3
    assert choose(build_table(rows, "bleu"), "1se", "bleu")["lambda"] == 1e-2


def test_one_se_stays_on_the_best_mode_and_single_runs_fall_back_to_min() -> None:
    rows = _rows({("none", 0.0): [2.0, 2.2], ("coupled", 1.0): [2.05, 2.15], ("decoupled", 1e-4): [2.5, 2.6],
                  ("decoupled", 1e-1): [3.0, 3.1]})
    table = build_table(rows, "loss")
    # the baseline is best; the 1-SE rule walks the curve of the best λ > 0 mode (coupled), not decoupled's λ
    assert choose(table, "1se", "loss")["mode"] == "coupled"
    single = build_table(_rows({("none", 0.0): [2.0], ("decoupled", 1e-2): [1.9], ("decoupled", 1e-1): [1.95]}),
                         "loss")
    assert choose(single, "1se", "loss")["lambda"] == 1e-2  # no SE without folds: 1se is min


def test_unfinished_points_are_never_chosen() -> None:
    rows = _rows({("decoupled", 1e-3): [1.0]}, status="pruned") + _rows({("none", 0.0): [2.0]})
    assert choose(build_table(rows, "loss"), "min", "loss")["lambda"] == 0.0
    with pytest.raises(UserError, match="no trial finished"):
        choose(build_table(_rows({("none", 0.0): [2.0]}, status="diverged"), "loss"), "min", "loss")


def test_halving_budgets_and_survivors() -> None:
    assert halving_budgets(10, 9, 3) == [1, 3, 9]
    assert halving_budgets(9, 27, 3) == [3, 9, 27]
    assert halving_budgets(4, 8, 2) == [2, 4, 8]
    assert halving_budgets(10, 2, 3) == [1, 2]  # the budget reaches the full epochs early: fewer rungs
    assert halving_budgets(1, 5, 3) == [5]
    assert halving_budgets(10, 9, 3, min_epochs=2) == [2, 6, 9]
    assert [keep_count(n, 3) for n in (10, 3, 2)] == [3, 1, 1]
    rows = [{"trial": k, "best_val_loss": v, "status": s}
            for k, v, s in [("a", 3.0, "done"), ("b", 1.0, "done"), ("c", 0.5, "diverged"), ("d", 2.0, "done"),
                            ("e", 1.0, "done")]]
    assert [r["trial"] for r in rank(rows, "loss")] == ["b", "e", "d", "a", "c"]  # ties keep plan order


def test_first_difference_names_the_field() -> None:
    old = {"spec": {"lambdas": [0.0, 1e-3]}, "base": {"train": {"epochs": 3}}}
    assert first_difference(old, old) is None
    assert first_difference(old, {"spec": {"lambdas": [0.0, 1e-2]}, "base": {"train": {"epochs": 3}}}) == (
        "spec.lambdas[1]", 1e-3, 1e-2)
    assert first_difference(old, {"spec": {"lambdas": [0.0, 1e-3]}, "base": {"train": {"epochs": 4}}})[0] == \
        "base.train.epochs"
