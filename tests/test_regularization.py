"""Regularization modes against their references: torch SGD/Adam/AdamW, SGDW by formula, ridge closed form."""

from __future__ import annotations

import copy
import json
import math
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from decaylab.regularization import SGDW, Regularization


@pytest.fixture(autouse=True, scope="module")
def _float64():
    # equivalences are checked to 1e-6 relative; float64 keeps rounding differences out of the way
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def toy_model(seed: int = 0, d_in: int = 4, d_hidden: int = 6, d_out: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.Tanh(), nn.Linear(d_hidden, d_out)).double()


def toy_data(seed: int = 1, n: int = 16, d_in: int = 4, d_out: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g), torch.randn(n, d_out, generator=g)


def train(model, opt, data, steps=50, reg=None, sched=None, on_step=None):
    x, y = data
    for t in range(steps):
        opt.zero_grad()
        loss = 0.5 * (model(x) - y).pow(2).mean()
        if reg is not None:
            loss = loss + reg.penalty(model)
        loss.backward()
        if on_step is not None:
            on_step(t)
        opt.step()
        if sched is not None:
            sched.step()
    return model


def assert_same_params(a: nn.Module, b: nn.Module, rtol: float = 1e-6) -> None:
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=rtol, atol=1e-12, msg=lambda m, na=na: f"{na}: {m}")


def cosine(total: int):
    return lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total) / total)) * 0.9 + 0.1


# -- coupled / l2 against torch's own weight_decay --------------------------------------------


@pytest.mark.parametrize("mode", ["l2", "coupled"])
def test_sgd_matches_torch_sgd_weight_decay(mode):
    lam, lr, data = 0.05, 0.1, toy_data()
    ref = toy_model()
    ours = copy.deepcopy(ref)
    train(ref, torch.optim.SGD(ref.parameters(), lr=lr, weight_decay=lam), data)
    reg = Regularization(mode=mode, weight_decay=lam, decay_set="all")
    train(ours, reg.optimizer(ours, "sgd", lr=lr), data, reg=reg)
    assert_same_params(ours, ref)
    # the decay did something: without it the weights differ
    plain = copy.deepcopy(toy_model())
    train(plain, torch.optim.SGD(plain.parameters(), lr=lr), data)
    assert not torch.allclose(plain[0].weight, ref[0].weight, rtol=1e-4)


def test_coupled_sgd_momentum_matches_torch():
    lam, lr, data = 0.05, 0.05, toy_data()
    ref = toy_model()
    ours = copy.deepcopy(ref)
    train(ref, torch.optim.SGD(ref.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=lam), data)
    reg = Regularization(mode="coupled", weight_decay=lam, decay_set="all")
    train(ours, reg.optimizer(ours, "SGD", lr=lr, momentum=0.9, nesterov=True), data)
    assert_same_params(ours, ref)


@pytest.mark.parametrize("mode", ["l2", "coupled"])
def test_adam_matches_torch_adam_weight_decay(mode):
    lam, lr, data = 0.05, 1e-2, toy_data()
    ref = toy_model()
    ours = copy.deepcopy(ref)
    train(ref, torch.optim.Adam(ref.parameters(), lr=lr, weight_decay=lam), data)
    reg = Regularization(mode=mode, weight_decay=lam, decay_set="all")
    opt = reg.optimizer(ours, "adam", lr=lr)
    assert type(opt) is torch.optim.Adam
    train(ours, opt, data, reg=reg)
    assert_same_params(ours, ref)


def test_no_bias_norm_matches_torch_with_hand_made_groups():
    lam, lr, data = 0.05, 0.1, toy_data()
    ref = toy_model()
    ours = copy.deepcopy(ref)
    w = [p for n, p in ref.named_parameters() if n.endswith("weight")]
    b = [p for n, p in ref.named_parameters() if n.endswith("bias")]
    groups = [{"params": w, "weight_decay": lam}, {"params": b, "weight_decay": 0.0}]
    train(ref, torch.optim.SGD(groups, lr=lr), data)
    reg = Regularization(mode="coupled", weight_decay=lam, decay_set="no_bias_norm")
    train(ours, reg.optimizer(ours, "sgd", lr=lr), data)
    assert_same_params(ours, ref)


