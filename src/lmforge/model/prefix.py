"""P-Tuning v2: trained keys and values in front of every layer's (Liu et al., 2022, "P-Tuning
v2: Prompt Tuning Can Be Comparable to Fine-tuning Universally Across Scales and Tasks").

    head_l(x) = softmax(Q_l · [P_lᴷ ; K_l]ᵀ / √d_head + M) · [P_lⱽ ; V_l]

Layer l gets n_prefix key and value vectors per key/value head, P_lᴷ and P_lⱽ, each
(n_kv_head, n_prefix, head_dim), that every query sees, while the model's weights stay
frozen. Prefix-tuning (Li and Liang, 2021) introduced them; P-Tuning v2 puts them in every
layer of models of any size and makes the reparameterisation optional: the prefix produced
by a two-layer MLP from a smaller embedding (`hidden=…`) instead of trained directly.

Design choices:
- Positions: the prefix has none. Its keys are used as trained, never rotated by RoPE (a
  trained key is already "positioned" wherever it helps), and the tokens after it keep
  positions 0, 1, … as without a prefix, so absolute position tables and RoPE see the same
  positions with and without one (passing the prefix as past keys of an ordinary cache
  would start them at n_prefix instead). A relative bias (T5) places the prefix keys at
  −n_prefix…−1, just before the first token.
- Masks: every query sees every prefix key, plus what the wrapped store allows. Keys then
  outnumber queries (L = n_prefix + T), where SDPA's is_causal would align the triangle
  top-left, so the causal triangle becomes an explicit mask aligned to the last key.
- Training: `PrefixStore` wraps the store of a pass without a cache (`masks.NoCache`, with
  its padding mask) and prepends the prefix to the keys and values every layer reads;
  gradients reach the prefix through the concatenation.
- Generation: `KVCache.write_prefix` writes the prefix once into the first positions of a
  slot, which prefills and decode steps then read like cached tokens (batched rows and
  continuous batching need no special case); the cache subtracts the slot's `prefix_len`
  from its positions.
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.model.attention import KVStore
from lmforge.model.config import ModelConfig
from lmforge.model.masks import NoCache, visible_keys

ATTR = "prefix_kv"  # the submodule an adapter puts on a model for generation to read


def attached_prefix(model: nn.Module) -> PrefixKV | None:
    """The `PrefixKV` an adapter attached to `model` (P-Tuning v2, or a decoder's soft
    prompt as keys and values: `lmforge.adapt`), which every KV-cache slot starts with."""
    prefix = getattr(model, ATTR, None)
    return prefix if isinstance(prefix, PrefixKV) else None


class PrefixKV(nn.Module):
    """Per-layer prefix keys and values: `tensors()` gives K, V, each
    (n_layer, n_kv_head, n_prefix, head_dim).

    Plain (hidden None): K and V are the parameters `k` and `v`, initialised N(0, std²)
    (std 1 is P-Tuning v2's nn.Embedding initialisation). Reparameterised (hidden = h):
    [K; V] = W₂ · tanh(W₁ · E + b₁) + b₂ for a trained embedding E (n_prefix, d_model), as
    in P-Tuning v2's PrefixEncoder; the MLP runs once per pass, not once per layer.
    """

    def __init__(self, config: ModelConfig, n_prefix: int, hidden: int | None = None,
                 std: float = 1.0, seed: int | None = None) -> None:
        super().__init__()
        if n_prefix < 1:
            raise LmforgeError(f"a P-Tuning v2 prefix needs at least one position, not "
                               f"{n_prefix}")
        self.causal = config.causal
        self.shape = (config.n_layer, config.n_kv_head, n_prefix, config.head_dim)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        if hidden is None:
            self.k = nn.Parameter(torch.randn(self.shape, generator=gen) * std)
            self.v = nn.Parameter(torch.randn(self.shape, generator=gen) * std)
            self.mlp = None
        else:
            self.embed = nn.Parameter(torch.randn(n_prefix, config.d_model, generator=gen) * std)
            n_out = 2 * config.n_layer * config.n_kv_head * config.head_dim
            self.mlp = nn.Sequential(nn.Linear(config.d_model, hidden), nn.Tanh(),
                                     nn.Linear(hidden, n_out))

    @property
    def n_prefix(self) -> int:
        return self.shape[2]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V, each (n_layer, n_kv_head, n_prefix, head_dim)."""
        if self.mlp is None:
            return self.k, self.v
        n_layer, nkv, n, hd = self.shape
        kv = self.mlp(self.embed).view(n, n_layer, 2, nkv, hd)
        kv = kv.permute(2, 1, 3, 0, 4)  # (2, n_layer, nkv, n_prefix, hd)
        return kv[0], kv[1]

    def store(self, inner: KVStore) -> PrefixStore:
        """`inner` with this prefix in front of the keys and values of every layer."""
        return PrefixStore(self, inner)

    def store_for(self, inputs: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  prefix: torch.Tensor | None = None) -> PrefixStore:
        """The store of a pass without a cache over `inputs` (ids (B, T) or embeddings
        (B, T, d)), padding hidden by attention_mask (B, T) and a prefix decoder's prefix
        lengths (B,): pass it to the model as `cache=`."""
        B, T = inputs.shape[:2]
        return self.store(NoCache.start(B, T, self.causal, attention_mask, prefix,
                                        inputs.device))


class PrefixStore(KVStore):
    """A store that puts a `PrefixKV` in front of another store's keys and values.

    positions: the inner store's (the tokens'); key_positions: −n_prefix…−1 then the inner
    store's; length: n_prefix + the inner length; mask: the inner mask (its causal flag
    folded in as an explicit triangle) with every prefix key visible, or None when the
    inner store hides nothing."""

    def __init__(self, prefix: PrefixKV, inner: KVStore) -> None:
        self.inner = inner
        self.k, self.v = prefix.tensors()  # once per pass
        n = prefix.n_prefix
        self.positions = inner.positions
        inner_keys = inner.key_positions
        before = torch.arange(-n, 0, device=inner_keys.device).expand(inner_keys.shape[0], n)
        self.key_positions = torch.cat([before, inner_keys], dim=1)
        self.length = n + inner.length
        self.causal = False
        visible = visible_keys(inner)
        self.mask = None
        if visible is not None:  # (…, T, L) → (…, T, n + L), the prefix columns visible
            fill = True if visible.dtype == torch.bool else 0.0  # 0: an additive mask
            self.mask = torch.cat([visible.new_full((*visible.shape[:-1], n), fill), visible],
                                  dim=-1)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.inner.update(layer, k, v)  # (B, nkv, L, hd)
        B = k.shape[0]
        pk = self.k[layer].to(k.dtype).expand(B, -1, -1, -1)  # (B, nkv, n_prefix, hd)
        pv = self.v[layer].to(v.dtype).expand(B, -1, -1, -1)
        return torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
