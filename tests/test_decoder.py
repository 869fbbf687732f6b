"""The decoder-only language model (models/decoder.py) and its plain-text data (data/text.py, data/blocks.py):
the causal mask, the KV cache and left-padded prompts against the full forward, the blocks, the reader's errors,
and train / generate / evaluate / resume / sweep / report through the same commands as the encoder-decoders."""

from __future__ import annotations

import gzip
import itertools
import json
import lzma
import os
import subprocess
from pathlib import Path

import pytest
import torch

from decaylab.config import DecoderConfig, load_config
from decaylab.data.blocks import encode_documents
from decaylab.data.splits import load_splits
from decaylab.data.text import read_documents
from decaylab.data.tokenizer import EOS_ID, PAD_ID, train_tokenizer
from decaylab.errors import UserError
from decaylab.files import read_jsonl
from decaylab.generation import continue_prompts, greedy
from decaylab.models import DecoderLM, build_model
from decaylab.regularization import Regularization
from decaylab.training import Trainer, resume_run
from decaylab.training.loop import KILL_ENV
from tests.conftest import FIXTURES
from tests.test_cli import CLI
from tests.test_trainer import stable

TINY_TEXT = FIXTURES / "tiny_text.txt"
VARIANTS = list(itertools.product(["learned", "rotary"], ["layernorm", "rmsnorm"], [True, False]))
LM_OVERRIDES = [f"data.name={TINY_TEXT}", "model.arch=decoder", "model.preset=tiny", "data.block_size=32",
                "data.split=[0.8, 0.1, 0.1]", "tokenizer.vocab_size=200", "tokenizer.min_frequency=1",
                "train.batch_tokens=256", "train.epochs=2", "train.threads=1"]


def lm_config(*overrides: str):
    """A decoder LM on the fixture text that trains in about a second."""
    return load_config(None, LM_OVERRIDES + list(overrides))


def lm_flags() -> list[str]:
    return [arg for item in LM_OVERRIDES for arg in ("--set", item)]


def model(positions: str = "learned", norm: str = "layernorm", bias: bool = True, **extra) -> DecoderLM:
    torch.manual_seed(0)
    cfg = DecoderConfig(preset="tiny", dropout=0.0, positions=positions, norm=norm, bias=bias, **extra)
    return build_model(cfg, 40).eval()


def tokens() -> torch.Tensor:
    return torch.tensor([[2, 5, 6, 7, 8, 9, 10, 11], [2, 12, 13, 14, 15, 16, 17, 18], [2, 19, 5, 20, 21, 6, 22, 7]])


def logits_of(m: DecoderLM, seq: torch.Tensor) -> torch.Tensor:
    hidden, _, _ = m.run(seq, 0, None, causal=True)
    return m.output(hidden)


@pytest.mark.parametrize("positions,norm,bias", VARIANTS)
def test_no_position_sees_a_later_one(positions: str, norm: str, bias: bool) -> None:
    m, seq = model(positions, norm, bias), tokens()
    full = logits_of(m, seq)
    for j in range(1, seq.size(1)):
        changed = seq.clone()
        changed[:, j:] = 30  # every later token replaced
        other = logits_of(m, changed)
        torch.testing.assert_close(other[:, :j], full[:, :j], rtol=0, atol=1e-6)
        assert not torch.allclose(other[:, j:], full[:, j:])


def test_the_loss_is_the_next_token_cross_entropy_of_the_logits() -> None:
    m, seq = model(), tokens()
    tgt_in, tgt_out = seq[:, :-1], seq[:, 1:].clone()
    tgt_out[1, -2:] = PAD_ID  # pads are not scored
    logits = logits_of(m, tgt_in)
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt_out.reshape(-1),
                                             ignore_index=PAD_ID, reduction="sum")
    got = m(torch.zeros(3, 0, dtype=torch.long), torch.zeros(3, dtype=torch.long), tgt_in, tgt_out)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="trains on blocks of text"):
        m(seq, torch.full((3,), 8), tgt_in, tgt_out)


@pytest.mark.parametrize("positions,norm,bias", VARIANTS)
def test_prompts_of_any_length_decode_as_the_full_forward(positions: str, norm: str, bias: bool) -> None:
    """Left-padded prompts of three lengths: the prefill and every later cached step give the full forward's
    log-probs at each row's own positions, and reordering the cache reorders the rows."""
    m, seq = model(positions, norm, bias), tokens()
    full = torch.log_softmax(logits_of(m, seq).float(), dim=-1)
    lengths = torch.tensor([3, 5, 1])
    src = torch.zeros(3, 5, dtype=torch.long)
    for i, length in enumerate(lengths.tolist()):
        src[i, :length] = seq[i, :length]
    with torch.no_grad():
        prompt = m.encode(src, lengths)
        state = m.initial_state(prompt)
        for step in range(3):
            fed = torch.stack([seq[i, length + step - 1] for i, length in enumerate(lengths.tolist())])
            log_probs, state = m.step(fed, prompt, state)
            want = torch.stack([full[i, length + step - 1] for i, length in enumerate(lengths.tolist())])
            torch.testing.assert_close(log_probs, want, rtol=1e-5, atol=1e-5)
        index = torch.tensor([2, 0, 0])
        moved, _ = m.step(seq[index, 0], m.reorder_memory(prompt, index), m.reorder_state(state, index))
        again, _ = m.step(seq[:, 0], prompt, state)
        torch.testing.assert_close(moved, again[index])


