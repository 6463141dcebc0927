"""The Transformer: embeddings → stack of blocks → final norm → LM head.

    logits = W_head · Norm(Block_N(… Block_1(E[ids] (+ S[token_types]) (+ P[positions])))))

Post-norm models (`norm_position="post"`, BERT) normalise the embeddings instead and have no
final norm: each block already ends in one. `hidden` returns the final hidden states (what
sentence-embedding and classification heads read, `model/heads.py`); `forward` applies the
LM head to them. Encoders (`family="encoder"`) attend both ways; an `attention_mask` (B, T)
of 1/0 hides right padding from every query (`model/masks.py`).

The model owns no generation state: callers pass `positions` and a `cache` step (see
`lmforge.generate.cache`). It accepts input embeddings instead of ids (soft prompts), and
every projection is an `nn.Linear` attribute reachable by name (`layers.3.attn.qkv`), so
adapters and quantized layers replace modules from outside without touching this file.
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.model.attention import KVStore
from lmforge.model.block import Block
from lmforge.model.config import ModelConfig
from lmforge.model.linear import Linear, linear
from lmforge.model.masks import NoCache
from lmforge.model.norm import make_norm
from lmforge.model.position import RotaryEmbedding, make_absolute_position


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        if config.type_vocab_size:
            self.type_embed = nn.Embedding(config.type_vocab_size, config.d_model)
        self.abs_position = make_absolute_position(config)
        self.rope = RotaryEmbedding(config) if config.position == "rope" else None
        if config.post_norm:
            self.embed_norm = make_norm(config)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        if not config.post_norm:
            self.norm = make_norm(config)
        if not config.tie_embeddings:
            self.lm_head = Linear(config.d_model, config.vocab_size, bias=False)

    def head_weight(self) -> torch.Tensor:
        return self.embed.weight if self.config.tie_embeddings else self.lm_head.weight

    def forward(self, ids: torch.Tensor | None = None, *, embeds: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, cache: KVStore | None = None,
                keep: torch.Tensor | None = None, token_types: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, prefix: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Logits (B, T', vocab) in fp32: the LM head over `hidden` (same arguments)."""
        x = self.hidden(ids, embeds=embeds, positions=positions, cache=cache, keep=keep,
                        token_types=token_types, attention_mask=attention_mask, prefix=prefix)
        return linear(x, self.head_weight()).float()

    def hidden(self, ids: torch.Tensor | None = None, *, embeds: torch.Tensor | None = None,
               positions: torch.Tensor | None = None, cache: KVStore | None = None,
               keep: torch.Tensor | None = None, token_types: torch.Tensor | None = None,
               attention_mask: torch.Tensor | None = None, prefix: torch.Tensor | None = None
               ) -> torch.Tensor:
        """Final hidden states (B, T', d_model), in the model's dtype.

        ids (B, T) or embeds (B, T, d_model); positions (B, T), by default the cache's
        positions or 0…T−1; keep (B, K): the positions to compute (for example only the last
        one while prefilling), all when None; token_types (B, T): segment ids (0 when None);
        attention_mask (B, T): 1 for tokens, 0 for right padding (passes without a cache);
        prefix (B,): prefix lengths of a prefix decoder's rows (bidirectional inside the
        prefix, causal after it; see `masks.prefix_mask`).
        """
        x = self.embed(ids) if embeds is None else embeds
        B, T, _ = x.shape
        if positions is None:
            positions = getattr(cache, "positions", None)
        if positions is None:
            positions = torch.arange(T, device=x.device).expand(B, T)
        if self.config.type_vocab_size:
            # BERT's order: words + segments + positions; segment 0 when none are given
            x = x + (self.type_embed.weight[0] if token_types is None
                     else self.type_embed(token_types)).to(x.dtype)
        if self.abs_position is not None:
            x = x + self.abs_position(positions).to(x.dtype)
        if self.config.post_norm:
            x = self.embed_norm(x)
        rope = self.rope(positions, x.dtype) if self.rope is not None else None
        if cache is None and (attention_mask is not None or prefix is not None
                              or not self.config.causal):
            cache = NoCache(self.config.causal, attention_mask, prefix, T)
        elif attention_mask is not None or prefix is not None:
            raise LmforgeError("attention_mask and prefix are for passes without a cache; a "
                               "KV cache carries its own mask for rows of different lengths")
        last = len(self.layers) - 1
        for i, block in enumerate(self.layers):
            x = block(x, rope, cache, keep if i == last else None)
        return x if self.config.post_norm else self.norm(x)

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
