"""GGUF (llama.cpp) model files → ModelConfig + our float32 state dict.

Metadata keys are `{arch}.*`; `llama` is mapped here (SmolLM2, Llama 2/3 without RoPE
scaling, Mistral all convert to it), `gpt2` in `gguf_gpt2.py`:

    llama.block_count → n_layer            llama.embedding_length → d_model
    llama.attention.head_count → n_head    llama.attention.head_count_kv → n_kv_head
    llama.feed_forward_length → d_ff       llama.context_length → max_seq_len
    llama.rope.freq_base → rope_theta      llama.attention.layer_norm_rms_epsilon → norm_eps
    llama.rope.dimension_count (or attention.key_length) → head_dim
    len(tokenizer.ggml.tokens) → vocab_size;  no `output.weight` → tie_embeddings

Q/K rows. llama.cpp's converter permutes the rows of attn_q/attn_k within each head so that
RoPE rotates adjacent pairs (x0, x1), (x2, x3), … (GPT-J style); Hugging Face Llama and
lmforge rotate the two halves (x_j, x_{j+hd/2}) instead. Per head, GGUF row 2j+t holds HF row
t*hd/2 + j (t ∈ {0, 1}); `unpermute_qk` maps it back, `permute_qk` is its inverse.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from lmforge.errors import LmforgeError
from lmforge.interop import layout
from lmforge.interop.gguf_file import GGUFFile
from lmforge.interop.gguf_gpt2 import config_from_gpt2_gguf, state_dict_from_gpt2
from lmforge.interop.threads import single_threaded
from lmforge.model.config import ModelConfig

SUPPORTED_ARCHITECTURES = ("llama", "gpt2")

# part (see layout.py) → GGUF tensor name, without the .weight/.bias suffix
GGUF_NAMES = {
    "embed": "token_embd", "norm": "output_norm", "lm_head": "output",
    "attn_norm": "blk.{i}.attn_norm", "q": "blk.{i}.attn_q", "k": "blk.{i}.attn_k",
    "v": "blk.{i}.attn_v", "o": "blk.{i}.attn_output", "ffn_norm": "blk.{i}.ffn_norm",
    "gate": "blk.{i}.ffn_gate", "up": "blk.{i}.ffn_up", "down": "blk.{i}.ffn_down",
}


def read_gguf_metadata(path: str | Path) -> dict:
    """Every metadata key of a GGUF file as plain Python values (lists, str, int, float, bool)."""
    with GGUFFile(path) as f:
        return f.metadata


def permute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF (rotate-half) rows → GGUF (interleaved pairs) rows, per head (llama.cpp's `permute`)."""
    # (h, 2, hd/2, …) → (h, hd/2, 2, …): row t*hd/2 + j moves to 2j + t
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).transpose(1, 2) \
        .reshape(w.shape)


def unpermute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """GGUF (interleaved pairs) rows → HF / lmforge (rotate-half) rows; inverse of permute_qk."""
    # (h, hd/2, 2, …) → (h, 2, hd/2, …): row 2j + t moves back to t*hd/2 + j
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2) \
        .reshape(w.shape)


def map_qk(config: ModelConfig, parts: dict[str, torch.Tensor],
           fn: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    """parts[name] = fn(parts[name], heads) for every layer's q and k weight and bias in
    `parts` (llama.cpp's row order of Q/K one way or the other)."""
    for i in range(config.n_layer):
        for p, heads in (("q", config.n_head), ("k", config.n_kv_head)):
            for suffix in ("weight", "bias"):
                name = f"layers.{i}.{p}.{suffix}"
                if name in parts:
                    parts[name] = fn(parts[name], heads)


def config_from_gguf(meta: dict, tensor_names: set[str], path: str | Path = "GGUF file"
                     ) -> ModelConfig:
    """ModelConfig from GGUF metadata (see the module docstring for the key mapping)."""
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise LmforgeError(f"{path}: architecture {arch!r} is not supported; supported: "
                           f"{', '.join(SUPPORTED_ARCHITECTURES)}")
    if arch == "gpt2":
        return config_from_gpt2_gguf(meta, tensor_names, path)

    def key(name: str, default=None):
        value = meta.get(f"{arch}.{name}", default)
        if value is None:
            raise LmforgeError(f"{path}: metadata key {arch}.{name} is missing; the file is "
                               "incomplete or was written by an unusual converter")
        return value

    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", None) or "rope_freqs.weight" in tensor_names:
        raise LmforgeError(f"{path}: RoPE scaling ({scaling}) is not supported yet")
    n_head = int(key("attention.head_count"))
    d_model = int(key("embedding_length"))
    head_dim = meta.get(f"{arch}.rope.dimension_count") or \
        meta.get(f"{arch}.attention.key_length") or d_model // n_head
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = len(tokens) if tokens is not None else key("vocab_size")
    return ModelConfig(
        vocab_size=int(vocab), d_model=d_model, n_layer=int(key("block_count")), n_head=n_head,
        n_kv_head=int(key("attention.head_count_kv", n_head)), head_dim=int(head_dim),
        d_ff=int(key("feed_forward_length")), family="decoder", norm="rmsnorm",
        norm_eps=float(key("attention.layer_norm_rms_epsilon")), mlp="swiglu", position="rope",
        rope_theta=float(key("rope.freq_base", 10000.0)),
        max_seq_len=int(key("context_length")),
        tie_embeddings="output.weight" not in tensor_names,
        bias="blk.0.attn_q.bias" in tensor_names,
    )


@single_threaded()
def load_gguf(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """(config, our float32 state dict, metadata) of a llama or gpt2 GGUF file."""
    with GGUFFile(path) as f:
        config = config_from_gguf(f.metadata, set(f.tensors), path)
        tensors = {name: f.tensor(name) for name in f.tensors}
        metadata = f.metadata
    if metadata["general.architecture"] == "gpt2":
        return config, state_dict_from_gpt2(config, tensors, str(path)), metadata
    return config, state_dict_from_tensors(config, tensors, str(path)), metadata


def state_dict_from_tensors(config: ModelConfig, tensors: dict[str, torch.Tensor], where: str
                            ) -> dict[str, torch.Tensor]:
    """Our state dict from tensors under GGUF names: renamed, Q/K rows unpermuted, fused and
    checked (meta tensors pass through: `compress/gguf_native.py` fills those in itself)."""
    parts = layout.gather(config, GGUF_NAMES, tensors, where)
    map_qk(config, parts, unpermute_qk)
    state_dict = layout.fuse(config, parts)
    layout.check_state_dict(config, state_dict, where)
    return state_dict