# -- decoupled -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_decoupled_lr_matches_torch_adamw_under_cosine(name):
    lam, lr, data = 0.1, 1e-2, toy_data()
    ref = toy_model()
    ours = copy.deepcopy(ref)
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=lam)
    train(ref, opt_ref, data, sched=torch.optim.lr_scheduler.CosineAnnealingLR(opt_ref, T_max=50))
    reg = Regularization(mode="decoupled", weight_decay=lam, decay_set="all")
    opt = reg.optimizer(ours, name, lr=lr, betas=(0.9, 0.98))
    assert type(opt) is torch.optim.AdamW
    train(ours, opt, data, sched=torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=50))
    assert_same_params(ours, ref)


class RefSGDW:
    """SGDW by the formula, one parameter at a time: b ← μb + (1−d)g; p ← p − c_t·λ·p − η_t·u."""

    def __init__(self, params, momentum, dampening=0.0, nesterov=False):
        self.params = list(params)
        self.mu, self.d, self.nesterov = momentum, dampening, nesterov
        self.buf = [None] * len(self.params)

    @torch.no_grad()
    def step(self, lr_t: float, decay_t: float) -> None:
        for i, p in enumerate(self.params):
            g = p.grad
            if self.mu:
                self.buf[i] = g.clone() if self.buf[i] is None else self.mu * self.buf[i] + (1 - self.d) * g
                u = g + self.mu * self.buf[i] if self.nesterov else self.buf[i]
            else:
                u = g
            p.copy_(p - decay_t * p - lr_t * u)

    def zero_grad(self):
        for p in self.params:
            p.grad = None


@pytest.mark.parametrize(
    "momentum,dampening,nesterov", [(0.9, 0.0, False), (0.9, 0.0, True), (0.8, 0.3, False), (0.0, 0.0, False)]
)
@pytest.mark.parametrize("scaling", ["lr", "schedule", "corrected"])
def test_decoupled_sgd_matches_reference_sgdw(momentum, dampening, nesterov, scaling):
    lam, peak, steps, data = 0.2, 0.05, 50, toy_data()
    s = cosine(steps)
    ref = toy_model()
    ours = copy.deepcopy(ref)
    ref_opt = RefSGDW(ref.parameters(), momentum, dampening, nesterov)

    class _Opt:  # adapts RefSGDW to train()'s zero_grad/step calls, feeding the schedule
        t = 0

        def zero_grad(self):
            ref_opt.zero_grad()

        def step(self):
            lr_t = peak * s(self.t)
            c_t = {"lr": lr_t, "schedule": s(self.t), "corrected": lr_t * lr_t / peak}[scaling]  # DESIGN §3
            ref_opt.step(lr_t, c_t * lam)
            self.t += 1

    train(ref, _Opt(), data, steps=steps)
    reg = Regularization(mode="decoupled", weight_decay=lam, decay_set="all", decay_scaling=scaling)
    opt = reg.optimizer(ours, "sgd", lr=peak, momentum=momentum, dampening=dampening, nesterov=nesterov)
    assert type(opt) is SGDW
    train(ours, opt, data, steps=steps, sched=torch.optim.lr_scheduler.LambdaLR(opt, s))
    assert_same_params(ours, ref)


def test_sgdw_schedule_equals_paper_algorithm_at_constant_lr():
    # Loshchilov & Hutter (2019) Alg. 1 with η_t = 1: m ← β m + α g; θ ← θ − m − λ θ
    alpha, beta, lam, data = 0.05, 0.9, 1e-3, toy_data()
    ref = toy_model()
    ours = copy.deepcopy(ref)
    m = [torch.zeros_like(p) for p in ref.parameters()]
    x, y = data
    for _ in range(50):
        ref.zero_grad()
        (0.5 * (ref(x) - y).pow(2).mean()).backward()
        with torch.no_grad():
            for i, p in enumerate(ref.parameters()):
                m[i] = beta * m[i] + alpha * p.grad
                p.copy_(p - m[i] - lam * p)
    reg = Regularization(mode="decoupled", weight_decay=lam, decay_set="all", decay_scaling="schedule")
    train(ours, reg.optimizer(ours, "sgd", lr=alpha, momentum=beta), data)
    assert_same_params(ours, ref)


