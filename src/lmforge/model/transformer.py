"""The Transformer: embeddings → stack of blocks → final norm → LM head.

    logits = W_head · Norm(Block_N(… Block_1(E[ids] (+ P[positions])))))

The model owns no generation state: callers pass `positions` and a `cache` step (see
`lmforge.generate.cache`). It accepts input embeddings instead of ids (soft prompts), and
every projection is an `nn.Linear` attribute reachable by name (`layers.3.attn.qkv`), so
adapters and quantized layers replace modules from outside without touching this file.
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.model.attention import KVStore
from lmforge.model.block import Block
from lmforge.model.config import ModelConfig
from lmforge.model.linear import Linear, linear
from lmforge.model.norm import make_norm
from lmforge.model.position import RotaryEmbedding, make_absolute_position


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.abs_position = make_absolute_position(config)
        self.rope = RotaryEmbedding(config) if config.position == "rope" else None
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm = make_norm(config)
        if not config.tie_embeddings:
            self.lm_head = Linear(config.d_model, config.vocab_size, bias=False)

    def head_weight(self) -> torch.Tensor:
        return self.embed.weight if self.config.tie_embeddings else self.lm_head.weight

    def forward(self, ids: torch.Tensor | None = None, *, embeds: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, cache: KVStore | None = None,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T', vocab) in fp32.

        ids (B, T) or embeds (B, T, d_model); positions (B, T), by default the cache's
        positions or 0…T−1; keep (B, K): the positions whose logits to compute (for example
        only the last one while prefilling), all when None.
        """
        x = self.embed(ids) if embeds is None else embeds
        B, T, _ = x.shape
        if positions is None:
            positions = getattr(cache, "positions", None)
        if positions is None:
            positions = torch.arange(T, device=x.device).expand(B, T)
        if self.abs_position is not None:
            x = x + self.abs_position(positions).to(x.dtype)
        rope = self.rope(positions, x.dtype) if self.rope is not None else None
        last = len(self.layers) - 1
        for i, block in enumerate(self.layers):
            x = block(x, rope, cache, keep if i == last else None)
        return linear(self.norm(x), self.head_weight()).float()

    def init_weights(self, std: float = 0.02, seed: int | None = None) -> None:
        """Normal(0, std) for matrices, zero biases, unit norm gains (GPT-2's initialisation)."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=gen) * std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.ones_(p)
