"""The decay rules of issue 14 against their references, step for step: cautious weight decay (Chen et al. 2025),
scheduled λ (optax's `add_decayed_weights` with a schedule), SWD/AdamS (pytorch-optimizer's `AdamS`); each through
`decaylab train`; a scheduled run that resumes; their one-line config errors; the audit and the report's colours.

Stacked == sequential for every rule (and every rule with its own λ schedule in one stack): tests/test_rules.py.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from decaylab.errors import UserError
from decaylab.files import read_jsonl
from decaylab.regularization import RULES, Regularization
from decaylab.regularization.rules import WEIGHT_DECAY_SCHEDULES
from decaylab.training import Trainer
from tests.conftest import TINY_OVERRIDES, tiny_config
from tests.test_regularization import assert_same_params, cosine, toy_data, toy_model, train


@pytest.fixture
def float64():
    # equalities are checked to 1e-6 relative (as tests/test_regularization.py); float64 keeps rounding out of them
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def lr_schedule(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, cosine(steps))


# -- cautious weight decay -------------------------------------------------------------------------------------------


def _cwd_line(p: torch.Tensor, update: torch.Tensor, lr: float, weight_decay: float) -> None:
    """pytorch-optimizer's `BaseOptimizer.apply_cautious_weight_decay` (3.9–3.11; 4.x dropped it), its one line."""
    p.copy_(torch.where(update * p >= 0, p * (1.0 - weight_decay * lr), p))


def cautious_decay_reference() -> Callable[[torch.Tensor, torch.Tensor, float, float], None]:
    """The installed pytorch-optimizer's own function where it has one, else the same line written out."""
    from pytorch_optimizer.base.optimizer import BaseOptimizer

    return getattr(BaseOptimizer, "apply_cautious_weight_decay", _cwd_line)


class RefCautious:
    """Algorithm 1 of Chen et al. (2025), written out per tensor: x ← x − η(u + λ·𝟙[u ⊙ x ≥ 0] ⊙ x), with u
    AdamW's m̂/(√v̂ + ε) or SGD's momentum update; only `decayed` tensors are decayed."""

    def __init__(self, params: list[torch.Tensor], decayed: set[int], lam: float, kind: str, **hyper: float):
        self.params, self.decayed, self.lam, self.kind, self.hyper = params, decayed, lam, kind, hyper
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.b: list[torch.Tensor | None] = [None] * len(params)
        self.t = 0
        self.decay = cautious_decay_reference()

    @torch.no_grad()
    def step(self, lr: float) -> None:
        self.t += 1
        for i, p in enumerate(self.params):
            g = p.grad
            if self.kind == "adam":
                b1, b2 = self.hyper["betas"]
                self.m[i] = b1 * self.m[i] + (1 - b1) * g
                self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
                u = (self.m[i] / (1 - b1**self.t)) / ((self.v[i] / (1 - b2**self.t)).sqrt() + self.hyper["eps"])
            else:
                mu = self.hyper["momentum"]
                b = self.b[i]
                self.b[i] = b = g.clone() if b is None else mu * b + g
                u = g + mu * b if self.hyper.get("nesterov") else b
            if i in self.decayed:
                self.decay(p, u, lr, self.lam)  # from the pre-step weights, as the paper's x_t
            p.sub_(lr * u)