def test_sgdw_without_decay_is_torch_sgd():
    data = toy_data()
    ref = toy_model()
    ours = copy.deepcopy(ref)
    train(ref, torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, nesterov=True), data)
    train(ours, SGDW(ours.parameters(), lr=0.05, momentum=0.9, nesterov=True), data)
    assert_same_params(ours, ref)


def test_decoupled_differs_from_coupled_for_adam():
    lam, lr, data = 0.1, 1e-2, toy_data()
    a, b = toy_model(), toy_model()
    ra = Regularization(mode="decoupled", weight_decay=lam, decay_set="all")
    rb = Regularization(mode="coupled", weight_decay=lam, decay_set="all")
    train(a, ra.optimizer(a, "adam", lr=lr), data, steps=100)
    train(b, rb.optimizer(b, "adam", lr=lr), data, steps=100)
    diff = max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters(), strict=True))
    assert diff > 1e-2
    na, nb = ra.norms(a)["weight_norm"], rb.norms(b)["weight_norm"]
    assert abs(na - nb) > 0.05 * max(na, nb)


# -- schedule scaling --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_schedule_decay_factor_independent_of_peak_lr(name):
    lam, steps = 0.05, 20
    s = cosine(steps)
    factors = {}
    for peak in (1e-3, 0.3):
        model = toy_model()
        reg = Regularization(mode="decoupled", weight_decay=lam, decay_set="all", decay_scaling="schedule")
        opt = reg.optimizer(model, name, lr=peak)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, s)
        got = []
        for t in range(steps):
            before = [p.detach().clone() for p in model.parameters()]
            for p in model.parameters():
                p.grad = torch.zeros_like(p)  # a zero gradient makes the update pure decay (Adam: m = v = 0)
            reported = reg.decay_factor(opt)
            opt.step()
            ratio = torch.cat([(p / b).flatten() for p, b in zip(model.parameters(), before, strict=True)])
            torch.testing.assert_close(ratio, torch.full_like(ratio, 1 - s(t) * lam), rtol=1e-12, atol=1e-12)
            assert reported == pytest.approx(1 - s(t) * lam, rel=1e-12)
            got.append(ratio[0].item())
            sched.step()
        factors[peak] = got
    assert factors[1e-3] == pytest.approx(factors[0.3], rel=1e-12)


def test_decay_factor_lr_scaling_and_other_modes():
    model = toy_model()
    reg = Regularization(mode="decoupled", weight_decay=0.1)
    opt = reg.optimizer(model, "adamw", lr=0.01)
    assert reg.decay_factor(opt) == pytest.approx(1 - 0.01 * 0.1)
    opt.param_groups[0]["lr"] = 0.005  # a scheduler's doing
    assert reg.decay_factor(opt) == pytest.approx(1 - 0.005 * 0.1)
    for mode in ("l2", "coupled"):
        r = Regularization(mode=mode, weight_decay=0.1)
        o = r.optimizer(model, "sgd", lr=0.01)
        assert r.decay_factor(o) == 1.0
        assert r.decay_factor(o, equivalent=True) == pytest.approx(1 - 0.01 * 0.1)
    r = Regularization(mode="none", weight_decay=0.0)
    assert r.decay_factor(r.optimizer(model, "adam", lr=0.01), equivalent=True) == 1.0


# -- property test over λ, lr and shapes -------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    lam=st.floats(1e-4, 0.5),
    lr=st.floats(1e-4, 0.1),
    d_in=st.integers(1, 5),
    d_out=st.integers(1, 4),
    case=st.sampled_from(["sgd/l2", "sgd/coupled", "adam/l2", "adam/coupled", "adamw/decoupled"]),
)
def test_property_equivalences(lam, lr, d_in, d_out, case):
    name, mode = case.split("/")
    torch.manual_seed(d_in * 10 + d_out)
    ref = nn.Linear(d_in, d_out).double()
    ours = copy.deepcopy(ref)
    data = toy_data(n=8, d_in=d_in, d_out=d_out)
    torch_cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    train(ref, torch_cls(ref.parameters(), lr=lr, weight_decay=lam), data, steps=10)
    reg = Regularization(mode=mode, weight_decay=lam, decay_set="all")
    train(ours, reg.optimizer(ours, name, lr=lr), data, steps=10, reg=reg)
    assert_same_params(ours, ref)


