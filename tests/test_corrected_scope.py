"""AdamC in the paper's scope (`decay_scaling=corrected_normalized`): which parameters feed a normalization layer,
the update against pytorch-optimizer's per-group AdamC, and the places that must say or refuse it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from decaylab.config import MODEL_CONFIGS
from decaylab.models import build_model, example_forward
from decaylab.regularization import Regularization, ReplicaDecay, UnsupportedRule
from decaylab.regularization.normalized import params_feeding_norms
from tests.conftest import TINY_OVERRIDES
from tests.test_regularization import assert_same_params, cosine, toy_data, train


def _built(arch: str) -> nn.Module:
    return build_model(MODEL_CONFIGS[arch](preset="tiny"), 40)


def test_a_pre_norm_decoder_scopes_what_writes_into_the_residual_stream() -> None:
    model = _built("decoder")
    scope = params_feeding_norms(model, example_forward(model))
    layers = {n.split(".")[1] for n, _ in model.named_parameters() if n.startswith("blocks.")}
    expected = {"embed.weight", "positions.weight"} | {
        f"blocks.{i}.{proj}.{kind}" for i in layers for proj in ("attention.out", "mlp.down")
        for kind in ("weight", "bias")}
    assert scope == expected
    # the projections whose outputs pass through softmax or an activation and another matmul first are outside
    assert not any(".query." in n or ".key." in n or ".value." in n or ".up." in n for n in scope)


def test_an_encoder_decoder_scopes_both_stacks_and_an_rnn_nothing() -> None:
    transformer = _built("transformer")
    scope = params_feeding_norms(transformer, example_forward(transformer))
    assert {"embed.weight", "src_positions.weight", "tgt_positions.weight"} <= scope
    assert any(n.startswith("encoder.") and n.endswith("attention.out.weight") for n in scope)
    assert any(n.startswith("decoder.") and n.endswith("cross_attention.out.weight") for n in scope)
    assert not any("cross_attention.key" in n for n in scope)
    rnn = _built("rnn")  # no normalization layer: no parameter is in the scope
    assert params_feeding_norms(rnn, example_forward(rnn)) == frozenset()


def test_the_trace_leaves_the_models_mode_and_random_stream_alone() -> None:
    model = _built("decoder")
    model.train()
    before = torch.get_rng_state()
    params_feeding_norms(model, example_forward(model))
    assert model.training and torch.equal(torch.get_rng_state(), before)


def _normed(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 2)).double()


def test_corrected_normalized_matches_pytorch_optimizer_adamc_with_normalized_groups() -> None:
    """Each parameter decays by c_t·λ with c_t = η_t²/η_max when it feeds the LayerNorm, η_t otherwise, step for
    step: pytorch-optimizer's AdamC with `normalized=True` on exactly those parameters is the reference (eps = 0,
    as in test_regularization's AdamC test, since it adds eps before the bias correction)."""
    pytest.importorskip("pytorch_optimizer")
    from pytorch_optimizer import AdamC

    lam, peak, steps, data = 0.3, 0.05, 30, toy_data()
    ref = _normed()
    ours = copy.deepcopy(ref)
    reg = Regularization(mode="decoupled", weight_decay=lam, decay_set="all", decay_scaling="corrected_normalized")
    x = data[0].double()
    ours_opt = reg.optimizer(ours, "adamw", lr=peak, betas=(0.9, 0.99), eps=0.0, example=lambda: ours(x))
    assert reg.scope(ours) == {"0.weight", "0.bias"}
    normalized = [ref[0].weight, ref[0].bias]
    rest = [p for p in ref.parameters() if all(p is not q for q in normalized)]
    ref_opt = AdamC([{"params": normalized, "normalized": True}, {"params": rest, "normalized": False}], lr=peak,
                    betas=(0.9, 0.99), weight_decay=lam, eps=0.0)
    double = (data[0].double(), data[1].double())
    train(ours, ours_opt, double, steps=steps, sched=torch.optim.lr_scheduler.LambdaLR(ours_opt, cosine(steps)))
    train(ref, ref_opt, double, steps=steps, sched=torch.optim.lr_scheduler.LambdaLR(ref_opt, cosine(steps)))
    # 1e-5: Adam's m/√v with eps = 0 amplifies rounding on a near-zero gradient entry (a LayerNorm bias, ~1e-6)
    assert_same_params(ours, ref, rtol=1e-5)
    # and it is not plain `corrected`: decaying the last layer with η_t²/η_max too moves it measurably
    everywhere = _normed()
    every_opt = Regularization(mode="decoupled", weight_decay=lam, decay_set="all", decay_scaling="corrected"
                               ).optimizer(everywhere, "adamw", lr=peak, betas=(0.9, 0.99), eps=0.0)
    train(everywhere, every_opt, double, steps=steps,
          sched=torch.optim.lr_scheduler.LambdaLR(every_opt, cosine(steps)))
    assert (everywhere[3].weight - ours[3].weight).abs().max() > 1e-4