class _Stepper:
    """A reference with an lr schedule, as `train` drives an optimizer."""

    def __init__(self, ref: RefCautious, lr_at: Callable[[int], float]):
        self.ref, self.lr_at, self.t = ref, lr_at, 0

    def zero_grad(self) -> None:
        for p in self.ref.params:
            p.grad = None

    def step(self) -> None:
        self.ref.step(self.lr_at(self.t))
        self.t += 1


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("decay_set", ["all", "no_bias_norm"])
@pytest.mark.parametrize("optimizer,hyper", [
    ("adamw", {"betas": (0.9, 0.99), "eps": 1e-8}),
    ("sgd", {"momentum": 0.9}),
    ("sgd", {"momentum": 0.9, "nesterov": True}),
])
def test_cautious_decay_matches_the_papers_algorithm_step_for_step(decay_set: str, optimizer: str,
                                                                   hyper: dict) -> None:
    lam, peak, steps, data = 0.4, 0.05, 40, toy_data()
    ref = toy_model()
    ours = copy.deepcopy(ref)
    reg = Regularization(mode="cautious", weight_decay=lam, decay_set=decay_set)
    opt = reg.optimizer(ours, optimizer, lr=peak, **hyper)
    train(ours, opt, data, steps=steps, sched=lr_schedule(opt, steps))
    names = [n for n, _ in ref.named_parameters()]
    decayed = {i for i, n in enumerate(names) if decay_set == "all" or n.endswith("weight")}
    kind = "adam" if optimizer == "adamw" else "sgd"
    train(ref, _Stepper(RefCautious(list(ref.parameters()), decayed, lam, kind, **hyper),
                        lambda t: peak * cosine(steps)(t)), data, steps=steps)
    assert_same_params(ours, ref)
    # the mask mattered: plain decoupled decay (the mask all ones) ends elsewhere
    plain = copy.deepcopy(toy_model())
    popt = Regularization(mode="decoupled", weight_decay=lam, decay_set=decay_set).optimizer(
        plain, optimizer, lr=peak, **hyper)
    train(plain, popt, data, steps=steps, sched=lr_schedule(popt, steps))
    assert not torch.allclose(plain[0].weight, ours[0].weight, rtol=1e-4)


@pytest.mark.usefixtures("float64")
def test_cautious_decay_acts_only_where_update_and_weight_agree_in_sign() -> None:
    """One plain SGD step (u = g) by hand: w ← w·(1 − ηλ) where g·w ≥ 0 (0 included), w elsewhere; then − ηg."""
    w = nn.Parameter(torch.tensor([1.0, -1.0, 2.0, -2.0, 0.0, 3.0]))
    model = nn.Module()
    model.w = w
    opt = Regularization(mode="cautious", weight_decay=0.5, decay_set="all").optimizer(model, "sgd", lr=0.1,
                                                                                        momentum=0.0)
    w.grad = torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0, 0.0])
    opt.step()
    # agree: 1·1, (−1)(−2), 1·0, 0·3 ≥ 0 -> decayed by 1 − 0.05; disagree: −1·1, −1·2 -> not decayed
    want = torch.tensor([0.95 - 0.1, -1.0 - 0.1, 2.0 + 0.1, -1.9 + 0.1, 0.0 - 0.1, 3.0 * 0.95])
    torch.testing.assert_close(w.detach(), want, rtol=0, atol=1e-15)


# -- scheduled λ -----------------------------------------------------------------------------------------------------


def test_weight_decay_schedules_by_hand() -> None:
    """ρ(t) at t = optimizer steps already taken (optax evaluates a schedule at the count of updates applied)."""
    rho = {name: [s.multiplier(t, 6, 2) for t in range(7)] for name, s in WEIGHT_DECAY_SCHEDULES.items()}
    # warm-up (t + 1)/2 for t < 2, then progress p = (t − 2)/4
    assert rho["constant"] == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert rho["linear"] == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0])
    half = 0.5 * (1 + math.cos(math.pi / 4))
    assert rho["cosine"] == pytest.approx([0.5, 1.0, 1.0, half, 0.5, 1 - half, 0.0])
    assert [WEIGHT_DECAY_SCHEDULES["linear"].multiplier(t, 4) for t in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]


