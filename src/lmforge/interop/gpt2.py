"""Hugging Face GPT-2 directories (`GPT2LMHeadModel`, `GPT2Model`) → ModelConfig + our state dict.

GPT-2 (Radford et al., 2019) is our Transformer with `family="decoder"`, pre-norm LayerNorm
with biases, GELU-tanh ("gelu_new"), learned absolute positions and tied embeddings. Its
projections are `Conv1D` layers that store W transposed, (in, out), so each is transposed
to our (out, in); `c_attn` already holds [q; k; v] in our row order once transposed.

    transformer.wte / wpe                  embed / abs_position.table
    transformer.h.{i}.ln_1 / ln_2          layers.{i}.attn_norm / ffn_norm
    transformer.h.{i}.attn.c_attn          layers.{i}.attn.qkv      (transposed)
    transformer.h.{i}.attn.c_proj          layers.{i}.attn.out      (transposed)
    transformer.h.{i}.mlp.c_fc / c_proj    layers.{i}.ffn.up / down (transposed)
    transformer.ln_f                       norm

Dropped: `lm_head.weight` (tied to `wte`) and the old causal-mask buffers `attn.bias`,
`attn.masked_bias`. Any other tensor is an error, as is a missing one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lmforge.errors import LmforgeError
from lmforge.interop.hf import load_converted
from lmforge.interop.layout import TensorSource
from lmforge.interop.threads import single_threaded
from lmforge.model.config import ModelConfig

ARCHITECTURES = ("GPT2LMHeadModel", "GPT2Model")
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu",
               "relu": "relu"}
LAYER_NAMES = {  # ours → theirs under transformer.h.{i}.; True: a Conv1D to transpose
    "attn_norm": ("ln_1", False), "attn.qkv": ("attn.c_attn", True),
    "attn.out": ("attn.c_proj", True), "ffn_norm": ("ln_2", False),
    "ffn.up": ("mlp.c_fc", True), "ffn.down": ("mlp.c_proj", True),
}
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def is_gpt2(hf: dict) -> bool:
    archs = hf.get("architectures") or []
    return bool(archs) and archs[0] in ARCHITECTURES


def config_from_gpt2(hf: dict, where: str = "config.json") -> ModelConfig:
    act = hf.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise LmforgeError(f"{where}: activation_function {act!r} is not supported; "
                           f"supported: {', '.join(ACTIVATIONS)}")
    try:
        d = int(hf["n_embd"])
        return ModelConfig(
            vocab_size=int(hf["vocab_size"]), d_model=d, n_layer=int(hf["n_layer"]),
            n_head=int(hf["n_head"]), d_ff=int(hf.get("n_inner") or 4 * d),
            norm="layernorm", norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
            mlp=ACTIVATIONS[act], position="learned",
            max_seq_len=int(hf.get("n_positions", 1024)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)), bias=True)
    except KeyError as exc:
        raise LmforgeError(f"{where} lacks the key {exc.args[0]!r}") from None


def state_dict_from_gpt2(config: ModelConfig, tensors: dict[str, torch.Tensor], where: str
                         ) -> dict[str, torch.Tensor]:
    """Our state dict from GPT-2 tensors (renaming and transposing only)."""
    prefix = "transformer." if "transformer.wte.weight" in tensors else ""
    source = TensorSource(tensors, prefix, where, "GPT-2")
    take = source.take
    out = {"embed.weight": take("wte.weight"), "abs_position.table.weight": take("wpe.weight"),
           "norm.weight": take("ln_f.weight"), "norm.bias": take("ln_f.bias")}
    for i in range(config.n_layer):
        for ours, (theirs, conv) in LAYER_NAMES.items():
            weight = take(f"h.{i}.{theirs}.weight")
            out[f"layers.{i}.{ours}.weight"] = weight.t().contiguous() if conv else weight
            out[f"layers.{i}.{ours}.bias"] = take(f"h.{i}.{theirs}.bias")
    return source.finish(config, out, lambda name: name == "lm_head.weight"
                         or name.endswith(IGNORED_SUFFIXES))


@single_threaded()
def load_gpt2(directory: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """(config, our float32 state dict, the raw config.json dict) of a HF GPT-2 directory."""
    return load_converted(directory, config_from_gpt2, state_dict_from_gpt2)
