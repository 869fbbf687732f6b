"""What every stacked model (K replicas of one architecture as one model) shares: the stacked parameters and
their names, train/eval mode, per-replica linear layers and embeddings.

A stacked model holds no nn.Parameters of its own: `params` maps each name of the single model's
`named_parameters()` to a leaf tensor [K, ...] (replica k's tensor is row k), owned by the stacked engine
(training/stacked.py), which steps them with one optimizer and applies each replica's decay by name.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from decaylab.data.tokenizer import PAD_ID
from decaylab.models.fused_loss import stacked_linear_cross_entropy


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Per-replica x[k] @ weight[k]ᵀ + bias[k] for x [K, ..., in], weight [K, out, in], bias [K, out]."""
    flat = x.reshape(x.size(0), -1, x.size(-1))
    out = torch.bmm(flat, weight.transpose(1, 2)) if bias is None else \
        torch.baddbmm(bias.unsqueeze(1), flat, weight.transpose(1, 2))
    return out.reshape(*x.shape[:-1], weight.size(1))


class StackedModel:
    """K replicas whose parameters are `params` [K, ...] under the single model's names; dropout rates per replica.

    `TIED` names the parameter a tied output weight is (`named_parameters()` lists a tied tensor once).
    `SEQUENTIAL_MASKS`: on the CPU, replica k's dropout makes the very draws its single model makes, in the same
    order, so a generator in the state of that run's global generator gives that run's masks.
    """

    TIED: dict[str, str] = {}
    SEQUENTIAL_MASKS = False

    def __init__(self, params: dict[str, torch.Tensor], dropouts: list[float],
                 generators: list[torch.Generator] | None = None):
        self.params = params
        self.dropouts = list(dropouts)
        self.generators = generators
        self.training = True
        if len(self.dropouts) != self.replicas:
            raise ValueError(f"{len(self.dropouts)} dropout rates for {self.replicas} replicas")
        if any(p > 0 for p in self.dropouts) and (generators is None or len(generators) != self.replicas):
            raise ValueError("dropout > 0 needs one generator per replica")

    @property
    def replicas(self) -> int:
        """K, the number of stacked replicas."""
        return next(iter(self.params.values())).size(0)

    def train(self, mode: bool = True) -> StackedModel:
        """Training mode (dropout on) or eval mode, like nn.Module.train."""
        self.training = mode
        return self

    def eval(self) -> StackedModel:
        """Eval mode: dropout off."""
        return self.train(False)

    def eval_batch_tokens(self, device: torch.device) -> int:
        """Padded tokens per evaluation batch of the stack (the corpus scorer's default, as a single model's)."""
        return 8192

    def p(self, name: str) -> torch.Tensor:
        """The stacked parameter `name` (a tied output weight is the embedding it is tied to)."""
        if name not in self.params and name in self.TIED:
            return self.params[self.TIED[name]]
        return self.params[name]

    def has(self, name: str) -> bool:
        """Whether the replicas have parameter `name` (e.g. biases only exist for some layers)."""
        return name in self.params

    def linear(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        """The replicas' Linear `prefix` (its weight, and its bias where the model has one) applied to x [K, ...]."""
        bias = f"{prefix}.bias"
        return linear(x, self.p(f"{prefix}.weight"), self.p(bias) if self.has(bias) else None)

    def replica_masks(self, rates: list[float], draw: Callable[[float, torch.Generator], torch.Tensor]
                      ) -> list[torch.Tensor | None]:
        """Replica k's dropout mask `draw(rates[k], generators[k])` (None at rate 0), with one draw for replicas
        whose rates are equal and whose generators are in the same state.

        Such replicas would draw the very same mask, so the first one draws it and the others' generators are moved
        to its generator's new state: every stream ends where its own draw would have left it, and the masks are
        the ones each would have drawn. This happens where the generators replay the sequential runs' streams (the
        Transformers on the CPU: a λ sweep's replicas share the run seed, so all of them share the draws); the RNN's
        and a GPU's generators are seeded per replica name and draw apart.
        """
        masks: list[torch.Tensor | None] = [None] * len(rates)
        drawn: list[tuple[int, torch.Tensor]] = []  # (replica that drew, its generator's state before the draw)
        for k, rate in enumerate(rates):
            if rate <= 0:
                continue
            generator = self.generators[k]
            state = generator.get_state()
            same = next((j for j, before in drawn if rates[j] == rate and torch.equal(before, state)), None)
            if same is None:
                drawn.append((k, state))
                masks[k] = draw(rate, generator)
            else:
                masks[k] = masks[same]
                generator.set_state(self.generators[same].get_state())
        return masks

    def embed(self, name: str, tokens: torch.Tensor) -> torch.Tensor:
        """Rows of the stacked embedding `name` [K, V, E] for tokens [B, T]: [K, B, T, E]."""
        weight = self.p(name)
        return weight.index_select(1, tokens.reshape(-1)).view(weight.size(0), *tokens.shape, weight.size(2))

    def target_loss(self, hidden: torch.Tensor, tgt_out: torch.Tensor, label_smoothing: float,
                    target_index: torch.Tensor | None) -> torch.Tensor:
        """Per-replica summed cross-entropy [K] of final states [K, B, T, D] against `tgt_out` (pads not scored)."""
        if target_index is None:
            target_index = (tgt_out.reshape(-1) != PAD_ID).nonzero().squeeze(1)
        rows = hidden.reshape(hidden.size(0), -1, hidden.size(-1)).index_select(1, target_index)
        bias = self.p("output.bias") if self.has("output.bias") else None
        return stacked_linear_cross_entropy(rows, self.p("output.weight"), bias,
                                            tgt_out.reshape(-1).index_select(0, target_index), label_smoothing)