class OptaxAdamW:
    """optax.chain(scale_by_adam(b1, b2, eps), add_decayed_weights(λ_schedule), scale_by_learning_rate(lr)),
    written out: at update count n, θ ← θ − lr·(m̂/(√v̂ + ε) + λ(n)·θ), then n ← n + 1."""

    def __init__(self, params: list[torch.Tensor], lr: float, schedule: Callable[[int], float],
                 betas: tuple[float, float], eps: float):
        self.params, self.lr, self.schedule, self.betas, self.eps = params, lr, schedule, betas, eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.count = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        b1, b2 = self.betas
        n = self.count + 1
        for i, p in enumerate(self.params):
            self.m[i] = b1 * self.m[i] + (1 - b1) * p.grad
            self.v[i] = b2 * self.v[i] + (1 - b2) * p.grad * p.grad
            u = (self.m[i] / (1 - b1**n)) / ((self.v[i] / (1 - b2**n)).sqrt() + self.eps)
            p.sub_(self.lr * (u + self.schedule(self.count) * p))
        self.count += 1


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("name,warmup", [("cosine", 0), ("linear", 3), ("constant", 5), ("cosine", 4)])
def test_scheduled_decoupled_decay_matches_optax_semantics(name: str, warmup: int) -> None:
    lam, lr, steps, data = 0.5, 0.02, 30, toy_data()
    ref = toy_model()
    ours = copy.deepcopy(ref)
    reg = Regularization(mode="decoupled", weight_decay=lam, decay_set="all", weight_decay_schedule=name,
                         weight_decay_warmup_steps=warmup)
    opt = reg.optimizer(ours, "adamw", lr=lr, betas=(0.9, 0.99), eps=1e-8, total_steps=steps)
    seen = []
    train(ours, opt, data, steps=steps, on_step=lambda t: seen.append(reg.weight_decay_now(opt)))

    def by_hand(n: int) -> float:  # the schedule, written out
        if n < warmup:
            return lam * (n + 1) / warmup
        p = (n - warmup) / (steps - warmup)
        return lam * {"cosine": 0.5 * (1 + math.cos(math.pi * p)), "linear": 1 - p, "constant": 1.0}[name]

    train(ref, OptaxAdamW(list(ref.parameters()), lr, by_hand, (0.9, 0.99), 1e-8), data, steps=steps)
    assert_same_params(ours, ref)
    assert seen == pytest.approx([by_hand(n) for n in range(steps)])  # the λ_t each step used
    assert reg.decay_factor(opt) == pytest.approx(1 - lr * by_hand(steps))


@pytest.mark.usefixtures("float64")
def test_scheduled_coupled_decay_matches_torch_sgd_with_the_same_weight_decay_each_step() -> None:
    lam, lr, steps, data = 0.3, 0.05, 25, toy_data()
    ref = toy_model()
    ours = copy.deepcopy(ref)
    reg = Regularization(mode="coupled", weight_decay=lam, decay_set="all", weight_decay_schedule="linear",
                         weight_decay_warmup_steps=2)
    train(ours, reg.optimizer(ours, "sgd", lr=lr, momentum=0.9, total_steps=steps), data, steps=steps)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=lr, momentum=0.9, weight_decay=lam)
    rho = WEIGHT_DECAY_SCHEDULES["linear"]
    train(ref, ref_opt, data, steps=steps,
          on_step=lambda t: ref_opt.param_groups[0].update(weight_decay=lam * rho.multiplier(t, steps, 2)))
    assert_same_params(ours, ref)


