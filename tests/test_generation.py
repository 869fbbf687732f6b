"""Decoding: greedy, beam search and sampling on tiny models, untrained and briefly trained to copy."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from decaylab.config import RNNConfig, TokenizerConfig
from decaylab.data.batching import collate
from decaylab.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, decode, encode, train_tokenizer
from decaylab.generation import beam_hypotheses, beam_search, greedy, max_lengths, sample, translate
from decaylab.generation.filtering import filter_logits
from decaylab.models.rnn import Seq2Seq

VOCAB = 50
ALL_CONFIGS = [
    dict(cell=cell, bidirectional=bidi, attention=attention)
    for cell, bidi, attention in itertools.product(
        ("gru", "lstm"), (True, False), ("dot", "general", "additive", "none")
    )
]
SOME_CONFIGS = [ALL_CONFIGS[1], ALL_CONFIGS[14]]  # gru/bi/general and lstm/uni/additive


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test of this module on one intra-op thread (conftest.one_thread)."""


def make_model(seed: int = 0, vocab: int = VOCAB, eos_bias: float = 0.0, **kwargs) -> Seq2Seq:
    """An untrained tiny model in eval mode, with N(0, 1) embeddings (clear preferences) and a bias on EOS."""
    torch.manual_seed(seed)
    model = Seq2Seq(RNNConfig(preset="tiny", **kwargs), vocab).eval()
    with torch.no_grad():
        for embedding in (model.src_embed, model.tgt_embed):  # the output layer is tied to tgt_embed
            embedding.weight.normal_()
            embedding.weight[PAD_ID].zero_()
        model.output.bias[EOS_ID] += eos_bias
    return model


EOS_BIASES = tuple(b / 8 for b in range(17)) + (-0.5, -1.0, -2.0)


def mixed_model(seed: int, sources: list[list[int]], limit: int | torch.Tensor, vocab: int = VOCAB,
                **kwargs) -> Seq2Seq:
    """`make_model` with the first EOS bias under which greedy stops early by EOS on some of `sources` and
    gives two tokens or more on some other: both ways of finishing get exercised whatever the init."""
    model = make_model(seed, vocab, **kwargs)
    src, src_len = padded(sources)
    limits = limit.tolist() if isinstance(limit, torch.Tensor) else [limit] * len(sources)
    base = model.output.bias[EOS_ID].item()
    for eos_bias in EOS_BIASES:
        with torch.no_grad():
            model.output.bias[EOS_ID] = base + eos_bias
        out = greedy(model, src, src_len, limit)
        if any(len(o) < m for o, m in zip(out, limits, strict=True)) and max(map(len, out)) >= 2:
            return model
    raise AssertionError(f"no EOS bias in {EOS_BIASES} gives mixed output lengths")


def random_sources(
    n: int, seed: int, low: int = 4, high: int = VOCAB, lengths: tuple[int, int] = (1, 9)
) -> list[list[int]]:
    """Random token ids in [low, high) of random lengths, each ending with EOS."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(lengths[0], lengths[1] + 1, (1,), generator=gen))
        out.append(torch.randint(low, high, (length,), generator=gen).tolist() + [EOS_ID])
    return out


def padded(sources: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded source batch and lengths, via the training collate."""
    batch = collate(sources, sources)
    return batch.src, batch.src_len


def sequence_log_probs(model: Seq2Seq, sources: list[list[int]], outputs: list[list[int]]) -> list[float]:
    """log p(output + EOS | source) for each pair, by teacher forcing."""
    batch = collate(sources, [out + [EOS_ID] for out in outputs])
    with torch.no_grad():
        hidden, _ = model.decode(batch.tgt_in, model.encode(batch.src, batch.src_len))
        log_probs = model.logits(hidden).float().log_softmax(dim=-1)
        token = log_probs.gather(2, batch.tgt_out.unsqueeze(2)).squeeze(2)
    return token.masked_fill(batch.tgt_out == PAD_ID, 0.0).sum(dim=1).tolist()


class StepCounter:
    """Wraps `model.step` to record the batch size of every call."""

    def __init__(self, model: Seq2Seq):
        self.sizes: list[int] = []
        self.inner = model.step
        model.step = self  # instance attribute shadows the method

    def __call__(self, tokens, memory, state):
        self.sizes.append(tokens.size(0))
        return self.inner(tokens, memory, state)


# -- a model briefly trained to copy sequences of ids 4..9 -------------------------------------------------


