"""Attention masks for passes without a KV cache (encoders, padded batches).

Which key j a query i may see, for a batch padded on the right (`attention_mask` 1 = token,
0 = padding); `x` = visible:

    bidirectional + padding (encoder)        causal + padding (decoder)
          keys j →                                 keys j →
    i  [x x x x . .]   row of length 4       i  [x . . . . .]
    ↓  [x x x x . .]                         ↓  [x x . . . .]
       [x x x x . .]                            [x x x . . .]
       [x x x x . .]                            [x x x x . .]
       [x x x x . .]   padded queries see       [x x x x . .]   (padded queries: their
       [x x x x . .]   the real keys only       [x x x x . .]    outputs are never read)

Padded query rows keep at least one visible key, so softmax never sees an all −∞ row.
The mask travels to every attention layer as a `NoCache` store: the `KVStore` context
attention reads (positions, key positions, length, mask, causal flag, `update`), with
nothing stored, so the attention code has one path for cached, uncached, causal and
bidirectional passes.
"""

from __future__ import annotations

import torch

from lmforge.model.attention import KVStore


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) of 1/0 → boolean SDPA mask (B, 1, 1, T): every query sees the real keys."""
    return attention_mask.bool()[:, None, None, :]


def causal_mask(T: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean (T, T): query i sees keys j ≤ i."""
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def prefix_mask(T: int, prefix: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean (T, T) of a prefix decoder (UniLM, GLM): the first `prefix` tokens see each
    other bidirectionally; every later token sees the whole prefix and the tokens before it.
    visible(i, j) = j ≤ i or j < prefix."""
    mask = causal_mask(T, device)
    mask[:, :prefix] = True
    return mask


def family_masks(family: str, T: int, prefix: int = 0, source_len: int | None = None
                 ) -> dict[str, torch.Tensor]:
    """The attention masks of one family, by name (the encoder-decoder has three)."""
    S = source_len or T
    if family == "decoder":
        return {"self-attention (causal)": causal_mask(T)}
    if family == "prefix":
        return {f"self-attention (prefix of {prefix})": prefix_mask(T, prefix)}
    if family == "encoder":
        return {"self-attention (bidirectional)": torch.ones(T, T, dtype=torch.bool)}
    return {"encoder self-attention": torch.ones(S, S, dtype=torch.bool),
            "decoder self-attention": causal_mask(T),
            "cross-attention (decoder → encoder)": torch.ones(T, S, dtype=torch.bool)}


def grid(mask: torch.Tensor) -> str:
    """The mask as text: one row per query, `x` where a key is visible."""
    return "\n".join(" ".join("x" if v else "." for v in row.tolist()) for row in mask)


def draw(masks: dict[str, torch.Tensor], path: str) -> None:
    """The masks side by side as a PNG (rows: queries, columns: keys)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lmforge.io import atomic_write

    fig, axes = plt.subplots(1, len(masks), figsize=(3.2 * len(masks), 3.4), squeeze=False)
    for ax, (name, mask) in zip(axes[0], masks.items(), strict=True):
        ax.imshow(mask.float().numpy(), cmap="Blues", vmin=0, vmax=1.25)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("key position j")
        ax.set_ylabel("query position i")
        ax.set_xticks(range(mask.shape[1]))
        ax.set_yticks(range(mask.shape[0]))
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


class NoCache(KVStore):
    """The store of a pass without a cache: this pass's keys and values are all there are,
    so the keys are the queries (key_positions = positions, length = T).

    positions (B, T); attention_mask (B, T) 1/0 for right padding; prefix (B,): a prefix
    decoder's per-row prefix lengths (bidirectional inside, causal after). With neither,
    the mask is None and a causal pass takes SDPA's own causal path.
    """

    def __init__(self, positions: torch.Tensor, causal: bool,
                 attention_mask: torch.Tensor | None = None,
                 prefix: torch.Tensor | None = None) -> None:
        self.positions = self.key_positions = positions
        self.length = positions.shape[1]
        self.causal = causal
        self.mask = None
        if prefix is not None:
            key = torch.arange(self.length, device=prefix.device)
            visible = (key[None, None, :] <= key[None, :, None]) | (
                key[None, None, :] < prefix[:, None, None])
            self.mask = visible[:, None]  # (B, 1, T, T)
            if attention_mask is not None:
                self.mask = self.mask & padding_mask(attention_mask)
        elif attention_mask is not None:
            mask = padding_mask(attention_mask)
            if causal:  # SDPA takes a mask or is_causal, not both: fold the triangle in
                mask = mask & causal_mask(attention_mask.shape[1], mask.device)
            self.mask = mask

    @classmethod
    def start(cls, batch: int, length: int, causal: bool,
              attention_mask: torch.Tensor | None = None, prefix: torch.Tensor | None = None,
              device: torch.device | str | None = None) -> NoCache:
        """A pass over `length` tokens per row at positions 0…length−1."""
        positions = torch.arange(length, device=device).expand(batch, length)
        return cls(positions, causal, attention_mask, prefix)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        return k, v


def visible_keys(store: KVStore) -> torch.Tensor | None:
    """A store's mask with its causal flag folded in (a boolean (T, L) triangle aligned to
    the last key, so it holds where keys outnumber queries); None when every key is
    visible."""
    if store.mask is not None or not store.causal:
        return store.mask
    T, L = store.positions.shape[1], store.length
    return torch.ones(T, L, dtype=torch.bool, device=store.positions.device).tril(L - T)


class BiasedStore(KVStore):
    """A store whose mask is additive: a position bias (B|1, n_head, T, L) with −∞ where
    the wrapped store hides a key. Relative positions (T5) reach attention this way, so
    attention keeps one code path."""

    def __init__(self, store: KVStore, bias: torch.Tensor) -> None:
        self.store = store
        self.positions, self.key_positions = store.positions, store.key_positions
        self.length = store.length
        self.causal = False
        visible = visible_keys(store)
        self.mask = bias if visible is None else bias.masked_fill(~visible, float("-inf"))

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.store.update(layer, k, v)
