"""The seq2seq model: pad positions have no influence and get no gradient; every variant runs; ties hold."""

from __future__ import annotations

import pytest
import torch

from decaylab.config import RNNConfig
from decaylab.data.batching import collate
from decaylab.data.tokenizer import PAD_ID
from decaylab.models import build_model, count_parameters

VOCAB = 40


def batch():
    return collate([[5, 6, 7, 2], [8, 2], [9, 10, 11, 12, 13, 2]], [[14, 15, 2], [16, 17, 18, 19, 2], [20, 2]])


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("attention", ["dot", "general", "additive", "none"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_every_variant_runs_and_ignores_padding(cell: str, attention: str, bidirectional: bool) -> None:
    torch.manual_seed(0)
    model = build_model(
        RNNConfig(preset="tiny", cell=cell, attention=attention, bidirectional=bidirectional, layers=2, dropout=0.0),
        VOCAB,
    )
    b = batch()
    loss = model(b.src, b.src_len, b.tgt_in, b.tgt_out)
    # Row by row, without any padding, the summed loss is the same.
    rows = [
        collate([b.src[i, : b.src_len[i]].tolist()], [b.tgt_out[i][b.tgt_out[i] != PAD_ID].tolist()]) for i in range(3)
    ]
    alone = sum(model(r.src, r.src_len, r.tgt_in, r.tgt_out) for r in rows)
    torch.testing.assert_close(loss, alone, rtol=1e-5, atol=1e-5)


def test_pad_embeddings_get_no_gradient() -> None:
    torch.manual_seed(0)
    model = build_model(RNNConfig(preset="tiny", dropout=0.0, tie_embeddings=False), VOCAB)
    b = batch()
    model(b.src, b.src_len, b.tgt_in, b.tgt_out).backward()
    assert model.src_embed.weight.grad[PAD_ID].abs().sum() == 0
    assert model.tgt_embed.weight.grad[PAD_ID].abs().sum() == 0
    assert model.src_embed.weight.grad[5].abs().sum() > 0


def test_changing_pad_ids_changes_nothing() -> None:
    torch.manual_seed(0)
    model = build_model(RNNConfig(preset="tiny", dropout=0.0), VOCAB)
    b = batch()
    loss = model(b.src, b.src_len, b.tgt_in, b.tgt_out)
    src = b.src.clone()
    src[src == PAD_ID] = 33  # garbage where the padding was
    torch.testing.assert_close(model(src, b.src_len, b.tgt_in, b.tgt_out), loss)


def test_decoder_is_fed_the_target_not_the_source() -> None:
    torch.manual_seed(0)
    model = build_model(RNNConfig(preset="tiny", dropout=0.0), VOCAB)
    b = batch()
    other = b.tgt_in.clone()
    other[:, 1:] = torch.where(other[:, 1:] != PAD_ID, 21, PAD_ID)
    assert not torch.allclose(model(b.src, b.src_len, b.tgt_in, b.tgt_out), model(b.src, b.src_len, other, b.tgt_out))


def test_tied_output_shares_the_target_embedding() -> None:
    model = build_model(RNNConfig(preset="tiny", tie_embeddings=True), VOCAB)
    assert model.output.weight is model.tgt_embed.weight
    untied = build_model(RNNConfig(preset="tiny", tie_embeddings=False), VOCAB)
    assert count_parameters(untied) > count_parameters(model)


def test_step_matches_teacher_forcing() -> None:
    torch.manual_seed(0)
    model = build_model(RNNConfig(preset="tiny", cell="lstm", dropout=0.0), VOCAB).eval()
    b = batch()
    memory = model.encode(b.src, b.src_len)
    hidden, _ = model.decode(b.tgt_in, memory)
    full = torch.log_softmax(model.logits(hidden), -1)
    state = memory.state
    for t in range(b.tgt_in.size(1)):
        step, state = model.step(b.tgt_in[:, t], memory, state)
        torch.testing.assert_close(step, full[:, t], rtol=1e-5, atol=1e-5)


def test_pack_sources_is_pack_padded_sequence_without_the_device_copy() -> None:
    from torch.nn.utils.rnn import pack_padded_sequence

    from decaylab.models.rnn import pack_sources

    x = torch.randn(6, 5, 3)
    lengths = torch.tensor([3, 5, 1, 3, 5, 2])  # ties: the order among equal lengths must match too
    ours, torch_s = pack_sources(x, lengths), pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    for name in ("data", "batch_sizes", "sorted_indices", "unsorted_indices"):
        assert torch.equal(getattr(ours, name), getattr(torch_s, name)), name


def test_target_index_selects_the_boolean_mask_rows() -> None:
    b = batch()
    assert b.n_tokens == int((b.tgt_out != PAD_ID).sum())
    assert torch.equal(b.tgt_out.reshape(-1)[b.target_index], b.tgt_out[b.tgt_out != PAD_ID])
    torch.manual_seed(0)
    model = build_model(RNNConfig(preset="tiny", dropout=0.0), VOCAB)
    given = model(b.src, b.src_len, b.tgt_in, b.tgt_out, target_index=b.target_index)
    assert torch.equal(given, model(b.src, b.src_len, b.tgt_in, b.tgt_out))