# -- SWD / AdamS -----------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("decay_set,scaling,amsgrad", [
    ("all", "lr", False), ("no_bias_norm", "lr", False), ("no_bias_norm", "lr", True), ("all", "schedule", False),
])
def test_swd_matches_pytorch_optimizer_adams_step_for_step(decay_set: str, scaling: str, amsgrad: bool) -> None:
    """AdamS (Xie et al. 2023): the decay divided by √mean(v̂_t) + ε, the mean over every trainable parameter's
    bias-corrected second moment, no-decay groups included. decay_scaling='schedule' is AdamS's `fixed_decay`
    under a constant lr (c_t = η_t/η_max = 1)."""
    pytest.importorskip("pytorch_optimizer")
    from pytorch_optimizer import AdamS

    lam, peak, steps, data = 0.3 if scaling == "lr" else 0.004, 0.05, 30, toy_data()
    ref = toy_model()
    ours = copy.deepcopy(ref)
    reg = Regularization(mode="swd", weight_decay=lam, decay_set=decay_set, decay_scaling=scaling)
    opt = reg.optimizer(ours, "adamw", lr=peak, betas=(0.9, 0.99), eps=1e-8, amsgrad=amsgrad)
    decayed = [p for n, p in ref.named_parameters() if decay_set == "all" or n.endswith("weight")]
    rest = [p for n, p in ref.named_parameters() if decay_set != "all" and n.endswith("bias")]
    groups = [{"params": decayed, "weight_decay": lam}] + ([{"params": rest, "weight_decay": 0.0}] if rest else [])
    ref_opt = AdamS(groups, lr=peak, betas=(0.9, 0.99), eps=1e-8, fixed_decay=scaling == "schedule",
                    ams_bound=amsgrad, foreach=False)
    if scaling == "lr":  # the lr follows a cosine; the decay follows the lr, in both
        train(ours, opt, data, steps=steps, sched=lr_schedule(opt, steps))
        train(ref, ref_opt, data, steps=steps, sched=lr_schedule(ref_opt, steps))
    else:
        train(ours, opt, data, steps=steps)
        train(ref, ref_opt, data, steps=steps)
    assert_same_params(ours, ref)
    # the decay factor of the metrics: 1 − c_t·λ/(√mean v̂ + ε) with the last step's v̂, recomputed by hand
    state = [opt.state[p] for g in opt.param_groups for p in g["params"]]
    v_hat = [(s["max_exp_avg_sq"] if amsgrad else s["exp_avg_sq"]) / (1 - 0.99 ** float(s["step"])) for s in state]
    mean = sum(float(v.sum()) for v in v_hat) / sum(v.numel() for v in v_hat)
    lr_t = opt.param_groups[0]["lr"]
    c_t = lr_t if scaling == "lr" else lr_t / peak
    assert reg.decay_factor(opt) == pytest.approx(1 - c_t * lam / (math.sqrt(mean) + 1e-8), rel=1e-9)


@pytest.mark.usefixtures("float64")
def test_swd_differs_from_decoupled_decay() -> None:
    data = toy_data()
    a, b = toy_model(), toy_model()
    train(a, Regularization(mode="swd", weight_decay=1e-3, decay_set="all").optimizer(a, "adam", lr=0.01), data)
    train(b, Regularization(mode="decoupled", weight_decay=1e-3, decay_set="all").optimizer(b, "adam", lr=0.01), data)
    assert not torch.allclose(a[0].weight, b[0].weight, rtol=1e-4)


# -- in `decaylab train`, resumed, refused, audited --------------------------------------------------------------------


def _flags(*overrides: str) -> list[str]:
    flags = []
    for override in [*TINY_OVERRIDES, "train.max_steps=6", "train.eval_every=2", *overrides]:
        flags += ["--set", override]
    return flags


@pytest.mark.parametrize("overrides,rho", [
    (["regularization.mode=cautious", "regularization.weight_decay=0.1", "train.optimizer=sgd", "train.lr=0.3"],
     lambda t: 1.0),
    (["regularization.mode=swd", "regularization.weight_decay=1e-3", "train.optimizer=adamw",
      "regularization.weight_decay_schedule=cosine", "regularization.weight_decay_warmup_steps=2"],
     lambda t: 0.5 * (1 + math.cos(math.pi * (t - 2) / 4))),
    (["regularization.mode=decoupled", "regularization.weight_decay=0.1",
      "regularization.weight_decay_schedule=linear"], lambda t: 1 - t / 6),
], ids=["cautious", "swd-cosine-warmup", "decoupled-linear"])
def test_decaylab_train_runs_each_rule_and_records_lambda_t(overrides: list[str], rho: Callable[[int], float],
                                                            tmp_path: Path, cli) -> None:
    run = tmp_path / "run"
    result = cli("train", *_flags(*overrides), "--output", str(run))
    assert result.code == 0, result.err
    rows = read_jsonl(run / "metrics.jsonl")
    lam = float(overrides[1].split("=")[1])
    assert [r["step"] for r in rows] == [2, 4, 6]
    # λ_t of the next step, as `lr` is: after t steps, λ·ρ(t)
    assert [r["weight_decay_t"] for r in rows] == pytest.approx([lam * rho(r["step"]) for r in rows], abs=1e-12)
    assert all(math.isfinite(r["val_loss"]) and r["decay_factor"] <= 1.0 for r in rows)
    mode = overrides[0].split("=")[1]
    config = (run / "config.yaml").read_text()
    assert f"mode: {mode}" in config and "weight_decay_schedule:" in config