def train_copy_model(**kwargs) -> tuple[Seq2Seq, list[list[int]]]:
    """A tiny model trained 150 full-batch Adam steps to copy 64 random sequences; also returns them."""
    torch.manual_seed(0)
    model = Seq2Seq(RNNConfig(preset="tiny", dropout=0.0, **kwargs), 12)
    data = random_sources(64, seed=123, low=4, high=10, lengths=(3, 7))
    batch = collate(data, data)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = model(batch.src, batch.src_len, batch.tgt_in, batch.tgt_out) / batch.n_tokens
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), data


@pytest.fixture(
    scope="module",
    params=[dict(cell="gru"), dict(cell="lstm", bidirectional=False, attention="additive")],
    ids=["gru-bi-general", "lstm-uni-additive"],
)
def copy_model(request) -> tuple[Seq2Seq, list[list[int]]]:
    return train_copy_model(**request.param)


def test_trained_model_copies_with_greedy_and_beam(copy_model):
    model, data = copy_model
    src, src_len = padded(data[:16])
    expected = [seq[:-1] for seq in data[:16]]
    assert greedy(model, src, src_len, max_lengths(src_len, 1.5, 2)) == expected
    assert beam_search(model, src, src_len, 5, max_lengths(src_len, 1.5, 2)) == expected
    assert beam_search(model, src, src_len, 5, 20, length_penalty=0.0) == expected


def test_beam1_equals_greedy_on_trained_model(copy_model):
    model, data = copy_model
    sources = data[:8] + random_sources(8, seed=7, low=4, high=10)  # seen and unseen sources
    src, src_len = padded(sources)
    for limit in (max_lengths(src_len, 1.0, 0), 12):
        for length_penalty in (0.0, 1.0):
            assert beam_search(model, src, src_len, 1, limit, length_penalty) == greedy(model, src, src_len, limit)


# -- untrained models ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda c: "-".join(map(str, c.values())))
def test_beam1_equals_greedy(config):
    for seed in range(3):
        sources = random_sources(6, seed)
        src, src_len = padded(sources)
        limit = max_lengths(src_len, 1.0, 2)
        model = mixed_model(seed, sources, limit, **config)
        out = greedy(model, src, src_len, limit)
        for length_penalty in (0.0, 1.0, 2.0):
            assert beam_search(model, src, src_len, 1, limit, length_penalty) == out


@pytest.mark.parametrize("config", SOME_CONFIGS + [ALL_CONFIGS[4]], ids=lambda c: "-".join(map(str, c.values())))
def test_batched_equals_one_by_one(config):
    sources = random_sources(7, seed=3)
    src, src_len = padded(sources)
    limit = max_lengths(src_len, 1.5, 1)
    model = mixed_model(3, sources, limit, **config)
    batched_greedy = greedy(model, src, src_len, limit)
    batched_beam = beam_search(model, src, src_len, 4, limit)
    for i, source in enumerate(sources):
        one, one_len = padded([source])
        assert greedy(model, one, one_len, limit[i : i + 1]) == [batched_greedy[i]]
        assert beam_search(model, one, one_len, 4, int(limit[i])) == [batched_beam[i]]


@pytest.mark.parametrize("seed", range(4))
def test_beam_scores_at_least_greedy(seed):
    # Not a theorem: pruning can drop greedy's path or keep a good EOS out of the top `beam` candidates (about 3%
    # of rows at beam 5 on these flat untrained models); a wide beam must beat greedy row by row, beam 5 overall.
    sources = random_sources(6, seed)
    src, src_len = padded(sources)
    model = mixed_model(seed, sources, 6, **ALL_CONFIGS[seed * 5 % len(ALL_CONFIGS)])
    greedy_lp = sequence_log_probs(model, sources, greedy(model, src, src_len, 6))
    for beam in (5, 64):
        hyps = beam_hypotheses(model, src, src_len, beam, 6, length_penalty=0.0)
        beam_lp = sequence_log_probs(model, sources, [h.tokens for h in hyps])
        for hyp, forced in zip(hyps, beam_lp, strict=True):
            assert hyp.log_prob == pytest.approx(forced, abs=1e-4)  # the search scores what teacher forcing scores
            assert hyp.score == hyp.log_prob
        assert sum(beam_lp) >= sum(greedy_lp) - 1e-5
    assert all(b >= g - 1e-5 for b, g in zip(beam_lp, greedy_lp, strict=True))


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_finds_the_best_sequence_by_enumeration(length_penalty):
    # Vocabulary: pad, bos, eos, unk, one word; pad and bos are never generated, so outputs use {3, 4}.
    max_len = 3
    candidates = [list(seq) for n in range(max_len + 1) for seq in itertools.product((3, 4), repeat=n)]
    for seed in range(3):
        model = make_model(seed, vocab=5, eos_bias=0.0, cell="gru" if seed % 2 else "lstm")
        sources = random_sources(3, seed, high=5)
        src, src_len = padded(sources)
        hyps = beam_hypotheses(model, src, src_len, 16, max_len, length_penalty)
        for source, hyp in zip(sources, hyps, strict=True):
            scores = sequence_log_probs(model, [source] * len(candidates), candidates)
            normed = [s / (len(c) + 1) ** length_penalty for s, c in zip(scores, candidates, strict=True)]
            best = max(range(len(candidates)), key=normed.__getitem__)
            assert hyp.tokens == candidates[best]
            assert hyp.score == pytest.approx(normed[best], abs=1e-4)


