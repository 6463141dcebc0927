"""One Transformer block, pre-norm (GPT-2 onwards, Llama) or post-norm (Vaswani et al., 2017;
BERT, Devlin et al., 2019), chosen by `ModelConfig.norm_position`:

    pre:   h = x + Attention(Norm(x))        post:  h = Norm(x + Attention(x))
           y = h + FFN(Norm(h))                     y = Norm(h + FFN(h))

The two norms keep their names (`attn_norm`, `ffn_norm`) in both layouts: the norm of the
attention sub-layer and the norm of the feed-forward sub-layer. A decoder block of an
encoder-decoder model has a third sub-layer between them, cross-attention to the encoder
output (`cross_norm`, `cross_attn`):   h' = h + CrossAttention(Norm(h), memory).
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.model.attention import KVStore, SelfAttention
from lmforge.model.config import ModelConfig
from lmforge.model.cross_attention import CrossAttention, CrossMemory
from lmforge.model.moe import make_ffn
from lmforge.model.norm import make_norm


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, cross: bool = False) -> None:
        super().__init__()
        self.post_norm = config.post_norm
        self.attn_norm = make_norm(config)
        self.attn = SelfAttention(config, layer)
        if cross:
            self.cross_norm = make_norm(config)
            self.cross_attn = CrossAttention(config, layer)
        self.ffn_norm = make_norm(config)
        self.ffn = make_ffn(config, layer)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                cache: KVStore, keep: torch.Tensor | None = None,
                memory: CrossMemory | None = None) -> torch.Tensor:
        """`keep` (B, K): return only these positions, skipping the feed-forward work for
        the others (the last block of a prefill, where only the last position is read);
        `memory`: the encoder output, for the cross-attention of a decoder block."""
        if self.post_norm:
            x = self.attn_norm(x + self.attn(x, rope, cache))
        else:
            x = x + self.attn(self.attn_norm(x), rope, cache)
        if keep is not None:
            x = x.gather(1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        if memory is not None:
            x = x + self.cross_attn(self.cross_norm(x), memory)
        if self.post_norm:
            return self.ffn_norm(x + self.ffn(x))
        return x + self.ffn(self.ffn_norm(x))
