"""The Transformer encoder-decoder (models/transformer.py): masks, the KV cache, initialisation, decay sets, and
training, decoding and resuming through the same commands as the RNN."""

from __future__ import annotations

import itertools
import os
import subprocess
from pathlib import Path

import pytest
import torch

from decaylab.config import TransformerConfig, load_config
from decaylab.data.batching import collate
from decaylab.errors import UserError
from decaylab.files import read_jsonl
from decaylab.generation import beam_search, greedy
from decaylab.models import Transformer, build_model
from decaylab.regularization import Regularization
from decaylab.training import Trainer, resume_run
from decaylab.training.loop import KILL_ENV
from tests.conftest import tiny_config
from tests.test_cli import CLI, tiny_flags
from tests.test_trainer import stable

VARIANTS = list(itertools.product(["learned", "rotary"], ["layernorm", "rmsnorm"], [True, False]))


def model(positions: str = "learned", norm: str = "layernorm", bias: bool = True, **extra) -> Transformer:
    torch.manual_seed(0)
    cfg = TransformerConfig(preset="tiny", dropout=0.0, positions=positions, norm=norm, bias=bias, **extra)
    return build_model(cfg, 40).eval()


def batch():
    sources = [[5, 6, 7, 2], [8, 2], [9, 10, 11, 12, 13, 2]]
    return collate(sources, [[5, 9, 11, 2], [6, 7, 2], [8, 2]])


@pytest.mark.parametrize("positions,norm,bias", VARIANTS)
def test_no_target_position_sees_a_later_one(positions: str, norm: str, bias: bool) -> None:
    m, b = model(positions, norm, bias), batch()
    memory = m.encode(b.src, b.src_len)
    hidden, _ = m.decode(b.tgt_in, memory)
    for j in range(1, b.tgt_in.size(1)):
        changed = b.tgt_in.clone()
        changed[:, j:] = 30  # every later token replaced
        other, _ = m.decode(changed, memory)
        torch.testing.assert_close(other[:, :j], hidden[:, :j], rtol=0, atol=1e-6)
        assert not torch.allclose(other[:, j:], hidden[:, j:])


@pytest.mark.parametrize("positions,norm,bias", VARIANTS)
def test_source_padding_changes_nothing(positions: str, norm: str, bias: bool) -> None:
    m, b = model(positions, norm, bias), batch()
    padded = torch.cat([b.src, torch.zeros(b.src.size(0), 5, dtype=b.src.dtype)], 1)  # 5 more pad columns
    for src in (padded, padded.masked_fill(padded == 0, 17)):  # what the pads hold does not matter either
        hidden, _ = m.decode(b.tgt_in, m.encode(src, b.src_len))
        want, _ = m.decode(b.tgt_in, m.encode(b.src, b.src_len))
        torch.testing.assert_close(hidden, want, rtol=1e-4, atol=1e-5)  # softmax over more (masked) keys


@pytest.mark.parametrize("positions,norm,bias", VARIANTS)
def test_kv_cache_decoding_equals_the_full_forward(positions: str, norm: str, bias: bool) -> None:
    m, b = model(positions, norm, bias), batch()
    memory = m.encode(b.src, b.src_len)
    full, _ = m.decode(b.tgt_in, memory)
    state, steps = m.initial_state(memory), []
    for t in range(b.tgt_in.size(1)):
        log_probs, state = m.step(b.tgt_in[:, t], memory, state)
        steps.append(log_probs)
    want = torch.log_softmax(m.output(full).float(), dim=-1)
    torch.testing.assert_close(torch.stack(steps, 1), want, rtol=1e-5, atol=1e-5)
    # reordering the cache and the memory reorders the next step's rows
    index = torch.tensor([2, 0, 0])
    moved, _ = m.step(b.tgt_in[index, 0], m.reorder_memory(memory, index),
                      m.reorder_state(m.initial_state(memory), index))
    first, _ = m.step(b.tgt_in[:, 0], memory, m.initial_state(memory))
    torch.testing.assert_close(moved, first[index])


def test_the_loss_is_the_cross_entropy_of_the_logits() -> None:
    m, b = model(), batch()
    hidden, _ = m.decode(b.tgt_in, m.encode(b.src, b.src_len))
    logits = m.output(hidden)
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), b.tgt_out.reshape(-1),
                                             ignore_index=0, reduction="sum")
    torch.testing.assert_close(m.loss(b), want, rtol=1e-5, atol=1e-4)