def test_length_penalty_prefers_longer_outputs():
    sources = random_sources(8, seed=5)
    src, src_len = padded(sources)
    model = mixed_model(5, sources, 10)
    short = beam_search(model, src, src_len, 6, 10, length_penalty=0.0)
    long = beam_search(model, src, src_len, 6, 10, length_penalty=2.0)
    assert sum(map(len, long)) > sum(map(len, short))


def test_max_len_limits_and_validation():
    model = make_model(0, eos_bias=-20.0)  # never stops by itself
    src, src_len = padded(random_sources(4, seed=0))
    limit = torch.tensor([0, 1, 3, 5])
    for out in (
        greedy(model, src, src_len, limit),
        beam_search(model, src, src_len, 3, limit),
        sample(model, src, src_len, limit, generator=torch.Generator().manual_seed(0)),
    ):
        assert [len(o) for o in out] == [0, 1, 3, 5]
        assert all(EOS_ID not in o and BOS_ID not in o and PAD_ID not in o for o in out)
    counter = StepCounter(model)
    assert greedy(model, src, src_len, 0) == [[]] * 4
    assert counter.sizes == []
    with pytest.raises(ValueError, match="max_len"):
        greedy(model, src, src_len, -1)
    with pytest.raises(ValueError, match="max_len"):
        beam_search(model, src, src_len, 2, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="beam"):
        beam_search(model, src, src_len, 0, 5)
    with pytest.raises(ValueError, match="length_penalty"):
        beam_search(model, src, src_len, 2, 5, length_penalty=-1.0)


def test_max_lengths():
    assert max_lengths(torch.tensor([1, 4, 7]), 1.5, 10).tolist() == [11, 16, 20]
    assert max_lengths(torch.tensor([3]), 0.0, 0).tolist() == [0]


def test_finished_rows_are_not_recomputed():
    sources = random_sources(8, seed=2)
    src, src_len = padded(sources)
    limit = torch.tensor([1, 2, 3, 4, 12, 12, 12, 12])
    model = mixed_model(2, sources, limit)
    counter = StepCounter(model)
    out = greedy(model, src, src_len, limit)
    # A row of length L took L + 1 steps when it ended with EOS, L when it hit its limit.
    steps = [min(len(o) + 1, m) for o, m in zip(out, limit.tolist(), strict=True)]
    assert counter.sizes == [sum(s >= t for s in steps) for t in range(1, max(steps) + 1)]

    # Without EOS, rows stop at their limits: greedy after `limit` steps, beam search after limit + 1 (forced EOS).
    model = make_model(2, eos_bias=-20.0)
    counter = StepCounter(model)
    greedy(model, src, src_len, limit)
    assert counter.sizes == [8, 7, 6, 5] + [4] * 8
    counter.sizes.clear()
    beam_search(model, src, src_len, 3, limit)
    assert counter.sizes == [3 * n for n in [8, 8, 7, 6, 5] + [4] * 8]


# -- sampling ----------------------------------------------------------------------------------------------


def test_sampling_is_reproducible_and_top_k_1_is_greedy():
    sources = random_sources(6, seed=4)
    src, src_len = padded(sources)
    model = mixed_model(4, sources, 8)

    def draw(seed: int, **kwargs) -> list[list[int]]:
        return sample(model, src, src_len, 8, generator=torch.Generator().manual_seed(seed), **kwargs)

    assert draw(0) == draw(0)
    assert draw(0, temperature=0.7, top_k=5, top_p=0.9) == draw(0, temperature=0.7, top_k=5, top_p=0.9)
    assert len({str(draw(seed)) for seed in range(4)}) > 1
    expected = greedy(model, src, src_len, 8)
    assert draw(1, top_k=1) == expected
    assert draw(2, top_k=1, temperature=3.0) == expected
    assert draw(3, top_p=1e-6) == expected
    assert all(PAD_ID not in o and BOS_ID not in o for o in draw(5, temperature=5.0))