def test_gpt2_initialisation_and_tying() -> None:
    m = build_model(DecoderConfig(d_model=256, heads=4, layers=6, ffn=1024), 100)
    for block in m.blocks:
        for layer in (block.mlp.down, block.attention.out):
            assert abs(layer.weight.std().item() - 0.02 / 12**0.5) < 0.1 * 0.02 / 12**0.5
    assert abs(m.blocks[0].attention.query.weight.std().item() - 0.02) < 0.002
    assert m.output.weight is m.embed.weight and m.embed.weight[PAD_ID].abs().sum() == 0


def test_config_errors_name_the_field() -> None:
    with pytest.raises(UserError, match=r"data\.block_size=64 is longer than model\.max_positions=32"):
        lm_config("model.max_positions=32", "data.block_size=64")
    lm_config("model.max_positions=32", "data.block_size=64", "model.positions=rotary")  # rotary: no limit
    with pytest.raises(UserError, match=r"data\.kind=pairs does not fit model\.arch=decoder"):
        lm_config("data.kind=pairs")
    with pytest.raises(UserError, match=r"data\.kind=text does not fit model\.arch=transformer"):
        load_config(None, ["model.arch=transformer", "data.kind=text"])
    with pytest.raises(UserError, match="train.bleu_examples decodes translations"):
        lm_config("train.bleu_examples=5")
    with pytest.raises(UserError, match=r"'model\.encoder_layers': unknown key"):
        lm_config("model.encoder_layers=2")
    assert lm_config().data.kind == "text" and load_config(None).data.kind == "pairs"


def test_blocks_score_every_token_of_the_stream_once() -> None:
    docs = ["one two three", "four five", "six seven eight nine ten"]
    tokenizer = train_tokenizer(docs, load_config(None, ["tokenizer.vocab_size=64",
                                                         "tokenizer.min_frequency=1"]).tokenizer)
    data = encode_documents(tokenizer, docs, block_size=4)
    stream = data.stream.tolist()
    assert stream[0] == EOS_ID and stream[-1] == EOS_ID and stream.count(EOS_ID) == len(docs) + 1
    assert data.characters == sum(len(d) + 1 for d in docs) and data.tokens == len(stream) - 1
    batch = data.batch(list(range(len(data))))
    assert batch.src.shape == (len(data), 0) and batch.n_tokens == len(stream) - 1
    scored = batch.tgt_out.reshape(-1)[batch.target_index].tolist()
    assert scored == stream[1:]  # in stream order, each once
    real = batch.tgt_out != PAD_ID
    assert torch.equal(batch.tgt_in[:, 1:][real[:, 1:]], batch.tgt_out[:, :-1][real[:, 1:]])  # shifted by one
    groups = data.groups(batch_tokens=8, max_batch_size=99, seed=1)
    assert sorted(i for g in groups for i in g) == list(range(len(data))) and {len(g) for g in groups} <= {1, 2}
    assert data.groups(8, 99, seed=1) == groups != data.groups(8, 99, seed=2) or len(data) < 3


def test_text_files_read_as_documents(tmp_path: Path) -> None:
    text = "First line\nsecond line  \n\n\n  \nAnother doc.\n"
    (tmp_path / "a.txt").write_text(text)
    want = ["First line\nsecond line", "Another doc."]
    assert read_documents(tmp_path / "a.txt") == want
    with gzip.open(tmp_path / "a.txt.gz", "wt") as f:
        f.write(text)
    with lzma.open(tmp_path / "a.txt.xz", "wt") as f:
        f.write(text)
    assert read_documents(tmp_path / "a.txt.gz") == read_documents(tmp_path / "a.txt.xz") == want
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in want))
    assert read_documents(tmp_path / "a.jsonl") == want


@pytest.mark.parametrize("content,message", [
    (b"", "no text found"),
    (b"\n\n  \n", "no text found"),
    (b"fine\n\x00\x01binary", r":2: contains a NUL byte"),
    (b"fine\ncaf\xe9\n", r":2: not valid UTF-8"),
])
def test_bad_text_files_are_one_line_naming_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message) as info:
        read_documents(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_bad_jsonl_and_archives_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"text": "ok"}\n{"body": "no"}\n')
    with pytest.raises(UserError, match=r"a\.jsonl:2: expected an object with a string field \"text\""):
        read_documents(tmp_path / "a.jsonl")
    (tmp_path / "b.txt.gz").write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match=r"b\.txt\.gz: cannot read it as a gz file"):
        read_documents(tmp_path / "b.txt.gz")
    with pytest.raises(UserError, match=r"missing\.txt: text file not found"):
        read_documents(tmp_path / "missing.txt")


