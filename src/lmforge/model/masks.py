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


class NoCache:
    """A `KVStore` that stores nothing: this pass's keys and values are all there are.

    mask None + causal: SDPA's own causal path (what attention does with no cache at all).
    """

    def __init__(self, causal: bool, attention_mask: torch.Tensor | None = None) -> None:
        self.causal = causal
        self.mask = None
        if attention_mask is not None:
            mask = padding_mask(attention_mask)
            if causal:  # SDPA takes a mask or is_causal, not both: fold the triangle in
                mask = mask & causal_mask(attention_mask.shape[1], mask.device)
            self.mask = mask

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        return k, v