def test_filter_logits():
    log_probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()

    def finite(**kwargs) -> list[bool]:
        return torch.isfinite(filter_logits(log_probs, **kwargs))[0].tolist()
    assert finite(top_k=2) == [True, True, False, False]
    assert finite(top_p=0.5) == [True, False, False, False]
    assert finite(top_p=0.7) == [True, True, False, False]
    assert finite(top_p=0.9) == [True, True, True, False]
    assert finite(top_k=3, top_p=0.95) == [True, True, True, False]
    tempered = torch.tensor([0.5, 0.3, 0.15, 0.05]) ** 0.5
    probs = filter_logits(log_probs, temperature=2.0).softmax(-1)
    assert probs[0].tolist() == pytest.approx((tempered / tempered.sum()).tolist(), abs=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=math.inf), "temperature"),
        (dict(top_k=-1), "top_k"),
        (dict(top_k=1.5), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_p=math.nan), "top_p"),
    ],
)
def test_sampling_argument_validation(kwargs, match):
    model = make_model(0)
    src, src_len = padded(random_sources(2, seed=0))
    with pytest.raises(ValueError, match=match):
        sample(model, src, src_len, 5, **kwargs)


# -- translate -----------------------------------------------------------------------------------------------

TEXTS = [
    "in the beginning god created the heaven and the earth",
    "and the earth was without form",
    "and darkness was upon the face of the deep",
    "let there be light",
    "and there was light",
    "and god saw the light that it was good",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS * 3, TokenizerConfig(vocab_size=64, min_frequency=1))


def text_model(seed: int, tokenizer, **kwargs) -> Seq2Seq:
    """An untrained model over the tokenizer's vocabulary whose greedy outputs on TEXTS vary in length."""
    ids = encode(tokenizer, TEXTS)
    limit = max_lengths(torch.tensor([len(i) for i in ids]), 1.5, 10)
    return mixed_model(seed, ids, limit, vocab=tokenizer.get_vocab_size(), **kwargs)


def test_translate_restores_order_and_handles_empty_sources(tokenizer):
    model = text_model(6, tokenizer)
    sources = [TEXTS[3], "", TEXTS[0], "   ", TEXTS[4], TEXTS[2]]
    for method in ("greedy", "beam"):
        batched = translate(model, tokenizer, sources, method=method, beam=3, batch_size=2)
        alone = [translate(model, tokenizer, [s], method=method, beam=3)[0] for s in sources]
        assert batched == alone
        assert batched[1] == batched[3] == ""
        assert any(batched)
    assert translate(model, tokenizer, []) == []
    assert translate(model, tokenizer, [""], method="beam") == [""]


def test_translate_matches_search_and_restores_mode(tokenizer):
    model = text_model(7, tokenizer, dropout=0.5).train()
    ids = encode(tokenizer, TEXTS[:3])
    src, src_len = padded(ids)
    expected = greedy(model.eval(), src, src_len, max_lengths(src_len, 1.5, 10))
    model.train()
    out = translate(model, tokenizer, TEXTS[:3])  # eval mode inside: dropout off, so deterministic
    assert model.training
    assert out == translate(model, tokenizer, TEXTS[:3]) and len(out) == 3
    assert out == decode(tokenizer, expected)
    model.eval()
    translate(model, tokenizer, TEXTS[:1])
    assert not model.training


def test_translate_sampling_and_validation(tokenizer):
    model = text_model(8, tokenizer)
    kwargs = dict(method="sample", temperature=1.2, top_k=10, top_p=0.9, batch_size=2)
    assert translate(model, tokenizer, TEXTS, seed=1, **kwargs) == translate(model, tokenizer, TEXTS, seed=1, **kwargs)
    with pytest.raises(ValueError, match="method"):
        translate(model, tokenizer, TEXTS, method="nucleus")
    with pytest.raises(ValueError, match="top_p"):
        translate(model, tokenizer, TEXTS, method="sample", top_p=0.0)
    with pytest.raises(ValueError, match="beam"):
        translate(model, tokenizer, TEXTS, method="beam", beam=0)
    with pytest.raises(ValueError, match="batch_size"):
        translate(model, tokenizer, TEXTS, batch_size=0)
