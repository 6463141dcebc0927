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
The mask travels to every attention layer as a `NoCache` step: the `KVStore` interface
attention already reads (`mask`, `causal`, `update`), with nothing stored, so the attention
code has one path for cached, uncached, causal and bidirectional passes.
"""

from __future__ import annotations

import torch


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


class NoCache:
    """A `KVStore` that stores nothing: this pass's keys and values are all there are.

    mask None + causal: SDPA's own causal path (what attention does with no cache at all).
    """

    def __init__(self, causal: bool, attention_mask: torch.Tensor | None = None,
                 prefix: torch.Tensor | None = None, length: int = 0) -> None:
        self.causal = causal
        self.mask = None
        if prefix is not None:  # per-row prefix lengths (B,): a prefix decoder's pass
            key = torch.arange(length, device=prefix.device)
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

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        return k, v


class BiasedStore:
    """A `KVStore` whose mask is additive: a position bias (B|1, n_head, T, L) with −∞ where
    the wrapped store hides a key. Relative positions (T5) reach attention this way, so
    attention keeps one code path."""

    def __init__(self, store, bias: torch.Tensor) -> None:
        self.store = store
        self.causal = False
        visible = store.mask
        if visible is None and store.causal:
            T, L = bias.shape[-2:]
            visible = torch.ones(T, L, dtype=torch.bool, device=bias.device).tril(L - T)
        self.mask = bias if visible is None else bias.masked_fill(~visible, float("-inf"))

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.store.update(layer, k, v)