def test_too_little_text_for_one_block_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "short.txt"
    path.write_text("\n\n".join(f"Short document {i}." for i in range(30)))
    with pytest.raises(UserError, match=r"the training split holds .* tokens, fewer than one block of "
                                        r"data\.block_size=4096"):
        Trainer(lm_config(f"data.name={path}", "data.block_size=4096", "model.positions=rotary"),
                tmp_path / "run", quiet=True)


def test_splits_are_by_document_hash(tmp_path: Path) -> None:
    splits = load_splits(lm_config().data)
    assert all(p.source == "" for p in splits.train + splits.valid + splits.test)
    grown = tmp_path / "grown.txt"
    grown.write_text(TINY_TEXT.read_text() + "\n\nA new document at the end of the file.\n")
    more = load_splits(lm_config(f"data.name={grown}").data)
    assert {p.target for p in splits.valid} <= {p.target for p in more.valid}  # adding text moves nothing


def test_decay_set_decisions_on_a_decoder() -> None:
    m = model()
    plan = {i.name: i.decayed for i in Regularization(mode="decoupled", weight_decay=0.1,
                                                      decay_set="matrices_no_embedding").plan(m).params}
    assert not plan["embed.weight"] and not plan["positions.weight"]
    assert plan["blocks.0.attention.query.weight"] and plan["blocks.1.mlp.down.weight"]
    assert not plan["blocks.0.attention_norm.weight"] and not plan["blocks.0.mlp.up.bias"]


def test_trains_generates_evaluates_and_resumes_after_sigkill(tmp_path: Path) -> None:
    cfg = lm_config("model.dropout=0.1", "train.eval_every=4", "train.epochs=3", "train.lr=0.003")
    result = Trainer(cfg, tmp_path / "whole", quiet=True).fit()
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    run = tmp_path / "killed"
    proc = subprocess.run(CLI + ["train", "--lr", "0.003", "--output", str(run), "-q", *lm_flags(), "--set",
                                 "train.epochs=3", "--set", "model.dropout=0.1", "--set", "train.eval_every=4"],
                          env={**os.environ, KILL_ENV: "9"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    resumed = resume_run(run, quiet=True)
    assert stable(resumed.history) == stable(result.history)
    assert stable(read_jsonl(run / "metrics.jsonl")) == stable(result.history)

    def generate(*extra: str) -> str:
        out = subprocess.run(CLI + ["generate", str(run), "--prompt", "God said,", "--max-new-tokens", "12", *extra],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return out.stdout

    sampled = generate("--method", "sample", "--seed", "1")
    assert sampled.startswith("God said,") and sampled == generate("--method", "sample", "--seed", "1")
    assert sampled != generate("--method", "sample", "--seed", "2")
    out = subprocess.run(CLI + ["evaluate", str(run), "--split", "test"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    test = json.loads((run / "eval.json").read_text())["test"]
    assert test["bits_per_character"] == pytest.approx(test["loss"] * test["tokens"] / (0.6931471805599453
                                                                                         * test["characters"]))
    assert 0 < test["bits_per_character"] < 10 and "bleu" not in test


def test_generation_through_the_contract_matches_the_full_forward() -> None:
    """Greedy continuation of a prompt picks, at each step, the argmax of the full forward over prompt + output."""
    cfg = lm_config()
    splits = load_splits(cfg.data)
    tokenizer = train_tokenizer([p.target for p in splits.train], cfg.tokenizer)
    m = model()
    m = build_model(DecoderConfig(preset="tiny", dropout=0.0), tokenizer.get_vocab_size()).eval()
    texts = continue_prompts(m, tokenizer, ["In the beginning", "God"], max_new_tokens=6)
    assert texts[0].startswith("In the beginning") and texts[1].startswith("God")
    ids = [EOS_ID] + tokenizer.encode("In the beginning").ids
    out = greedy(m, torch.tensor([ids]), torch.tensor([len(ids)]), 6)[0]
    seq = torch.tensor([ids + out])
    with torch.no_grad():
        picks = logits_of(m, seq)[0, len(ids) - 1 : -1]
        picks[:, :2] = float("-inf")  # PAD and BOS are never generated
    assert picks.argmax(-1).tolist() == out[: picks.size(0)]


def test_sweep_cv_and_report_on_a_decoder(tmp_path: Path) -> None:
    from decaylab.report import write_report
    from decaylab.sweep import sweep

    result = sweep(lm_config(), lambdas="0,0.1", strategy="cv", folds=3, modes="decoupled", output=tmp_path / "s",
                   quiet=True)
    summary = json.loads((result.path / "summary.json").read_text())
    assert summary["final"]["test"]["bits_per_character"] > 0
    page = write_report(result.path).read_text()
    assert "prompt 1" in page and "real text" in page
