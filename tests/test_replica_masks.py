"""Shared dropout draws in a stacked model: replicas whose generators are in one state and whose rates are equal
draw one mask, which must be the mask each would have drawn, with every stream left where its own draw leaves it."""

from __future__ import annotations

import torch

from decaylab.config import load_config
from decaylab.models import build_model, build_stacked
from decaylab.models.stacked import StackedModel


def _stack(generators: list[torch.Generator], rates: list[float]) -> StackedModel:
    return StackedModel({"w": torch.zeros(len(rates), 3)}, rates, generators)


def _bernoulli(rate: float, generator: torch.Generator) -> torch.Tensor:
    return torch.empty(5, 7).bernoulli_(1.0 - rate, generator=generator)


def _own_draws(seeds: list[int], rates: list[float], calls: int) -> tuple[list[list[torch.Tensor]], list]:
    """Each replica drawing alone: its masks over `calls` calls and its generator's final state."""
    masks, states = [], []
    for seed, rate in zip(seeds, rates, strict=True):
        generator = torch.Generator().manual_seed(seed)
        masks.append([_bernoulli(rate, generator) if rate > 0 else None for _ in range(calls)])
        states.append(generator.get_state())
    return masks, states


def test_equal_streams_draw_once_and_every_replica_gets_its_own_mask():
    seeds, rates = [7, 7, 3, 7, 7], [0.1, 0.1, 0.1, 0.3, 0.0]
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    model = _stack(generators, rates)
    expected, final = _own_draws(seeds, rates, calls=3)
    drawn = []
    for call in range(3):
        masks = model.replica_masks(rates, lambda rate, g: drawn.append(rate) or _bernoulli(rate, g))
        for k in range(len(rates)):
            if expected[k][call] is None:
                assert masks[k] is None
            else:
                assert torch.equal(masks[k], expected[k][call])
        assert masks[1] is masks[0]  # same seed, same rate: one draw
        assert masks[2] is not masks[0] and masks[3] is not masks[0]  # another stream; another rate
    # replicas 0 and 1 share a draw; 2 (another seed) and 3 (another rate, even where its state equals 0's) do not
    assert len(drawn) == 3 * 3
    for generator, state in zip(generators, final, strict=True):
        assert torch.equal(generator.get_state(), state)


def test_stacked_transformer_dropout_with_shared_draws_equals_per_replica_draws():
    cfg = load_config(None, ["model.arch=decoder", "model.preset=tiny", "model.dropout=0.2"]).model
    params = {n: torch.stack([t.detach()] * 3) for n, t in build_model(cfg, 50).named_parameters()}
    x = torch.randn(3, 2, 4, cfg.d_model)
    generators = [torch.Generator().manual_seed(5) for _ in range(3)]
    out = build_stacked(cfg, params, [0.2] * 3, generators).dropout(x)
    for k in range(3):
        reference = torch.Generator().manual_seed(5)
        noise = torch.empty_like(x[k]).bernoulli_(0.8, generator=reference).div_(0.8)
        assert torch.equal(out[k], x[k] * noise)
        assert torch.equal(generators[k].get_state(), reference.get_state())
    # the draws differ between calls (the streams moved on) and are shared within one
    again = build_stacked(cfg, params, [0.2] * 3, generators).dropout(torch.ones_like(x))
    assert torch.equal(again[0], again[2]) and not torch.equal(again[0] != 0, out[0] != 0)
