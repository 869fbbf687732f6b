"""The model contract (models/contract.py): Seq2Seq meets it, and generation needs nothing else.

Greedy, beam search and sampling run here against models whose memory and decoding state have other layouts
than the RNN's (dicts and tuples, rows on dim 0), which proves the search assumes none.
"""

from __future__ import annotations

import ast
import inspect
import itertools
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

from decaylab.config import MODEL_CONFIGS, RNNConfig
from decaylab.data.batching import collate
from decaylab.data.tokenizer import EOS_ID, UNK_ID
from decaylab.generation import beam_hypotheses, beam_search, greedy, sample
from decaylab.models import MODELS, Seq2SeqModel, build_model
from decaylab.models.rnn import Seq2Seq

GENERATION = Path(__file__).resolve().parents[1] / "src" / "decaylab" / "generation"
CONTRACT = ["forward", "loss", "encode", "initial_state", "step", "reorder_state", "reorder_memory"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test of this module on one intra-op thread (conftest.one_thread)."""


def sources(n: int, seed: int, vocab: int = 12) -> list[list[int]]:
    """Random ids in [4, vocab) of lengths 1..8, each ending with EOS."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(1, 9, (1,), generator=gen))
        out.append(torch.randint(4, vocab, (length,), generator=gen).tolist() + [EOS_ID])
    return out


def padded(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    batch = collate(seqs, seqs)
    return batch.src, batch.src_len


# -- Seq2Seq meets the contract ----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_every_registered_model_meets_the_contract(arch: str) -> None:
    assert set(MODELS) == set(MODEL_CONFIGS)
    section = MODEL_CONFIGS[arch]
    model = build_model(section(preset=next(iter(section.PRESETS))), 40)
    cls = MODELS[arch]
    assert isinstance(model, cls) and isinstance(model, Seq2SeqModel)
    for name in CONTRACT:  # the same parameter names as the contract (callers pass them by keyword)
        want = list(inspect.signature(getattr(Seq2SeqModel, name)).parameters)
        assert list(inspect.signature(getattr(cls, name)).parameters) == want, name


def test_seq2seq_loss_is_forward_of_the_batch() -> None:
    torch.manual_seed(0)
    model = Seq2Seq(RNNConfig(preset="tiny", dropout=0.0), 40)
    data = sources(6, seed=1, vocab=40)
    batch = collate(data, data[::-1])
    want = model(batch.src, batch.src_len, batch.tgt_in, batch.tgt_out, 0.1)
    torch.testing.assert_close(model.loss(batch, label_smoothing=0.1), want)
    torch.testing.assert_close(model.loss(batch), model(batch.src, batch.src_len, batch.tgt_in, batch.tgt_out))


def test_generation_imports_only_the_contract_from_models() -> None:
    for path in GENERATION.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("decaylab.models"):
                assert node.module == "decaylab.models.contract", f"{path.name} imports {node.module}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("decaylab.models") for a in node.names), path.name


# -- a model with its own layout: memory and state are dicts with rows on dim 0 ---------------------------------


class CopyModel(nn.Module):
    """Copies its source: the next token is likely the source's token at the output position.

    Memory: {"src": [N, S], "len": [N]}; state: {"src": [N, S], "fed": [N, t]} (the tokens fed so far), rows on
    dim 0. A row whose fed tokens are not the source's prefix prefers UNK, so a search that gave a hypothesis
    another row's state, or a memory row of another source, would not copy. Each call is counted.
    """

    def __init__(self, vocab: int = 12, margin: float = 4.0):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # generation reads the device from the parameters
        self.vocab, self.margin = vocab, margin
        self.calls: Counter[str] = Counter()
        self.rows: list[int] = []  # the rows of each step

    def forward(self, src, src_len, tgt_in, tgt_out, label_smoothing=0.0, target_index=None):
        raise NotImplementedError  # never trained

    def loss(self, batch, label_smoothing=0.0):
        raise NotImplementedError

    def encode(self, src, src_len):
        self.calls["encode"] += 1
        return {"src": src, "len": src_len.to(src.device)}

    def initial_state(self, memory):
        self.calls["initial_state"] += 1
        rows = memory["src"].size(0)
        return {"src": memory["src"].clone(), "fed": torch.zeros((rows, 0), dtype=torch.long)}

    def step(self, tokens, memory, state):
        self.calls["step"] += 1
        rows = tokens.size(0)
        self.rows.append(rows)
        assert memory["src"].size(0) == state["fed"].size(0) == rows
        assert torch.equal(state["src"], memory["src"]), "state rows and memory rows describe different sources"
        fed = torch.cat([state["fed"], tokens.unsqueeze(1)], dim=1)
        t = fed.size(1) - 1  # output tokens so far
        src = memory["src"]
        target = src[:, t] if t < src.size(1) else torch.full((rows,), EOS_ID)
        on_track = (fed[:, 1:] == src[:, :t]).all(dim=1) if t <= src.size(1) else torch.zeros(rows, dtype=torch.bool)
        target = torch.where(on_track, target, torch.full_like(target, UNK_ID))
        scores = torch.zeros((rows, self.vocab))
        scores[torch.arange(rows), target] = self.margin
        return scores.log_softmax(dim=-1), {"src": state["src"], "fed": fed}

    def reorder_state(self, state, index):
        self.calls["reorder_state"] += 1
        return {key: value.index_select(0, index) for key, value in state.items()}

    def reorder_memory(self, memory, index):
        self.calls["reorder_memory"] += 1
        return {key: value.index_select(0, index) for key, value in memory.items()}


@pytest.mark.parametrize("limit", [20, 3, "per-row"])
def test_search_runs_a_model_with_another_state_layout(limit) -> None:
    data = sources(9, seed=4)
    src, src_len = padded(data)
    max_len = torch.tensor([20, 0, 2, 5, 1, 20, 3, 4, 20]) if limit == "per-row" else limit
    limits = max_len.tolist() if isinstance(max_len, torch.Tensor) else [max_len] * len(data)
    want = [seq[:-1][:m] for seq, m in zip(data, limits, strict=True)]
    model = CopyModel()
    assert isinstance(model, Seq2SeqModel)
    assert greedy(model, src, src_len, max_len) == want
    assert sample(model, src, src_len, max_len, top_k=1) == want
    assert sample(model, src, src_len, max_len, temperature=0.5, top_k=1, top_p=0.5) == want
    # raw log-probs (length_penalty 0) would rather stop at once than be cut short: only then is the copy best
    penalties = (1.0, 0.0) if limit == 20 else (1.0,)
    for beam, length_penalty in itertools.product((1, 2, 4), penalties):
        model.calls.clear()
        model.rows.clear()
        assert beam_search(model, src, src_len, beam, max_len, length_penalty) == want
        # beam search reorders the state after every step but the last, the memory once per beam row and then
        # only when sentences leave
        assert model.calls["reorder_state"] == model.calls["step"] - 1
        leaves = sum(after < before for before, after in zip(model.rows, model.rows[1:], strict=False))
        assert model.calls["reorder_memory"] == 1 + leaves


def test_beam_log_probs_through_another_state_layout() -> None:
    data = sources(5, seed=8)
    src, src_len = padded(data)
    model = CopyModel()
    per_token = torch.tensor([0.0] * 12).index_fill(0, torch.tensor([4]), model.margin).log_softmax(0)
    for hyp, seq in zip(beam_hypotheses(model, src, src_len, 3, 20), data, strict=True):
        assert hyp.tokens == seq[:-1]
        assert hyp.log_prob == pytest.approx(len(seq) * per_token[4].item(), rel=1e-5)


# -- the real RNN behind another layout: the same outputs ------------------------------------------------------


class BatchFirstRNN(nn.Module):
    """A Seq2Seq behind another layout: memory an opaque tuple, state a dict of [N, layers, H] tensors."""

    def __init__(self, inner: Seq2Seq):
        super().__init__()
        self.inner = inner

    def forward(self, src, src_len, tgt_in, tgt_out, label_smoothing=0.0, target_index=None):
        return self.inner(src, src_len, tgt_in, tgt_out, label_smoothing, target_index)

    def loss(self, batch, label_smoothing=0.0):
        return self.inner.loss(batch, label_smoothing)

    def encode(self, src, src_len):
        return ("rnn memory", self.inner.encode(src, src_len))

    def initial_state(self, memory):
        return self._ours(self.inner.initial_state(memory[1]))

    def step(self, tokens, memory, state):
        log_probs, state = self.inner.step(tokens, memory[1], self._theirs(state))
        return log_probs, self._ours(state)

    def reorder_state(self, state, index):
        return {key: value.index_select(0, index) for key, value in state.items()}

    def reorder_memory(self, memory, index):
        return (memory[0], self.inner.reorder_memory(memory[1], index))

    @staticmethod
    def _ours(state):
        parts = state if isinstance(state, tuple) else (state,)
        return {f"part{i}": part.transpose(0, 1).contiguous() for i, part in enumerate(parts)}

    @staticmethod
    def _theirs(state):
        parts = tuple(state[f"part{i}"].transpose(0, 1).contiguous() for i in range(len(state)))
        return parts if len(parts) == 2 else parts[0]


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_rnn_behind_another_layout_decodes_the_same(cell: str) -> None:
    torch.manual_seed(3)
    inner = Seq2Seq(RNNConfig(preset="tiny", cell=cell, layers=2, dropout=0.0), 30).eval()
    with torch.no_grad():
        inner.tgt_embed.weight.normal_()  # clear preferences, so outputs differ between rows
        inner.output.bias[EOS_ID] -= 1.0
    wrapped = BatchFirstRNN(inner)
    assert isinstance(wrapped, Seq2SeqModel)
    data = sources(7, seed=5, vocab=30)
    src, src_len = padded(data)
    max_len = torch.tensor([6, 0, 3, 9, 1, 6, 4])
    assert greedy(wrapped, src, src_len, max_len) == greedy(inner, src, src_len, max_len)
    for beam in (1, 3):
        ours = beam_hypotheses(wrapped, src, src_len, beam, max_len)
        theirs = beam_hypotheses(inner, src, src_len, beam, max_len)
        assert [h.tokens for h in ours] == [h.tokens for h in theirs]
        assert [h.log_prob for h in ours] == pytest.approx([h.log_prob for h in theirs], rel=1e-6)
    draws = [sample(m, src, src_len, max_len, generator=torch.Generator().manual_seed(11)) for m in (wrapped, inner)]
    assert draws[0] == draws[1]
