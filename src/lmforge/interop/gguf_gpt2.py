"""GGUF `gpt2` models ↔ lmforge's GPT-2-like decoders (pre-norm LayerNorm with biases, GELU,
learned absolute positions; `configs/shakespeare-bpe.toml` trains one), both ways.

Tensors keep our (out, in) shapes and row order: llama.cpp's gpt2 has no RoPE, so nothing is
permuted, and `attn_qkv` is our fused [q; k; v] as it is.

    token_embd / position_embd         embed / abs_position.table
    output_norm (weight, bias)         norm
    output                             lm_head (absent: tied to token_embd)
    blk.{i}.attn_norm, attn_qkv, attn_output, ffn_norm, ffn_up, ffn_down (weight, bias)
                                       layers.{i}.attn_norm, attn.qkv, attn.out, ffn_norm,
                                       ffn.up, ffn.down

Metadata: gpt2.block_count, context_length, embedding_length, feed_forward_length,
attention.head_count (and head_count_kv when grouped), attention.layer_norm_epsilon,
vocab_size.

GELU. llama.cpp computes GPT-2's GELU with the tanh approximation ("gelu_new"), so a file
says nothing about it and reads as `mlp="gelu_tanh"`. A model trained with exact GELU (every
GPT-2-like config in configs/) is written with the extra key `lmforge.mlp = "gelu"`, which
lmforge reads back (an exact round trip) and llama.cpp ignores: it runs the tanh form,
|gelu(x) − gelu_tanh(x)| ≤ 4.7e-4 per activation.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from lmforge.errors import LmforgeError
from lmforge.interop import layout
from lmforge.model.config import ModelConfig

GLOBAL_NAMES = {"embed": "token_embd", "abs_position.table": "position_embd",
                "norm": "output_norm", "lm_head": "output"}
LAYER_NAMES = {"attn_norm": "attn_norm", "attn.qkv": "attn_qkv", "attn.out": "attn_output",
               "ffn_norm": "ffn_norm", "ffn.up": "ffn_up", "ffn.down": "ffn_down"}
MLP_KEY = "lmforge.mlp"
MLPS = ("gelu_tanh", "gelu")  # what the file computes in llama.cpp; the exact form lmforge's


def gguf_name(ours: str) -> str:
    """Our state-dict name → GGUF's: 'layers.3.attn.qkv.bias' → 'blk.3.attn_qkv.bias'."""
    module, suffix = ours.rsplit(".", 1)
    if module.startswith("layers."):
        _, i, rest = module.split(".", 2)
        return f"blk.{i}.{LAYER_NAMES[rest]}.{suffix}"
    return f"{GLOBAL_NAMES[module]}.{suffix}"


def gpt2_metadata(config: ModelConfig) -> dict[str, int | float | str]:
    """The `gpt2.*` keys of `config` (and `lmforge.mlp` for exact GELU)."""
    meta: dict[str, int | float | str] = {
        "gpt2.block_count": config.n_layer, "gpt2.context_length": config.max_seq_len,
        "gpt2.embedding_length": config.d_model, "gpt2.feed_forward_length": config.d_ff,
        "gpt2.attention.head_count": config.n_head,
        "gpt2.attention.layer_norm_epsilon": float(config.norm_eps),
        "gpt2.vocab_size": config.vocab_size}
    if config.n_kv_head != config.n_head:
        meta["gpt2.attention.head_count_kv"] = config.n_kv_head
    if config.mlp == "gelu":  # any other non-tanh form is refused: it reads back different
        meta[MLP_KEY] = config.mlp
    return meta


def config_from_gpt2_gguf(meta: Mapping, tensor_names: set[str], path: str | Path = "GGUF file"
                          ) -> ModelConfig:
    """ModelConfig from `gpt2.*` GGUF metadata (the module docstring lists the keys)."""
    def key(name: str):
        value = meta.get(f"gpt2.{name}")
        if value is None:
            raise LmforgeError(f"{path}: metadata key gpt2.{name} is missing; the file is "
                               "incomplete or was written by an unusual converter")
        return value

    mlp = meta.get(MLP_KEY, "gelu_tanh")
    if mlp not in MLPS:
        raise LmforgeError(f"{path}: {MLP_KEY} = {mlp!r} is not one of {MLPS}")
    n_head = int(key("attention.head_count"))
    tokens = meta.get("tokenizer.ggml.tokens")
    return ModelConfig(
        vocab_size=len(tokens) if tokens is not None else int(key("vocab_size")),
        d_model=int(key("embedding_length")), n_layer=int(key("block_count")), n_head=n_head,
        n_kv_head=int(meta.get("gpt2.attention.head_count_kv", n_head)),
        d_ff=int(key("feed_forward_length")), family="decoder", norm="layernorm",
        norm_eps=float(key("attention.layer_norm_epsilon")), mlp=mlp, position="learned",
        max_seq_len=int(key("context_length")), bias=True,
        tie_embeddings="output.weight" not in tensor_names)


def gpt2_tensors(config: ModelConfig, state_dict: Mapping[str, torch.Tensor]
                 ) -> dict[str, torch.Tensor]:
    """GGUF name → tensor of our state dict (a renaming only)."""
    layout.check_state_dict(config, state_dict, "the state dict")
    return {gguf_name(name): t for name, t in state_dict.items()}


def state_dict_from_gpt2(config: ModelConfig, tensors: Mapping[str, torch.Tensor], where: str
                         ) -> dict[str, torch.Tensor]:
    """Our state dict from tensors under GGUF `gpt2` names; missing or unknown ones are errors."""
    ours = {gguf_name(name): name for name in layout.expected_shapes(config)}
    missing = sorted(n for n in ours if n not in tensors)
    extra = sorted(n for n in tensors if n not in ours)
    if missing or extra:
        raise LmforgeError(f"{where} does not hold the tensors of a GPT-2 model of its "
                           f"metadata: missing {missing[:5]}, unknown {extra[:5]}")
    state_dict = {ours[n]: t for n, t in tensors.items()}
    layout.check_state_dict(config, state_dict, where)
    return state_dict
