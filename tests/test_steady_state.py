"""Steady-state diagnostics (training/steady.py): hand-computed values, both engines' rows, and their agreement."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from decaylab.regularization import Regularization
from decaylab.runfolder.layout import RunPaths
from decaylab.training import Trainer
from decaylab.training.loop import RunState
from decaylab.training.stacked import StackedTrainer
from decaylab.training.steady import MATRICES, SCALE_INVARIANT, SUMMARY_FIELDS, SteadyProbe, SteadyView, predictions
from tests.conftest import tiny_config
from tests.test_vectorized import variant

THETA, SHRINK, LR, FACTOR = 0.01, 0.95, 0.01, 0.999  # the known step: rotate by θ, scale by 0.95; lr; 1 − d


class Normalized(nn.Module):
    """A matrix whose output only reaches the loss through a LayerNorm (scale-invariant), and one that is not."""

    scale_invariant = (r"^inner\.",)

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(2, 2, bias=True)
        self.norm = nn.LayerNorm(2)
        self.outer = nn.Linear(2, 3, bias=False)
        self.frozen = nn.Linear(2, 2, bias=False)  # outside the decay set below


def view_of(model: nn.Module, runs: list[RunState], multipliers: dict[str, float]) -> SteadyView:
    return SteadyView(runs, dict(model.named_parameters()), multipliers, model, LR, lambda: [FACTOR], stacked=False)


def known_step(model: Normalized) -> None:
    """inner: [[2, 0], [0, 0]] -> 0.95·2·[[cos θ, sin θ], [0, 0]], gradient [[0, 0], [3, 4]]; outer: scaled only."""
    with torch.no_grad():
        model.inner.weight.copy_(torch.tensor([[SHRINK * 2 * math.cos(THETA), SHRINK * 2 * math.sin(THETA)],
                                               [0.0, 0.0]]))
        model.outer.weight.mul_(SHRINK)
    model.inner.weight.grad = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    model.outer.weight.grad = torch.ones(3, 2)


@pytest.fixture
def run(tmp_path: Path) -> RunState:
    config = tiny_config("regularization.mode=decoupled", "regularization.weight_decay=0.1", "train.optimizer=adam")
    return RunState("r", config, RunPaths(tmp_path / "r"))


def test_diagnostics_of_a_known_step_by_hand(run: RunState) -> None:
    torch.manual_seed(0)
    model = Normalized()
    with torch.no_grad():
        model.inner.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 0.0]]))
    outer_before = model.outer.weight.detach().clone()
    multipliers = {"inner.weight": 1.0, "inner.bias": 1.0, "outer.weight": 0.5, "frozen.weight": 0.0}
    probe = SteadyProbe()
    probe.before_step(view_of(model, [run], multipliers))
    known_step(model)
    [fields] = probe.measure(view_of(model, [run], multipliers))

    # only the decayed matrices are measured: not the bias (1-D), not the matrix outside the decay set
    assert set(fields["steady_tensors"]) == {"inner.weight", "outer.weight"}
    # the model declares `inner` scale-invariant: the summary is over it alone
    assert fields["steady_scope"] == SCALE_INVARIANT
    decay = 1 - FACTOR
    grad_ratio = 5.0 / 2.0  # ‖[[0, 0], [3, 4]]‖ / ‖[[2, 0], [0, 0]]‖
    step = math.hypot((1 - decay) * 2 - SHRINK * 2 * math.cos(THETA), SHRINK * 2 * math.sin(THETA)) / LR
    assert fields["grad_ratio"] == pytest.approx(grad_ratio, rel=1e-6)
    assert fields["update_ratio"] == pytest.approx(step / 2.0, rel=1e-5)
    assert fields["angle"] == pytest.approx(THETA, rel=1e-5)  # a rotation by θ, whatever the shrink
    assert fields["angle_min"] == fields["angle"] == fields["angle_max"]
    beta = 0.9  # the config's Adam β₁
    assert fields["update_ratio_pred"] == pytest.approx(math.sqrt(2 * decay) / LR, rel=1e-9)
    assert fields["angle_pred"] == pytest.approx(math.sqrt(2 * decay * (1 - beta) / (1 + beta)), rel=1e-9)
    # outer only shrank, by 5 %: its step is (1 − d − 0.95)·w/η, and it did not turn
    g, a, angle = fields["steady_tensors"]["outer.weight"]
    assert angle == pytest.approx(0.0, abs=2e-4)
    assert a == pytest.approx((1 - decay * 0.5 - SHRINK) / LR, rel=1e-3)
    assert g == pytest.approx(math.sqrt(6) / float(outer_before.norm()), rel=1e-3)

    # without the declaration, the summary covers every decayed matrix (median of the two)
    Normalized.scale_invariant = ()
    try:
        model2 = Normalized()
        with torch.no_grad():
            model2.inner.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 0.0]]))
        probe.before_step(view_of(model2, [run], multipliers))
        known_step(model2)
        [plain] = probe.measure(view_of(model2, [run], multipliers))
    finally:
        Normalized.scale_invariant = (r"^inner\.",)
    assert plain["steady_scope"] == MATRICES
    assert plain["angle_max"] == pytest.approx(THETA, rel=1e-4) and plain["angle_min"] < 1e-3
    # predictions differ per tensor by their multiplier; the summary's is the median of the two
    halves = [math.sqrt(2 * decay * m) / LR for m in (1.0, 0.5)]
    assert plain["update_ratio_pred"] == pytest.approx(sum(halves) / 2, rel=1e-9)


def test_no_prediction_where_the_papers_do_not_apply(tmp_path: Path) -> None:
    for settings, expected in ((["regularization.mode=none"], None),
                               (["regularization.mode=coupled", "regularization.weight_decay=0.01"], None),
                               (["train.optimizer=sgd", "train.nesterov=true"], "ratio only"),
                               (["train.optimizer=sgd", "train.momentum=0"], "both")):
        config = tiny_config("regularization.mode=decoupled", "regularization.weight_decay=0.1", *settings)
        decay = 0.0 if config.regularization.mode == "none" else 1e-3
        ratio, angle = predictions(config, decay, 0.1)
        if expected is None:
            assert ratio is None and angle is None
        elif expected == "ratio only":
            assert ratio == pytest.approx(math.sqrt(2e-3) / 0.1) and angle is None
        else:  # SGD without momentum: Kosson's (and Defazio's) √(2ηλ)
            assert angle == pytest.approx(math.sqrt(2e-3)) and ratio * 0.1 == pytest.approx(angle)


def test_a_stack_measures_only_the_runs_still_in_it(tmp_path: Path) -> None:
    config = tiny_config("regularization.mode=decoupled", "regularization.weight_decay=0.1")
    runs = [RunState(f"r{k}", config, RunPaths(tmp_path / f"r{k}")) for k in range(3)]
    torch.manual_seed(1)
    weights = torch.randn(3, 4, 5)
    probe = SteadyProbe()
    model = nn.Linear(5, 4, bias=False)
    probe.before_step(SteadyView(runs, {"weight": weights}, {"weight": 1.0}, model, LR, lambda: [0.99, 0.98, 0.97]))
    after = weights * 0.9 + 0.01 * torch.randn(3, 4, 5)
    kept = after[[0, 2]].clone().requires_grad_()
    kept.grad = torch.ones_like(kept)
    # run 1 diverged and left the stack between the copy and the evaluation
    rows = probe.measure(SteadyView([runs[0], runs[2]], {"weight": kept}, {"weight": 1.0}, model, LR, lambda: []))
    for row, k in zip(rows, (0, 2), strict=True):
        cos = torch.nn.functional.cosine_similarity(weights[k].flatten().double(), after[k].flatten().double(), 0)
        assert row["angle"] == pytest.approx(float(torch.acos(cos)), rel=1e-4)
        assert row["grad_ratio"] == pytest.approx(math.sqrt(20) / float(weights[k].norm()), rel=1e-6)
        decay = 1 - (0.99, 0.98, 0.97)[k]
        assert row["update_ratio_pred"] == pytest.approx(math.sqrt(2 * decay) / LR, rel=1e-9)


def test_train_rows_carry_the_diagnostics_and_sgd_steps_along_its_gradient(tmp_path: Path) -> None:
    # plain SGD (no momentum, no clipping) with decoupled decay steps along the gradient: w' = (1 − ηλ)w − ηg, so the
    # step direction recovered from the weights before and after must be the gradient the step used, tensor by tensor
    lr, lam = 0.5, 0.1
    config = tiny_config("model.dropout=0", "regularization.mode=decoupled", f"regularization.weight_decay={lam}",
                         "train.optimizer=sgd", "train.momentum=0", f"train.lr={lr}", "train.clip_norm=null",
                         "train.eval_every=3")
    result = Trainer(config, tmp_path / "sgd", quiet=True).fit()
    assert len(result.history) >= 3
    for row in result.history:
        assert all(row[key] is not None for key in SUMMARY_FIELDS), row
        assert row["update_ratio_pred"] == pytest.approx(math.sqrt(2 * lam / lr), rel=1e-9)
        assert row["angle_pred"] == pytest.approx(math.sqrt(2 * lr * lam), rel=1e-9)
        for name, (grad, update, _) in row["steady_tensors"].items():
            assert update == pytest.approx(grad, rel=2e-3, abs=1e-6), (row["step"], name)
    model_names = {i.name for i in Regularization(**config.regularization.rule_settings()).plan(
        Trainer(config, tmp_path / "again", quiet=True).model).decayed if i.param.dim() >= 2}
    assert set(result.history[-1]["steady_tensors"]) == model_names


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_each_stacked_replica_measures_what_its_sequential_run_measures(optimizer: str, tmp_path: Path,
                                                                        data) -> None:
    splits, tokenizer = data
    extra = ["train.lr=0.3", "train.momentum=0.9"] if optimizer == "sgd" else ["train.lr=0.01"]
    base = tiny_config("model.dropout=0", "train.clip_norm=0.5", "train.schedule=cosine", "train.warmup_steps=2",
                       "train.eval_every=4", f"train.optimizer={optimizer}", *extra)
    configs = [variant(base, mode="none", weight_decay=0.0), variant(base, mode="decoupled", weight_decay=0.3),
               variant(base, mode="decoupled", weight_decay=0.3, decay_scaling="corrected")]
    replicas = StackedTrainer(configs, [tmp_path / f"v{i}" for i in range(3)], splits=splits,
                              tokenizer=tokenizer).fit()
    for i, (config, replica) in enumerate(zip(configs, replicas, strict=True)):
        single = Trainer(config, tmp_path / f"s{i}", splits=splits, tokenizer=tokenizer, quiet=True).fit().history
        assert [r["step"] for r in replica.history] == [r["step"] for r in single]
        for a, b in zip(replica.history, single, strict=True):
            assert a["steady_tensors"].keys() == b["steady_tensors"].keys()
            for key in SUMMARY_FIELDS:
                if b[key] is None:  # λ = 0: measured, nothing predicted
                    assert a[key] is None and key.endswith("_pred") and config.regularization.mode == "none"
                else:
                    assert a[key] == pytest.approx(b[key], rel=1e-4), (a["step"], key)