def test_gpt2_initialisation_scales_the_residual_projections() -> None:
    m = build_model(TransformerConfig(d_model=256, heads=4, encoder_layers=4, decoder_layers=4, ffn=1024), 100)
    assert abs(m.encoder[0].attention.query.weight.std().item() - 0.02) < 0.002
    for stack, branches in ((m.encoder, 8), (m.decoder, 12)):
        for layer in stack:
            std = layer.mlp.down.weight.std().item()
            assert abs(std - 0.02 / branches**0.5) < 0.1 * 0.02 / branches**0.5
    assert m.output.weight is m.embed.weight  # tied by default
    assert m.embed.weight[0].abs().sum() == 0  # the pad row


def test_beam_one_is_greedy_and_beam_search_runs() -> None:
    m, b = model(positions="rotary"), batch()
    assert beam_search(m, b.src, b.src_len, 1, 8) == greedy(m, b.src, b.src_len, 8)
    assert all(len(h) <= 8 for h in beam_search(m, b.src, b.src_len, 4, 8))


def test_config_errors_name_the_field() -> None:
    with pytest.raises(UserError, match=r"model\.d_model=60 must be a multiple of model\.heads=8"):
        load_config(None, ["model.arch=transformer", "model.d_model=60", "model.heads=8"])
    with pytest.raises(UserError, match="needs an even head width"):
        load_config(None, ["model.arch=transformer", "model.d_model=12", "model.heads=4", "model.positions=rotary"])
    with pytest.raises(UserError, match="model.output=adaptive is the RNN's"):
        load_config(None, ["model.arch=transformer", "model.output=adaptive", "model.tie_embeddings=false"])
    with pytest.raises(UserError, match=r"'model\.cell': unknown key"):
        load_config(None, ["model.arch=transformer", "model.cell=gru"])
    cfg = load_config(None, ["model.arch=transformer", "model.preset=small", "model.heads=8"]).model
    assert (cfg.d_model, cfg.heads, cfg.encoder_layers) == (256, 8, 3)  # the preset fills, explicit values win


@pytest.mark.parametrize("decay_set", ["all", "no_bias_norm", "matrices", "matrices_no_embedding"])
def test_decay_set_decisions_on_a_transformer(decay_set: str) -> None:
    m = model()
    plan = {i.name: i.decayed for i in Regularization(mode="decoupled", weight_decay=0.1,
                                                      decay_set=decay_set).plan(m).params}
    norms = [n for n in plan if "norm" in n]
    biases = [n for n in plan if n.endswith(".bias") and "norm" not in n]
    embeddings = ["embed.weight", "src_positions.weight", "tgt_positions.weight"]
    matrices = [n for n in plan if n.endswith(".weight") and "norm" not in n and n not in embeddings]
    assert norms and biases and matrices
    expected = {
        "all": (True, True, True, True),
        "no_bias_norm": (False, False, True, True),
        "matrices": (False, False, True, True),
        "matrices_no_embedding": (False, False, False, True),
    }[decay_set]
    for names, decayed in zip((norms, biases, embeddings, matrices), expected, strict=True):
        assert {plan[n] for n in names} == {decayed}, (decay_set, names[:2])


def test_trains_decodes_and_resumes_after_sigkill(tmp_path: Path) -> None:
    cfg = tiny_config("model.arch=transformer", "model.dropout=0.1", "train.eval_every=3", "train.epochs=4",
                      "train.lr=0.003")
    result = Trainer(cfg, tmp_path / "whole", quiet=True).fit()
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    # the same run killed mid-way and resumed ends with exactly the same metrics
    run = tmp_path / "killed"
    proc = subprocess.run(CLI + ["train", "--data", str(cfg.data.name), "--preset", "tiny", "--epochs", "4",
                                 "--set", "model.arch=transformer", "--set", "model.dropout=0.1", "--set",
                                 "train.eval_every=3", "--lr", "0.003", "--output", str(run), "-q", *tiny_flags()],
                          env={**os.environ, KILL_ENV: "7"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    resumed = resume_run(run, quiet=True)
    assert stable(resumed.history) == stable(result.history)
    assert stable(read_jsonl(run / "metrics.jsonl")) == stable(result.history)
    out = subprocess.run(CLI + ["generate", str(run), "--input", "-", "--beam", "3"], input="el gato\n",
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 1