# -- penalty -----------------------------------------------------------------------------------


def _finite_diff_check(model, reg, expected_value):
    pen = reg.penalty(model)
    assert pen.item() == pytest.approx(expected_value, rel=1e-12)
    grads = torch.autograd.grad(pen, list(model.parameters()), allow_unused=True)
    h = 1e-6
    for p, g in zip(model.parameters(), grads, strict=True):
        g = torch.zeros_like(p) if g is None else g
        fd = torch.zeros_like(p)
        flat, fd_flat = p.data.view(-1), fd.view(-1)
        for i in range(flat.numel()):
            old = flat[i].item()
            flat[i] = old + h
            up = reg.penalty(model).item()
            flat[i] = old - h
            down = reg.penalty(model).item()
            flat[i] = old
            fd_flat[i] = (up - down) / (2 * h)
        torch.testing.assert_close(g, fd, rtol=1e-5, atol=1e-8)


def test_l2_penalty_gradient_matches_finite_differences_with_multipliers():
    model = toy_model(d_in=3, d_hidden=4, d_out=2)
    lam = 0.3
    reg = Regularization(mode="l2", weight_decay=lam, decay_set="no_bias_norm", multipliers={r"^2\.": 0.25})
    w0, w2 = model[0].weight, model[2].weight
    expected = lam / 2 * (w0.pow(2).sum() + 0.25 * w2.pow(2).sum()).item()
    _finite_diff_check(model, reg, expected)
    # and the analytic gradient is λ·m·w on the decay set, 0 on biases
    g = torch.autograd.grad(reg.penalty(model), [w0, w2, model[0].bias], allow_unused=True)
    torch.testing.assert_close(g[0], lam * w0)
    torch.testing.assert_close(g[1], 0.25 * lam * w2)
    assert g[2] is None


def test_l1_penalty_gradient_matches_finite_differences():
    model = toy_model(d_in=3, d_hidden=4, d_out=2)
    with torch.no_grad():  # keep every weight away from 0, where |w| has a kink
        for p in model.parameters():
            p.copy_(p.sign() * (p.abs() + 0.1))
    lam, l1 = 0.2, 0.05
    reg = Regularization(mode="l2", weight_decay=lam, l1=l1, decay_set="all", multipliers={r"bias": 3.0})
    expected = 0.0
    for n, p in model.named_parameters():
        m = 3.0 if "bias" in n else 1.0
        expected += m * (lam / 2 * p.pow(2).sum() + l1 * p.abs().sum()).item()
    _finite_diff_check(model, reg, expected)


def test_penalty_gradient_is_finite_at_zero_weights():
    model = nn.Linear(3, 2).double()
    nn.init.zeros_(model.weight)
    reg = Regularization(mode="l2", weight_decay=0.1, l1=0.1, decay_set="matrices")
    (g,) = torch.autograd.grad(reg.penalty(model), [model.weight])
    assert torch.equal(g, torch.zeros_like(g))  # λ·0 + λ_1·sign(0) = 0, not NaN


def test_penalty_is_zero_tensor_without_loss_terms():
    model = toy_model()
    for reg in (Regularization(mode="decoupled", weight_decay=0.1), Regularization(mode="coupled", weight_decay=0.1)):
        pen = reg.penalty(model)
        assert isinstance(pen, torch.Tensor) and pen.ndim == 0 and pen.item() == 0.0
        assert pen.dtype == torch.float64
    # l1 works with any mode
    reg = Regularization(mode="decoupled", weight_decay=0.1, l1=0.01, decay_set="matrices")
    expected = 0.01 * sum(p.abs().sum() for p in (model[0].weight, model[2].weight))
    assert reg.penalty(model).item() == pytest.approx(expected.item(), rel=1e-12)


def test_penalty_cache_follows_new_parameters():
    model = nn.Sequential(nn.Linear(3, 3, bias=False)).double()
    reg = Regularization(mode="l2", weight_decay=1.0, decay_set="all")
    first = reg.penalty(model).item()
    model.append(nn.Linear(3, 3, bias=False).double())
    assert reg.penalty(model).item() > first
    # requires_grad changes keep the count, hence the explicit invalidate()
    model[1].requires_grad_(False)
    reg.invalidate(model)
    assert reg.penalty(model).item() == pytest.approx(first)