def test_without_a_forward_pass_the_scope_is_asked_for_by_name() -> None:
    reg = Regularization(mode="decoupled", weight_decay=0.1, decay_scaling="corrected_normalized")
    with pytest.raises(ValueError, match="corrected_normalized.*example=lambda"):
        reg.optimizer(_normed(), "adamw", lr=0.01)
    model = _normed()
    with pytest.raises(ValueError, match="called none of the model's 1 normalization"):
        reg.optimizer(model, "adamw", lr=0.01, example=lambda: model[0](torch.zeros(1, 4).double()))


def test_the_stacked_engine_refuses_it_by_name() -> None:
    settings = {"mode": "decoupled", "weight_decay": 0.1, "l1": 0.0, "decay_scaling": "corrected_normalized"}
    with pytest.raises(UnsupportedRule, match="'corrected_normalized' cannot be trained by the stacked engine"):
        ReplicaDecay.check([settings, {**settings, "weight_decay": 0.0, "mode": "none"}])
    ReplicaDecay.check([{**settings, "decay_scaling": "corrected"}])


def test_train_and_audit_use_it_on_a_transformer(cli, tmp_path) -> None:
    sets = [f"--set={o}" for o in TINY_OVERRIDES] + [
        "--set", "model.arch=transformer", "--set", "train.schedule=cosine", "--mode", "decoupled",
        "--lambda", "0.1", "--set", "regularization.decay_scaling=corrected_normalized"]
    run_dir = tmp_path / "run"
    result = cli("train", *sets, "--output", str(run_dir))
    assert result.code == 0, result.err
    state = torch.load(run_dir / "checkpoints" / "last" / "trainer_state.pt", weights_only=False)
    groups = {g["group_name"]: g for g in state["optimizer"]["param_groups"]}
    inside, outside = groups["decay (feeds a norm)"], groups["decay (feeds no norm)"]
    assert (inside["decay_scaling"], outside["decay_scaling"]) == ("corrected", "lr")
    assert "embed.weight" in inside["param_names"] and any(".query." in n for n in outside["param_names"])
    audit = cli("audit", *sets)
    assert audit.code == 0, audit.err
    flat = " ".join(audit.out.split())
    assert "feeds a norm: c_t = η_t²/η_max" in flat and "feeds no norm: c_t as 'lr'" in flat


def test_a_hugging_face_model_is_traced_through_its_dummy_inputs() -> None:
    """GPT-2's Conv1D projections (addmm on a transposed weight): c_proj writes into the residual stream, c_attn
    and c_fc do not; no example is needed, the model's `dummy_inputs` are its forward pass."""
    transformers = pytest.importorskip("transformers")
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100,
                                                                 n_positions=64, bos_token_id=0, eos_token_id=0))
    reg = Regularization(mode="decoupled", weight_decay=0.1, decay_set="hf", decay_scaling="corrected_normalized")
    groups = {g["group_name"]: set(g["param_names"]) for g in reg.optimizer(model, "adamw", lr=1e-3).param_groups}
    assert groups["decay (feeds a norm)"] == {"transformer.wte.weight", "transformer.wpe.weight"} | {
        f"transformer.h.{i}.{part}.c_proj.weight" for i in (0, 1) for part in ("attn", "mlp")}
    assert groups["decay (feeds no norm)"] == {
        f"transformer.h.{i}.{part}.weight" for i in (0, 1) for part in ("attn.c_attn", "mlp.c_fc")}
