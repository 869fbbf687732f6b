"""K replicas of either Transformer (transformer.py, decoder.py) as one model: every parameter stacked on a leading
replica dimension, every layer one batched GEMM over the K replicas.

Each replica computes exactly its single model's function (same parameter names, pre-norm blocks, masks, rotary or
learned positions, tied output), on activations [K, B, T, D]: Linears are `bmm`/`baddbmm` over the stacked
weights, norms are the unweighted norm times each replica's gain (plus bias), attention is one
`F.scaled_dot_product_attention` over K·B rows, and the loss is the fused chunked cross-entropy over the K
replicas (fused_loss.py). Why batched weights and not `torch.func.vmap` over `functional_call`: on the CPU vmap
has no batching rule for the attention kernel (it loops over the replicas) and measured slower than the batched
weights at every batch size (slower than K single models at large batches), and it cannot give the replicas
their own dropout rates and generators; see docs/benchmarks.md §3d.

Dropout: each replica draws its masks from its own generator with its own rate, with the very calls a single
model's dropout makes on the CPU (`empty_like(x).bernoulli_(1 − p)`, then `/(1 − p)`; attention dropout on the
attention weights as SDPA's reference path does), in the same order. A generator in the state the global one has
in the replica's sequential run therefore gives that run's masks bit for bit; on a GPU torch's fused dropout
kernel draws differently, so there the masks agree in distribution only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from decaylab.config import AttentionStackConfig, DecoderConfig, TransformerConfig
from decaylab.models.attention import Rotary
from decaylab.models.stacked import StackedModel, linear


class _StackedAttentionModel(StackedModel):
    """The pieces both stacked Transformers are built from (attention.py's, per replica)."""

    TIED = {"output.weight": "embed.weight"}
    SEQUENTIAL_MASKS = True

    def __init__(self, cfg: AttentionStackConfig, params: dict[str, torch.Tensor], dropouts: list[float],
                 generators: list[torch.Generator] | None = None):
        super().__init__(params, dropouts, generators)
        if cfg.attention_dropout > 0 and (generators is None or len(generators) != self.replicas):
            raise ValueError("attention dropout > 0 needs one generator per replica")
        self.cfg = cfg
        self.heads, self.head_dim = cfg.heads, cfg.d_model // cfg.heads
        device = next(iter(params.values())).device
        self.rotary = Rotary(self.head_dim).to(device) if cfg.positions == "rotary" else None

    def eval_batch_tokens(self, device: torch.device) -> int:
        """On the CPU, batches that hold one model's activations over all K replicas: K times a single model's 8192
        tokens thrash the caches (measured 1.5x slower than K single models, 1024 tokens 1.4x faster at K = 8;
        docs/benchmarks.md §3d). A GPU takes the large batches."""
        return max(512, 8192 // self.replicas) if device.type == "cpu" else 8192

    # -- building blocks ---------------------------------------------------------------------------------------
    def dropout(self, x: torch.Tensor, rates: list[float] | None = None) -> torch.Tensor:
        """Inverted dropout of x[k] with replica k's rate and generator (identity in eval mode or at rate 0)."""
        rates = self.dropouts if rates is None else rates
        if not self.training or not any(r > 0 for r in rates):
            return x
        # what torch's CPU dropout does to a single model's x (and rate 0 draws nothing)
        masks = self.replica_masks(rates, lambda rate, generator: torch.empty(
            x.shape[1:], dtype=x.dtype, device=x.device).bernoulli_(1.0 - rate, generator=generator).div_(1.0 - rate))
        if all(m is masks[0] for m in masks):  # one mask for every replica: broadcast it
            return x * masks[0]
        ones = torch.ones(x.shape[1:], dtype=x.dtype, device=x.device)
        return x * torch.stack([ones if m is None else m for m in masks])

    def norm(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        """LayerNorm (eps 1e-5, bias if the model has one) or RMSNorm (eps 1e-6) of x [K, ..., D], per replica."""
        width = (x.size(-1),)
        shape = (x.size(0), *([1] * (x.dim() - 2)), x.size(-1))
        if self.cfg.norm == "rmsnorm":
            out = F.rms_norm(x, width, eps=1e-6)
        else:
            out = F.layer_norm(x, width, eps=1e-5)
        out = out * self.p(f"{prefix}.weight").view(shape)
        if self.has(f"{prefix}.bias"):
            out = out + self.p(f"{prefix}.bias").view(shape)
        return out

    def projections(self, x: torch.Tensor, prefix: str, names: tuple[str, ...]) -> list[torch.Tensor]:
        """The Linears `prefix.<name>` of x [K, B, T, D] as one GEMM, each split into heads [K·B, H, T, Dh]."""
        weight = torch.cat([self.p(f"{prefix}.{n}.weight") for n in names], dim=1)
        bias = torch.cat([self.p(f"{prefix}.{n}.bias") for n in names], dim=1) if self.has(
            f"{prefix}.{names[0]}.bias") else None
        k, b, t, _ = x.shape
        out = linear(x, weight, bias).view(k * b, t, len(names), self.heads, self.head_dim)
        return list(out.permute(2, 0, 3, 1, 4).unbind(0))

    def self_attention(self, prefix: str, x: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        """Self-attention `prefix` of x [K, B, T, D] (rotary when the model has it); `mask` [K·B, 1, 1, T]."""
        queries, keys, values = self.projections(x, prefix, ("query", "key", "value"))
        if self.rotary is not None:
            queries, keys = self.rotary(queries), self.rotary(keys)
        return self.attend(prefix, x.shape, queries, keys, values, mask, causal)

    def cross_kv(self, prefix: str, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention `prefix`'s keys and values [K·B, H, S, Dh] of encoder states [K, B, S, D]."""
        keys, values = self.projections(memory, prefix, ("key", "value"))
        return keys, values

    def cross_attention(self, prefix: str, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                        mask: torch.Tensor) -> torch.Tensor:
        """Cross-attention `prefix`: queries from x [K, B, T, D] over the encoder's keys and values."""
        (queries,) = self.projections(x, prefix, ("query",))
        return self.attend(prefix, x.shape, queries, keys, values, mask, causal=False)

    def attend(self, prefix: str, shape: torch.Size, queries: torch.Tensor, keys: torch.Tensor,
               values: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        """Attention over heads [K·B, H, ·, Dh], then `prefix.out`, back to [K, B, T, D] (`shape`)."""
        k, b, t, d = shape
        rate = self.cfg.attention_dropout if self.training else 0.0
        if rate > 0:
            context = self._attend_with_dropout(queries, keys, values, mask, causal, rate, k)
        else:
            context = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, is_causal=causal)
        return self.linear(context.transpose(1, 2).reshape(k, b, t, d), f"{prefix}.out")

    def _attend_with_dropout(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                             mask: torch.Tensor | None, causal: bool, rate: float, k: int) -> torch.Tensor:
        """SDPA's reference (math) path, the one torch takes on the CPU with dropout, with each replica's own
        dropout draws on its attention weights."""
        scale = math.sqrt(1.0 / math.sqrt(queries.size(-1)))  # SDPA scales queries and keys by √scale each
        scores = (queries * scale) @ (keys * scale).transpose(-2, -1)
        if causal:
            size = scores.shape[-2:]
            scores = scores.masked_fill(~torch.ones(size, dtype=torch.bool, device=scores.device).tril(),
                                        float("-inf"))
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        weights = self.dropout(weights.view(k, -1, *weights.shape[1:]), [rate] * k).view(weights.shape)
        return weights @ values

    def mlp(self, prefix: str, x: torch.Tensor) -> torch.Tensor:
        """Linear -> GELU -> Linear."""
        return self.linear(F.gelu(self.linear(x, f"{prefix}.up")), f"{prefix}.down")

    def embed_tokens(self, tokens: torch.Tensor, positions: str) -> torch.Tensor:
        """Token embeddings [K, B, T, D] plus learned positions `positions` (if the model has them), dropped out."""
        x = self.embed("embed.weight", tokens)
        if self.cfg.positions == "learned":
            length = tokens.size(1)
            if length > self.cfg.max_positions:
                raise ValueError(f"a sequence of {length} tokens is longer than model.max_positions="
                                 f"{self.cfg.max_positions} (raise it, or use model.positions=rotary)")
            x = x + self.p(positions)[:, :length].unsqueeze(1)
        return self.dropout(x)



class StackedTransformer(_StackedAttentionModel):
    """K `Transformer` replicas (the encoder-decoder); `params` maps its parameter names to [K, ...] tensors."""

    def __init__(self, cfg: TransformerConfig, params: dict[str, torch.Tensor], dropouts: list[float],
                 generators: list[torch.Generator] | None = None):
        super().__init__(cfg, params, dropouts, generators)
        self.layers = (cfg.encoder_layers, cfg.decoder_layers)

    def encode(self, src: torch.Tensor, src_len: torch.Tensor
               ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """Each decoder layer's cross-attention keys and values, and the source mask [K·B, 1, 1, S]."""
        lengths = src_len.to(src.device, non_blocking=True)
        real = torch.arange(src.size(1), device=src.device).unsqueeze(0) < lengths.unsqueeze(1)
        mask = real[:, None, None, :].repeat(self.replicas, 1, 1, 1)  # replica-major, as `split` orders rows
        x = self.embed_tokens(src, "src_positions.weight")
        for i in range(self.layers[0]):
            prefix = f"encoder.{i}"
            h = self.norm(x, f"{prefix}.attention_norm")
            x = x + self.dropout(self.self_attention(f"{prefix}.attention", h, mask, causal=False))
            x = x + self.dropout(self.mlp(f"{prefix}.mlp", self.norm(x, f"{prefix}.mlp_norm")))
        x = self.norm(x, "encoder_norm")
        cross = [self.cross_kv(f"decoder.{i}.cross_attention", x) for i in range(self.layers[1])]
        return cross, mask

    def decode(self, tgt_in: torch.Tensor, memory: tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]
               ) -> torch.Tensor:
        """Final decoder states [K, B, T, D] of the shifted targets."""
        cross, mask = memory
        x = self.embed_tokens(tgt_in, "tgt_positions.weight")
        causal = tgt_in.size(1) > 1
        for i in range(self.layers[1]):
            prefix = f"decoder.{i}"
            h = self.norm(x, f"{prefix}.self_norm")
            x = x + self.dropout(self.self_attention(f"{prefix}.self_attention", h, None, causal))
            h = self.norm(x, f"{prefix}.cross_norm")
            x = x + self.dropout(self.cross_attention(f"{prefix}.cross_attention", h, *cross[i], mask))
            x = x + self.dropout(self.mlp(f"{prefix}.mlp", self.norm(x, f"{prefix}.mlp_norm")))
        return self.norm(x, "decoder_norm")

    def __call__(self, src: torch.Tensor, src_len: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor,
                 label_smoothing: float = 0.0, target_index: torch.Tensor | None = None) -> torch.Tensor:
        """Per-replica summed cross-entropy [K] over the non-pad target tokens (Transformer.forward for each)."""
        return self.target_loss(self.decode(tgt_in, self.encode(src, src_len)), tgt_out, label_smoothing, target_index)


class StackedDecoderLM(_StackedAttentionModel):
    """K `DecoderLM` replicas (the decoder-only language model); `params` as for `StackedTransformer`."""

    def __init__(self, cfg: DecoderConfig, params: dict[str, torch.Tensor], dropouts: list[float],
                 generators: list[torch.Generator] | None = None):
        super().__init__(cfg, params, dropouts, generators)
        self.layers = cfg.layers

    def __call__(self, src: torch.Tensor, src_len: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor,
                 label_smoothing: float = 0.0, target_index: torch.Tensor | None = None) -> torch.Tensor:
        """Per-replica summed next-token cross-entropy [K] of blocks `tgt_in` (DecoderLM.forward for each)."""
        if src.size(1):
            raise ValueError("a decoder-only language model trains on blocks of text, not on pairs with a source")
        x = self.embed_tokens(tgt_in, "positions.weight")
        causal = tgt_in.size(1) > 1
        for i in range(self.layers):
            prefix = f"blocks.{i}"
            h = self.norm(x, f"{prefix}.attention_norm")
            x = x + self.dropout(self.self_attention(f"{prefix}.attention", h, None, causal))
            x = x + self.dropout(self.mlp(f"{prefix}.mlp", self.norm(x, f"{prefix}.mlp_norm")))
        return self.target_loss(self.norm(x, "norm"), tgt_out, label_smoothing, target_index)
