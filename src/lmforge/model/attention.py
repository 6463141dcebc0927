"""Multi-head and grouped-query self-attention through one `scaled_dot_product_attention` call.

Attention(Q, K, V) = softmax(Q·Kᵀ / √d_head + M) · V   (Vaswani et al., 2017)

Grouped-query attention (Ainslie et al., 2023): n_kv_head key/value heads, each shared by
n_head / n_kv_head query heads. Q, K and V come from one fused projection `qkv` so that a
decode step reads them in a single matmul.

The module holds no generation state. Every pass reads one declared context, a `KVStore`:
it stores this pass's keys and values and returns every key and value the queries may see,
with the mask that says which. The stores: `masks.NoCache` (a pass without a cache),
`masks.BiasedStore` (a relative position bias around another store),
`generate.cache.CacheStep` (a pass over KV-cache slots) and `prefix.PrefixStore` (trainable
P-Tuning v2 keys and values in front of another store's).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.hardware import gemm_attention_wins
from lmforge.model.config import ModelConfig
from lmforge.model.linear import Linear
from lmforge.model.position import apply_rope


class KVStore(Protocol):
    """What a layer reads from its key/value store, for one forward pass of T new tokens
    per row over B rows; the model reads these and nothing else.

    positions      (B, T) long: the positions of the new tokens (RoPE, absolute embeddings)
    key_positions  (B|1, L) long: the positions of the L keys `update` returns (a relative
                   bias reads them); keys that have no position of their own (a P-Tuning v2
                   prefix) sit before 0
    length         L, the number of keys `update` returns
    mask           None, or (B|1, 1|n_head, T, L): boolean (True = visible) or additive
    causal         with mask None, query i sees keys ≤ i (SDPA's is_causal, which aligns the
                   triangle top-left, so a store sets it only where T == L); otherwise every
                   key is visible
    update         store this pass's k, v (B, n_kv_head, T, head_dim) for `layer` and return
                   every key and value the queries read, (B, n_kv_head, L, head_dim)
    """

    positions: torch.Tensor
    key_positions: torch.Tensor
    length: int
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
        self.scale = None if config.scale_attention else 1.0
        n_qkv = config.head_dim * (config.n_head + 2 * config.n_kv_head)
        q, kv = config.n_head * config.head_dim, config.n_kv_head * config.head_dim
        self.qkv = Linear(config.d_model, n_qkv, bias=config.bias,
                          slices={"q": q, "k": kv, "v": kv})
        self.out = Linear(config.n_head * config.head_dim, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                store: KVStore) -> torch.Tensor:
        B, T, _ = x.shape
        nh, nkv, hd = self.n_head, self.n_kv_head, self.head_dim
        qkv = self.qkv(x).view(B, T, nh + 2 * nkv, hd).transpose(1, 2)  # (B, nh+2nkv, T, hd)
        qk, v = qkv.split([nh + nkv, nkv], dim=1)
        if rope is not None:  # q and k rotate together: one set of elementwise ops for both
            qk = apply_rope(qk, *rope)
        q, k = qk.split([nh, nkv], dim=1)
        k, v = store.update(self.layer, k, v)  # (B, nkv, L, hd): every visible position
        y = attend(q, k, v, store.mask, store.causal, self.scale)  # (B, nh, T, hd)
        return self.out(y.transpose(1, 2).reshape(B, T, nh * hd))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
           causal: bool, scale: float | None = None) -> torch.Tensor:
    """SDPA with grouped K/V heads. q (B, nh, T, hd); k, v (B, nkv, L, hd); mask (B, 1|nh,
    T, L): boolean (True = visible) or additive (a relative position bias); scale: the
    factor of QKᵀ, 1/√hd when None."""
    B, nh, T, hd = q.shape
    nkv = k.shape[1]
    if mask is not None and mask.is_floating_point() and mask.dtype != q.dtype:
        mask = mask.to(q.dtype)  # SDPA wants an additive mask in the queries' dtype
    if (causal and mask is None and T >= 2 * CAUSAL_BLOCK and q.device.type == "cpu"
            and gemm_attention_wins(q.dtype)):
        return blocked_causal_attention(q, k, v, scale=scale)
    if T == 1 and nh != nkv and (mask is None or mask.shape[1] == 1):
        # One query per head: stack each group's queries as rows of one kv head, so no
        # K/V copy is needed (the decode hot path).
        q = q.reshape(B, nkv, nh // nkv, hd)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        return y.reshape(B, nh, 1, hd)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal and mask is None, enable_gqa=nh != nkv,
        scale=scale)


CAUSAL_BLOCK = 128


def _causal_bias(rows: int, start: int, end: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask (rows, end): 0 where key j ≤ query position start + i, else −inf."""
    query = torch.arange(start, start + rows)[:, None]
    return torch.zeros(rows, end, dtype=dtype).masked_fill(torch.arange(end) > query,
                                                           float("-inf"))


def blocked_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             block: int = CAUSAL_BLOCK, scale: float | None = None
                             ) -> torch.Tensor:
    """Causal self-attention of a prefill (query i sees keys ≤ i), as batched matmuls over
    blocks of queries, each against only the keys up to its end.

    Equal to SDPA with is_causal=True; a fast path on CPUs whose matrix products run in
    hardware at the dtype, where PyTorch's CPU flash kernel is slower than two GEMMs and a
    softmax at prefill lengths (`hardware.gemm_attention_wins` has the measurements). The
    queries of one key/value group are stacked as rows of one matmul, so grouped K/V heads
    are never copied.
    """
    B, nh, T, hd = q.shape
    nkv = k.shape[1]
    g = nh // nkv
    qg = q.reshape(B, nkv, g, T, hd)
    out = torch.empty(B, nkv, g, T, hd, dtype=q.dtype, device=q.device)
    for start in range(0, T, block):
        end = min(start + block, T)
        n = end - start
        qi = qg[:, :, :, start:end].reshape(B * nkv, g * n, hd)
        kk = k[:, :, :end].reshape(B * nkv, end, hd)
        vv = v[:, :, :end].reshape(B * nkv, end, hd)
        bias = _causal_bias(n, start, end, q.dtype).to(q.device).repeat(g, 1)
        scores = torch.baddbmm(bias.expand(B * nkv, -1, -1), qi, kk.transpose(1, 2),
                               alpha=hd ** -0.5 if scale is None else scale)
        out[:, :, :, start:end] = (scores.softmax(dim=-1) @ vv).view(B, nkv, g, n, hd)
    return out.view(B, nh, T, hd)