# -- ridge regression sanity -------------------------------------------------------------------


def _ridge_data(n=200, d=5):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, d, generator=g) + 0.5
    y = x @ torch.randn(d, generator=g) + 0.7 + 0.3 * torch.randn(n, generator=g)
    return x, y.unsqueeze(1)


def _fit_full_batch(model, reg, x, y, lr=0.3, steps=600):
    opt = reg.optimizer(model, "sgd", lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.5 * (model(x) - y).pow(2).mean() + reg.penalty(model)
        loss.backward()
        opt.step()
    return model


def test_l2_gradient_descent_converges_to_closed_form_ridge():
    x, y = _ridge_data()
    n, d = x.shape
    lam = 0.1
    model = nn.Linear(d, 1, bias=False).double()
    nn.init.zeros_(model.weight)
    reg = Regularization(mode="l2", weight_decay=lam, decay_set="all")
    _fit_full_batch(model, reg, x, y)
    # minimiser of (1/2n)‖Xw − y‖² + (λ/2)‖w‖²: (XᵀX + nλI) w = Xᵀy
    w = torch.linalg.solve(x.T @ x + n * lam * torch.eye(d), x.T @ y)
    torch.testing.assert_close(model.weight.detach().T, w, rtol=1e-8, atol=1e-10)


def test_ridge_with_unpenalized_bias_matches_centered_closed_form():
    x, y = _ridge_data()
    n, d = x.shape
    lam = 0.1
    model = nn.Linear(d, 1).double()
    reg = Regularization(mode="l2", weight_decay=lam, decay_set="no_bias_norm")
    _fit_full_batch(model, reg, x, y, steps=1500)
    xc, yc = x - x.mean(0), y - y.mean(0)
    w = torch.linalg.solve(xc.T @ xc + n * lam * torch.eye(d), xc.T @ yc)
    b = y.mean() - x.mean(0) @ w
    torch.testing.assert_close(model.weight.detach().T, w, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(model.bias.detach(), b, rtol=1e-7, atol=1e-9)


# -- optimizer construction --------------------------------------------------------------------


def test_optimizer_classes_groups_and_fused():
    model = toy_model()
    cases = {
        ("coupled", "sgd"): torch.optim.SGD,
        ("decoupled", "sgd"): SGDW,
        ("decoupled", "sgdw"): SGDW,
        ("coupled", "adam"): torch.optim.Adam,
        ("decoupled", "adam"): torch.optim.AdamW,
        ("decoupled", "AdamW"): torch.optim.AdamW,
        ("l2", "adamw"): torch.optim.AdamW,
        ("none", "adam"): torch.optim.Adam,
    }
    for (mode, name), cls in cases.items():
        reg = Regularization(mode=mode, weight_decay=0.1 if mode != "none" else 0.0, multipliers={r"^2\.": 0.5})
        opt = reg.optimizer(model, name, lr=1e-3)
        assert type(opt) is cls, (mode, name)
        names = [g["group_name"] for g in opt.param_groups]
        assert names == ["decay", "decay x0.5", "no_decay"]
        wds = [g["weight_decay"] for g in opt.param_groups]
        assert wds == ([0.1, 0.05, 0.0] if mode in ("coupled", "decoupled") else [0.0, 0.0, 0.0])
        if cls in (torch.optim.Adam, torch.optim.AdamW):
            assert all(g["fused"] for g in opt.param_groups)  # CPU has fused Adam/AdamW
            assert all(g["decoupled_weight_decay"] == (cls is torch.optim.AdamW) for g in opt.param_groups)
    opt = Regularization().optimizer(model, "adam", lr=1e-3, foreach=True)
    assert not opt.param_groups[0]["fused"] and opt.param_groups[0]["foreach"]


def test_param_groups_work_with_a_callers_optimizer():
    data = toy_data()
    a = toy_model()
    b = copy.deepcopy(a)
    reg = Regularization(mode="decoupled", weight_decay=0.1, multipliers={r"^0\.": 2.0})
    train(a, reg.optimizer(a, "adamw", lr=1e-2), data)
    groups = reg.param_groups(b, lr=1e-2)
    assert [g["effective_weight_decay"] for g in groups] == [0.2, 0.1, 0.0]
    train(b, torch.optim.AdamW(groups, lr=1e-2), data)
    assert_same_params(a, b)


def test_schedule_groups_store_peak_lr():
    model = toy_model()
    reg = Regularization(mode="decoupled", weight_decay=0.05, decay_scaling="schedule")
    groups = reg.param_groups(model, lr=0.01)
    assert groups[0]["peak_lr"] == 0.01
    assert groups[0]["weight_decay"] == pytest.approx(0.05 / 0.01)
    assert groups[-1]["weight_decay"] == 0.0


def test_allow_double_applies_both():
    lam, extra, lr, data = 0.05, 0.02, 0.1, toy_data()
    ref = toy_model()
    ours = copy.deepcopy(ref)
    train(ref, torch.optim.SGD(ref.parameters(), lr=lr, weight_decay=lam + extra), data)
    reg = Regularization(mode="l2", weight_decay=lam, decay_set="all", allow_double=True)
    train(ours, reg.optimizer(ours, "sgd", lr=lr, weight_decay=extra), data, reg=reg)
    assert_same_params(ours, ref)


# -- hooks -------------------------------------------------------------------------------------


def test_norms_describe_and_pickle():
    model = toy_model()
    reg = Regularization(mode="decoupled", weight_decay=0.1, decay_set="matrices", exclude=[r"^2\."])
    nrm = reg.norms(model)
    assert nrm["decay_norm"] == pytest.approx(model[0].weight.norm().item())
    rest = math.sqrt(sum(p.norm().item() ** 2 for n, p in model.named_parameters() if n != "0.weight"))
    assert nrm["nodecay_norm"] == pytest.approx(rest)
    assert nrm["weight_norm"] == pytest.approx(math.hypot(nrm["decay_norm"], nrm["nodecay_norm"]))
    desc = reg.describe()
    assert json.loads(json.dumps(desc)) == desc
    assert Regularization(**desc).describe() == desc
    clone = pickle.loads(pickle.dumps(reg))
    assert clone.norms(model) == nrm


@pytest.mark.parametrize("scaling,normalized", [("corrected", True), ("lr", False)])
def test_corrected_decay_matches_pytorch_optimizer_adamc(scaling: str, normalized: bool) -> None:
    """AdamC (Defazio 2025) on every decayed parameter, as timm's `adamc`: c_t = η_t²/η_max, step for step.

    pytorch-optimizer's AdamC with `normalized=True` on every group is the reference (timm needs torchvision, which
    pulls a CUDA build). It adds eps to √v before the bias correction, torch after it, so eps = 0 here: with
    eps = 1e-8 the two differ by ~1e-5 for `lr` (plain AdamW) exactly as much as for `corrected`.
    """
    pytest.importorskip("pytorch_optimizer")
    from pytorch_optimizer import AdamC

    lam, peak, steps, data = 0.3, 0.05, 30, toy_data()
    ref = toy_model()
    ours = copy.deepcopy(ref)
    reg = Regularization(mode="decoupled", weight_decay=lam, decay_set="all", decay_scaling=scaling)
    ours_opt = reg.optimizer(ours, "adamw", lr=peak, betas=(0.9, 0.99), eps=0.0)
    ref_opt = AdamC([{"params": list(ref.parameters()), "normalized": normalized}], lr=peak, betas=(0.9, 0.99),
                    weight_decay=lam, eps=0.0)
    train(ours, ours_opt, data, steps=steps, sched=torch.optim.lr_scheduler.LambdaLR(ours_opt, cosine(steps)))
    train(ref, ref_opt, data, steps=steps, sched=torch.optim.lr_scheduler.LambdaLR(ref_opt, cosine(steps)))
    assert_same_params(ours, ref)
    if scaling == "corrected":  # the decay really follows η_t²/η_max: the metric reports it
        lr_t = ours_opt.param_groups[0]["lr"]
        assert reg.decay_factor(ours_opt) == pytest.approx(1 - lr_t * lr_t / peak * lam)
