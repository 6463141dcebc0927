"""The Transformer: embeddings → stack of blocks → final norm → LM head.

    logits = W_head · Norm(Block_N(… Block_1(E[ids] (+ S[token_types]) (+ P[positions])))))

An encoder-decoder (`family="encoder_decoder"`, T5) has a second stack, `encoder`, that
reads the source bidirectionally; `encode` runs it, and every decoder block adds
cross-attention to its output (`model/cross_attention.py`). Both stacks share the token
embedding, as in T5. With `position="relative"` each stack has its own relative-bias table,
added to the attention scores of all its layers.

Post-norm models (`norm_position="post"`, BERT) normalise the embeddings instead and have no
final norm: each block already ends in one. `hidden` returns the final hidden states (what
sentence-embedding and classification heads read, `model/heads.py`); `forward` applies the
LM head to them. Encoders (`family="encoder"`) attend both ways; an `attention_mask` (B, T)
of 1/0 hides right padding from every query (`model/masks.py`).

The model owns no generation state: every pass reads one declared context, a `KVStore`
(`model/attention.py`) holding positions, mask and keys: the caller's `cache` (a
`lmforge.generate.cache.CacheStep`, a P-Tuning v2 `model/prefix.PrefixStore`) or a
`NoCache` built here from `positions`, `attention_mask` and `prefix`. It accepts input
embeddings instead of ids (soft prompts), and every projection is an `nn.Linear` attribute
reachable by name (`layers.3.attn.qkv`), so adapters and quantized layers replace modules
from outside without touching this file.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lmforge.errors import LmforgeError
from lmforge.model.attention import KVStore
from lmforge.model.block import Block
from lmforge.model.config import ModelConfig
from lmforge.model.cross_attention import CrossMemory
from lmforge.model.heads import TiedHead
from lmforge.model.linear import Linear
from lmforge.model.masks import BiasedStore, NoCache
from lmforge.model.norm import make_norm
from lmforge.model.position import (
    RelativePositionBias,
    RotaryEmbedding,
    make_absolute_position,
)


class Stack(nn.Module):
    """Blocks and a final norm, with the relative-bias table when positions are relative:
    the encoder of an encoder-decoder model (the decoder's parts sit on `Transformer`
    itself, so decoder-only checkpoints keep their names)."""

    def __init__(self, config: ModelConfig, n_layer: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block(config, i) for i in range(n_layer))
        self.norm = make_norm(config)
        if config.position == "relative":
            self.rel_bias = RelativePositionBias(config, bidirectional=True)


def run_blocks(stack: nn.Module, x: torch.Tensor,
               rope: tuple[torch.Tensor, torch.Tensor] | None, store: KVStore,
               keep: torch.Tensor | None = None, memory: CrossMemory | None = None,
               checkpointed: bool = False) -> torch.Tensor:
    """x through `stack.layers` (the last one computing only `keep`); `checkpointed`
    recomputes each block's activations in the backward pass instead of storing them."""
    rel_bias = getattr(stack, "rel_bias", None)  # a module of relative-position stacks only
    if rel_bias is not None:  # one bias per pass, from the positions the store declares
        store = BiasedStore(store, rel_bias(store.positions, store.key_positions))
    last = len(stack.layers) - 1
    for i, block in enumerate(stack.layers):
        args = (x, rope, store, keep if i == last else None, memory)
        x = checkpoint(block, *args, use_reentrant=False) if checkpointed else block(*args)
    return x


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.activation_checkpointing = False  # set by the trainer (a memory option)
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        if config.type_vocab_size:
            self.type_embed = nn.Embedding(config.type_vocab_size, config.d_model)
        self.abs_position = make_absolute_position(config)
        self.rope = RotaryEmbedding(config) if config.position == "rope" else None
        if config.post_norm:
            self.embed_norm = make_norm(config)
        cross = config.family == "encoder_decoder"
        if cross:
            self.encoder = Stack(config, config.encoder_layers)
        if config.position == "relative":
            self.rel_bias = RelativePositionBias(config, bidirectional=not config.causal)
        self.layers = nn.ModuleList(Block(config, i, cross) for i in range(config.n_layer))
        if not config.post_norm:
            self.norm = make_norm(config)
        # a module that forward calls, replaceable from outside; tied: reads embed.weight
        self.lm_head = (TiedHead(self.embed) if config.tie_embeddings
                        else Linear(config.d_model, config.vocab_size, bias=False))
        # zero elements that follow .to(): the model's dtype and device, whatever its weights
        # hold (int8 beside fp32 norms); not saved (non-persistent)
        self.register_buffer("dtype_marker", torch.empty(0), persistent=False)

    def head_weight(self) -> torch.Tensor:
        """The head's matrix (vocab, d): the embedding's when tied."""
        return self.lm_head.weight

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the model computes in (its hidden states', its KV cache's)."""
        return self.dtype_marker.dtype

    @property
    def device(self) -> torch.device:
        return self.dtype_marker.device

    def init_buffers(self) -> None:
        """Materialise `dtype_marker` after building on the meta device (`api.build_model`).
        The device is read from the first parameter, not `embed.weight`: a quantized
        embedding computes that property by dequantizing its whole table."""
        first = next(itertools.chain(self.parameters(), self.buffers()))
        self.dtype_marker = torch.empty(0, device=first.device)

    def forward(self, ids: torch.Tensor | None = None, **inputs) -> torch.Tensor:
        """Logits (B, T', vocab) in fp32: the LM head over `hidden(ids, **inputs)` (the
        arguments are hidden's, declared there once)."""
        return self.logits(self.hidden(ids, **inputs))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 logits (…, vocab) of final hidden states (…, d_model): the LM head, after
        T5's d_model^−½ rescale when `head_rescale` (scoring applies it to the scored
        positions only, `lmforge.score`)."""
        if self.config.head_rescale:
            hidden = hidden * self.config.d_model ** -0.5
        return self.lm_head(hidden).float()

    def hidden(self, ids: torch.Tensor | None = None, *, embeds: torch.Tensor | None = None,
               positions: torch.Tensor | None = None, cache: KVStore | None = None,
               keep: torch.Tensor | None = None, token_types: torch.Tensor | None = None,
               attention_mask: torch.Tensor | None = None, prefix: torch.Tensor | None = None,
               memory: torch.Tensor | CrossMemory | None = None,
               memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states (B, T', d_model), in the model's dtype.

        ids (B, T) or embeds (B, T, d_model); cache: the `KVStore` this pass reads (a
        `CacheStep` of a KV cache, a `PrefixStore`, a `NoCache` built by the caller), or
        None for a pass over these tokens alone, which then takes positions (B, T) (0…T−1
        when None), attention_mask (B, T) (1 for tokens, 0 for right padding) and prefix
        (B,) (prefix lengths of a prefix decoder's rows: bidirectional inside the prefix,
        causal after it; see `masks.prefix_mask`); keep (B, K): the positions to compute
        (for example only the last one while prefilling), all when None; token_types
        (B, T): segment ids (0 when None); memory: an encoder-decoder's encoder output
        (B, S, d_model) from `encode`, or a `CrossMemory` built from it once, with
        memory_mask (B, S) marking its padding.
        """
        if self.config.family == "encoder_decoder":
            if memory is None:
                raise LmforgeError("an encoder-decoder model decodes against an encoder "
                                   "output: pass memory=model.encode(source_ids)")
            if not isinstance(memory, CrossMemory):
                memory = self.cross_memory(memory, memory_mask)
        store = cache
        if store is None:
            inputs = ids if embeds is None else embeds
            B, T = inputs.shape[:2]
            store = NoCache.start(B, T, self.config.causal, attention_mask, prefix,
                                  inputs.device) if positions is None else NoCache(
                positions, self.config.causal, attention_mask, prefix)
        elif positions is not None or attention_mask is not None or prefix is not None:
            raise LmforgeError("positions, attention_mask and prefix are for passes without a "
                               "cache; a KV store declares its own (wrap a "
                               "masks.NoCache(positions, causal, attention_mask, prefix))")
        x, rope = self._embed(ids, embeds, store.positions, token_types)
        x = run_blocks(self, x, rope, store, keep, memory, self._checkpointed())
        return x if self.config.post_norm else self.norm(x)

    def encode(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None
               ) -> torch.Tensor:
        """The encoder output (B, S, d_model) of an encoder-decoder model: bidirectional
        attention over the source ids (B, S), with attention_mask (B, S) 1/0 for padding."""
        if self.config.family != "encoder_decoder":
            raise LmforgeError(f"encode() is for encoder_decoder models; this one is a "
                               f"{self.config.family} (use hidden())")
        store = NoCache.start(*ids.shape, False, attention_mask, device=ids.device)
        x, rope = self._embed(ids, None, store.positions, None)
        x = run_blocks(self.encoder, x, rope, store, checkpointed=self._checkpointed())
        return self.encoder.norm(x)

    def cross_memory(self, states: torch.Tensor, attention_mask: torch.Tensor | None = None
                     ) -> CrossMemory:
        """The decoder's cross-attention keys and values of an encoder output, once."""
        return CrossMemory.build(self.layers, states, attention_mask)

    def _embed(self, ids: torch.Tensor | None, embeds: torch.Tensor | None,
               positions: torch.Tensor, token_types: torch.Tensor | None
               ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Input vectors (B, T, d) at `positions` (B, T) and the RoPE tables (or None)."""
        x = self.embed(ids) if embeds is None else embeds
        if self.config.type_vocab_size:
            # BERT's order: words + segments + positions; segment 0 when none are given
            x = x + (self.type_embed.weight[0] if token_types is None
                     else self.type_embed(token_types)).to(x.dtype)
        if self.abs_position is not None:
            x = x + self.abs_position(positions).to(x.dtype)
        if self.config.post_norm:
            x = self.embed_norm(x)
        rope = self.rope(positions, x.dtype) if self.rope is not None else None
        return x, rope

    def _checkpointed(self) -> bool:
        return self.activation_checkpointing and self.training and torch.is_grad_enabled()

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