def test_a_scheduled_cautious_run_resumes_exactly(tmp_path: Path) -> None:
    """The λ schedule's step count lives in the optimizer state of `checkpoints/last`: a run stopped after its first
    evaluation and resumed ends where the uninterrupted run ends."""
    cfg = tiny_config("train.max_steps=6", "train.eval_every=3", "model.dropout=0", "regularization.mode=cautious",
                      "regularization.weight_decay=0.2", "regularization.weight_decay_schedule=cosine")
    whole = Trainer(cfg, tmp_path / "whole", quiet=True).fit().history

    def stop(row: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, tmp_path / "cut", quiet=True, on_evaluate=stop).fit()
    resumed = Trainer(cfg, tmp_path / "cut", resume=True, quiet=True).fit().history
    assert [r["step"] for r in resumed] == [3, 6]
    for a, b in zip(resumed, whole, strict=True):
        for key in ("val_loss", "decay_norm", "weight_decay_t", "decay_factor"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key


def test_a_stacked_replica_resumes_its_schedule_with_the_trainer(tmp_path: Path, data) -> None:
    """The stack writes the steps taken into its replicas' Trainer-format optimizer state: a replica stopped by its
    epoch budget and continued by the Trainer ends as a run trained by the Trainer alone. A resumed run schedules λ
    over its own length: one resumed with a longer max_steps takes λ to zero at the new end."""
    from decaylab.training.stacked import StackedTrainer

    splits, tokenizer = data

    def config(steps: int):
        return tiny_config("model.dropout=0", "train.eval_every=4", f"train.max_steps={steps}",
                           "regularization.mode=swd", "regularization.weight_decay=1e-3",
                           "regularization.weight_decay_schedule=linear", "regularization.weight_decay_warmup_steps=2")

    StackedTrainer([config(8)], [tmp_path / "r"], splits=splits, tokenizer=tokenizer, budgets=[1.0]).fit()
    assert [r["step"] for r in read_jsonl(tmp_path / "r" / "metrics.jsonl")] == [4]
    continued = Trainer(config(8), tmp_path / "r", splits=splits, tokenizer=tokenizer, resume=True, quiet=True).fit()
    straight = Trainer(config(8), tmp_path / "s", splits=splits, tokenizer=tokenizer, quiet=True).fit()
    for a, b in zip(continued.history, straight.history, strict=True):
        for key in ("val_loss", "decay_norm", "weight_decay_t", "decay_factor"):
            assert a[key] == pytest.approx(b[key], rel=2e-4, abs=1e-9), (a["step"], key)
    longer = Trainer(config(12), tmp_path / "s", splits=splits, tokenizer=tokenizer, resume=True, quiet=True)
    rows = longer.fit().history
    assert [r["weight_decay_t"] for r in rows[2:]] == pytest.approx([1e-3 * (1 - (t - 2) / 10) for t in (12,)])
    assert all(g["total_steps"] == 12 for g in longer.optimizer.param_groups)


@pytest.mark.parametrize("overrides,words", [
    (["regularization.mode=swd", "train.optimizer=sgd"], ["mode='swd' with optimizer 'sgd'", "second moment"]),
    (["regularization.mode=l2", "regularization.weight_decay_schedule=cosine"],
     ["weight_decay_schedule='cosine' cannot schedule mode='l2'", "mode='coupled'"]),
    (["regularization.mode=coupled", "regularization.decay_scaling=corrected"],
     ["decay_scaling='corrected' is only meaningful with a decoupled mode", "'cautious', 'swd'"]),
    (["regularization.weight_decay_schedule=step"], ["weight_decay_schedule", "'constant', 'linear' or 'cosine'"]),
])
def test_nonsense_combinations_are_one_line_before_any_run_folder(overrides: list[str], words: list[str],
                                                                   tmp_path: Path, cli) -> None:
    result = cli("train", *_flags(*overrides), "--output", str(tmp_path / "run"))
    assert result.code == 2
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    assert all(w in result.err for w in words), result.err
    assert not (tmp_path / "run").exists()


@pytest.mark.usefixtures("float64")
def test_a_callers_optimizer_cannot_realize_cautious_swd_or_a_schedule() -> None:
    model = toy_model()
    for settings in ({"mode": "cautious"}, {"mode": "swd"}, {"mode": "decoupled", "weight_decay_schedule": "linear"}):
        with pytest.raises(ValueError, match="reg.optimizer"):
            Regularization(weight_decay=0.1, **settings).param_groups(model, lr=0.01)
    with pytest.raises(ValueError, match="total_steps"):
        Regularization(weight_decay=0.1, weight_decay_schedule="cosine").optimizer(model, "adamw", lr=0.01)


@pytest.mark.usefixtures("float64")
def test_the_audit_shows_the_rule_and_its_schedule() -> None:
    from rich.console import Console

    model = toy_model()
    for mode in ("cautious", "swd"):
        reg = Regularization(mode=mode, weight_decay=1e-3, weight_decay_schedule="cosine",
                             weight_decay_warmup_steps=10)
        report = reg.audit(model, optimizer_name="adamw", lr=1e-3, steps=1000)
        assert report.summary["rule"] == RULES[mode].formula
        console = Console(record=True, width=200)
        report.render(console)
        text = console.export_text()
        assert f"rule: {mode}: {RULES[mode].formula}" in text  # brackets included: printed as text
        assert "λ schedule: cosine" in text and "warm-up" in text
        json.dumps(report.to_dict())
    swd = Regularization(mode="swd", weight_decay=1e-3).audit(model, lr=1e-3).summary
    assert swd["tau_steps"] is None and "√mean(v̂)" in swd["tau_note"]  # its decay is known only while training
    assert Regularization(mode="cautious", weight_decay=1e-3).audit(model, lr=1e-3).summary["tau_steps"] == 1e6


def test_the_report_has_a_label_and_a_colour_of_its_own_for_each_rule() -> None:
    from decaylab.report.plots import mode_color, mode_label

    assert len({mode_color(name) for name in RULES}) == len(RULES)
    assert mode_label("cautious") != mode_label("decoupled") and "SWD" in mode_label("swd")


def test_sweep_trials_of_a_mode_without_a_schedule_drop_it() -> None:
    """A sweep comparing modes over a base with a cosine λ schedule keeps it for the schedulable modes and drops it
    (as it drops decay_scaling) for l2, whose penalty lives in the loss."""
    from decaylab.sweep.points import Point, trial_config

    base = tiny_config("regularization.mode=decoupled", "regularization.weight_decay=0.1",
                       "regularization.weight_decay_schedule=cosine")
    for mode, kept in (("cautious", "cosine"), ("swd", "cosine"), ("l2", "constant"), ("none", "constant")):
        cfg = trial_config(base, Point(mode, 0.0 if mode == "none" else 0.01, 0.0), [mode])
        assert cfg.regularization.weight_decay_schedule == kept, mode
    with pytest.raises(UserError, match="--mode swd: mode='swd' with optimizer 'sgd'"):
        from decaylab.sweep.points import check_points

        check_points(tiny_config("train.optimizer=sgd"), [Point("swd", 0.01, 0.0)], ["swd"])
