"""The pieces both Transformers are built from (transformer.py, decoder.py): the norm, rotary positions,
multi-head attention through `F.scaled_dot_product_attention`, the GELU MLP, and GPT-2's initialisation.

Positions are given as an `offset` (the first position of every row; the rest follow) or, for rows that start at
different positions (left-padded prompts), as a LongTensor [N, T] of each token's position.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from decaylab.config import AttentionStackConfig

Positions = int | torch.Tensor  # an offset shared by every row, or per-token positions [N, T]


def make_norm(cfg: AttentionStackConfig) -> nn.Module:
    """LayerNorm (with or without bias) or RMSNorm over the model width."""
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.d_model, eps=1e-6)
    return nn.LayerNorm(cfg.d_model, bias=cfg.bias)


class Rotary(nn.Module):
    """Rotary position embedding (RoPE, Su et al. 2021) of queries and keys [N, H, T, Dh]."""

    def __init__(self, head_dim: int, base: float = 10_000.0):
        super().__init__()
        inverse = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inverse", inverse, persistent=False)

    def forward(self, x: torch.Tensor, offset: Positions = 0) -> torch.Tensor:
        """x rotated pairwise (first half with second half of the head dimension) by its positions' angles."""
        if isinstance(offset, torch.Tensor):
            angles = (offset.to(torch.float32).unsqueeze(-1) * self.inverse).unsqueeze(1)  # [N, 1, T, Dh/2]
        else:
            positions = torch.arange(offset, offset + x.size(-2), device=x.device, dtype=torch.float32)
            angles = torch.outer(positions, self.inverse)  # [T, Dh/2]
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        first, second = x.chunk(2, dim=-1)
        return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


class Attention(nn.Module):
    """Multi-head attention through `F.scaled_dot_product_attention`; `rotary` for self-attention only."""

    def __init__(self, cfg: AttentionStackConfig, rotary: Rotary | None):
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.d_model // cfg.heads
        self.query = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.key = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.value = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.out.residual = True  # scaled at initialisation
        self.dropout = cfg.attention_dropout
        self.rotary = rotary

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """[N, T, D] -> [N, H, T, Dh]."""
        return x.view(x.size(0), x.size(1), self.heads, self.head_dim).transpose(1, 2)

    def project_kv(self, x: torch.Tensor, offset: Positions = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (rotated when rotary) and values of `x` [N, T, D] at positions from `offset`."""
        keys = self.split(self.key(x))
        if self.rotary is not None:
            keys = self.rotary(keys, offset)
        return keys, self.split(self.value(x))

    def attend(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None,
               causal: bool, offset: Positions = 0) -> torch.Tensor:
        """Queries from `x` [N, T, D] at positions from `offset` over `keys`/`values`; `mask` [N, 1, 1|T, S]."""
        queries = self.split(self.query(x))
        if self.rotary is not None:
            queries = self.rotary(queries, offset)
        context = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, is_causal=causal,
                                                 dropout_p=self.dropout if self.training else 0.0)
        return self.out(context.transpose(1, 2).reshape(x.size(0), x.size(1), -1))


class MLP(nn.Module):
    """Linear -> GELU -> Linear (the second writes into the residual stream)."""

    def __init__(self, cfg: AttentionStackConfig):
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.ffn, bias=cfg.bias)
        self.down = nn.Linear(cfg.ffn, cfg.d_model, bias=cfg.bias)
        self.down.residual = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


def init_gpt2(stack: nn.Module, branches: int) -> None:
    """GPT-2's initialisation of a stack's Linears: N(0, 0.02), zero biases, residual projections / √branches."""
    for module in stack.modules():
        if isinstance(module, nn.Linear):
            std = 0.02 / math.sqrt(branches) if getattr(module, "residual", False) else 0.02
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
