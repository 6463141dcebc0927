"""Cross-attention: decoder queries attend to the encoder's output (Vaswani et al., 2017).

    CrossAttention(x, m) = softmax(Q(x)·K(m)ᵀ / √d_head + M_source) · V(m)

Keys and values depend only on the encoder output m, so `CrossMemory` projects them once
per encoder output for every decoder layer and keeps them: a training pass computes each
once, and generation reuses them at every decode step (the cross-attention cache). The
source padding mask M_source hides padded encoder positions from every query; there is no
causal mask, since the whole source is known.
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.model.attention import attend
from lmforge.model.config import ModelConfig
from lmforge.model.linear import Linear


class CrossAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, \
            config.head_dim
        self.scale = None if config.scale_attention else 1.0
        self.q = Linear(config.d_model, config.n_head * config.head_dim, bias=config.bias)
        kv = config.n_kv_head * config.head_dim
        self.kv = Linear(config.d_model, 2 * kv, bias=config.bias, slices={"k": kv, "v": kv})
        self.out = Linear(config.n_head * config.head_dim, config.d_model, bias=config.bias)

    def project(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, n_kv_head, S, head_dim) of the encoder output (B, S, d)."""
        B, S, _ = states.shape
        kv = self.kv(states).view(B, S, 2 * self.n_kv_head, self.head_dim).transpose(1, 2)
        return kv[:, : self.n_kv_head], kv[:, self.n_kv_head:]

    def forward(self, x: torch.Tensor, memory: CrossMemory) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k, v = memory.kv[self.layer]
        y = attend(q, k, v, memory.mask, False, self.scale)
        return self.out(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class CrossMemory:
    """An encoder output as the decoder reads it: per-layer keys and values, and the mask.

    `kv[layer]` = (K, V), each (B, n_kv_head, S, head_dim); `mask` (B, 1, 1, S) boolean, or
    None when no source position is padding.
    """

    def __init__(self, kv: list[tuple[torch.Tensor, torch.Tensor]],
                 mask: torch.Tensor | None) -> None:
        self.kv = kv
        self.mask = mask

    @classmethod
    def build(cls, layers: nn.ModuleList, states: torch.Tensor,
              attention_mask: torch.Tensor | None = None) -> CrossMemory:
        """Project `states` (B, S, d) once for each decoder layer's cross-attention;
        attention_mask (B, S) has 1 for source tokens and 0 for padding."""
        kv = [layer.cross_attn.project(states) for layer in layers]
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        return cls(kv, mask)

    @property
    def batch_size(self) -> int:
        return self.kv[0][0].shape[0]

    def select(self, rows: list[int]) -> CrossMemory:
        """The memory of some batch rows, in the given order (rows still generating)."""
        idx = torch.tensor(rows, device=self.kv[0][0].device)
        return CrossMemory([(k[idx], v[idx]) for k, v in self.kv],
                           None if self.mask is None else self.mask[idx])
