"""The token embedding held in int8, and the tied LM head that reads it.

With tied weights (Press & Wolf, 2017) the embedding matrix E (vocab × d) is both the lookup
table and the head, logits = h·Eᵀ. In SmolLM2-135M it is 49152 × 576: 113 MB in fp32, the
largest matrix of the model, and the head reads all of it every decode step. Here it is held
once, int8 with one scale per row (the `int8` scheme, `schemes.rtn`):

    s_v = max_j |E_vj| / 127,   q_v = clamp(round(E_v / s_v), −127, 127),   Ê_v = q_v · s_v

    lookup  `QuantEmbedding(ids)` gathers the codes and scales of the rows it needs only:
            Ê[ids] = q[ids] · s[ids]
    head    `QuantTiedHead(h)` = h·Êᵀ by the packed int8 kernel (`linear.int8pack_mm`),
            a quarter of fp32's bytes per step

llama.cpp does the same with SmolLM2's GGUF: token_embd is stored in Q8_0 (int8, one scale
per 32 values) and serves as the output head. The state dict holds `embed.codes` (I8,
vocab × d) and `embed.scale` (F32, vocab); the head holds nothing of its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.compress.linear import ALIGN, QuantProduct
from lmforge.compress.schemes import Scheme, rtn
from lmforge.model.heads import TiedHead

SCHEME = Scheme.parse("int8")


class QuantEmbedding(nn.Module):
    """A token embedding of int8 codes (num_embeddings, embedding_dim) and row scales."""

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        # the scale first: LoRA and casts take the module's dtype from the first float tensor
        self.register_buffer("scale", torch.empty(num_embeddings))
        self.register_buffer("codes", torch.empty(num_embeddings, embedding_dim,
                                                  dtype=torch.int8))

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding) -> QuantEmbedding:
        """Round `embedding`'s matrix to int8 per row (round to nearest)."""
        weight = rtn(SCHEME, embedding.weight.detach())
        module = cls(embedding.num_embeddings, embedding.embedding_dim)
        module.codes, module.scale = weight.codes.clone(), weight.scale.float().clone()
        return module

    def init_buffers(self) -> None:
        """Copy 8-byte aligned tensors (a safetensors load) to 64-byte aligned ones: the
        int8 kernel's vector path reads aligned rows (`QuantLinear.init_buffers`)."""
        for name in ("codes", "scale"):
            tensor = getattr(self, name)
            if tensor.data_ptr() % ALIGN:
                setattr(self, name, tensor.clone())

    @property
    def weight(self) -> torch.Tensor:
        """Ê (vocab, d) in the scale's dtype: a full dequantized copy, made on each read
        (for code that needs the matrix; the lookup and the head never call it)."""
        return self.dequantize(self.scale.dtype)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        # the codes converted into Ê's own memory, then scaled in place: one matrix made
        out = torch.empty(self.codes.shape, dtype=dtype, device=self.codes.device)
        return out.copy_(self.codes).mul_(self.scale.to(dtype).unsqueeze(1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Ê[ids] (…, d), in the scale's dtype (the model's)."""
        dtype = self.scale.dtype
        return self.codes[ids].to(dtype) * self.scale[ids].unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, scheme=int8"


class QuantTiedHead(TiedHead):
    """logits = h·Êᵀ over a `QuantEmbedding`'s codes: (…, d) → (…, vocab). The embedding is
    a plain attribute (`TiedHead`'s), so its tensors are saved once; `weight` dequantizes."""

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.embedding.dequantize(dtype)

    def product(self, x: torch.Tensor) -> torch.Tensor:
        """x·Êᵀ for x (rows, d): the packed int8 kernel on the CPU, else the dequantized
        matrix."""
        codes, scale = self.embedding.codes, self.embedding.scale
        if codes.device.type == "cpu":
            return torch.ops.lmforge.int8pack_mm(x, codes, scale)
        return F.linear(x, self.dequantize(x.dtype))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = hidden.reshape(-1, self.in_features)
        if torch.is_grad_enabled() and hidden.requires_grad:
            y = QuantProduct.apply(rows, self)  # ∂L/∂h = ∂L/∂y·Ê (LoRA on a quantized base)
        else:
            y = self.product(rows)
        return y.view(*hidden.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, tied, int8"


def quantize_embedding(model: nn.Module) -> None:
    """Replace `model.embed` by its int8 `QuantEmbedding` and, when the head is tied, the
    head by a `QuantTiedHead` over it, in place."""
    embedding = QuantEmbedding.from_embedding(model.embed)
    install_embedding(model, embedding)


def install_embedding(model: nn.Module, embedding: QuantEmbedding) -> None:
    """Put `embedding` at `model.embed` (and a `QuantTiedHead` over it when tied); with an
    empty one (on the meta device), the transform a quantized checkpoint's load runs."""
    model.embed = embedding
    if model.config.tie_embeddings:
        model.lm_head = QuantTiedHead(embedding)


def install_empty_embedding(model: nn.Module) -> None:
    install_embedding(model, QuantEmbedding(model.config.vocab_size, model.config.d_model))
