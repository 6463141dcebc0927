"""Multi-head and grouped-query self-attention through one `scaled_dot_product_attention` call.

Attention(Q, K, V) = softmax(Q·Kᵀ / √d_head + M) · V   (Vaswani et al., 2017)

Grouped-query attention (Ainslie et al., 2023): n_kv_head key/value heads, each shared by
n_head / n_kv_head query heads. Q, K and V come from one fused projection `qkv` so that a
decode step reads them in a single matmul.

The module holds no generation state. The caller passes a `cache` (see
`lmforge.generate.cache.CacheStep`) that stores this step's keys and values and returns
every key and value the queries may see, with the mask for ragged rows.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.config import ModelConfig
from lmforge.model.position import apply_rope


class KVStore(Protocol):
    """What attention needs from a cache: store this step's K/V, get all visible K/V + mask."""

    mask: torch.Tensor | None
    causal: bool

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]: ...


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        self.head_dim = config.head_dim
        n_qkv = config.head_dim * (config.n_head + 2 * config.n_kv_head)
        self.qkv = nn.Linear(config.d_model, n_qkv, bias=config.bias)
        self.out = nn.Linear(config.n_head * config.head_dim, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                cache: KVStore | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        nh, nkv, hd = self.n_head, self.n_kv_head, self.head_dim
        qkv = self.qkv(x).view(B, T, nh + 2 * nkv, hd).transpose(1, 2)  # (B, nh+2nkv, T, hd)
        if rope is not None:
            # q and k rotate together: one set of elementwise ops for both
            qk = apply_rope(qkv[:, : nh + nkv], *rope)
            q, k = qk[:, :nh], qk[:, nh:]
        else:
            q, k = qkv[:, :nh], qkv[:, nh: nh + nkv]
        v = qkv[:, nh + nkv:]
        if cache is None:
            mask, causal = None, True
        else:
            k, v = cache.update(self.layer, k, v)  # (B, nkv, L, hd): every visible position
            mask, causal = cache.mask, cache.causal
        y = attend(q, k, v, mask, causal)  # (B, nh, T, hd)
        return self.out(y.transpose(1, 2).reshape(B, T, nh * hd))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
           causal: bool) -> torch.Tensor:
    """SDPA with grouped K/V heads. q (B, nh, T, hd); k, v (B, nkv, L, hd); mask (B, 1, T, L)."""
    B, nh, T, hd = q.shape
    nkv = k.shape[1]
    if T == 1 and nh != nkv:
        # One query per head: stack each group's queries as rows of one kv head, so no
        # K/V copy is needed (the decode hot path).
        q = q.reshape(B, nkv, nh // nkv, hd)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return y.reshape(B, nh, 1, hd)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal and mask is None, enable_gqa=nh != nkv)
