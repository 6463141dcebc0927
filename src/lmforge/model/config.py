"""One flat dataclass that describes every architecture lmforge builds.

Design choices:
- Fields are explicit component choices (norm, mlp, position, kv heads); behaviour never
  follows from a model's name.
- Derived fields (`head_dim`, `d_ff`) are filled once in `__post_init__`.
- `from_dict` rejects unknown keys by name, so a misspelled key in a config file is an error,
  not a silent default.
- Runtime settings (batch size, cache length, device, dtype) are not here.
- `family` picks the attention mask: "encoder" attends both ways (BERT), every other family
  causally; "encoder_decoder" adds a bidirectional encoder stack of `n_encoder_layer` blocks
  whose output every decoder block reads through cross-attention (T5, BART).
- `norm_position` picks pre-norm (GPT-2 onwards, Llama) or post-norm blocks (the
  original Transformer, BERT); post-norm implies a norm on the embeddings and no final norm.
  The defaults of every field added later keep older configs meaning what they meant.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from lmforge import strict
from lmforge.errors import LmforgeError

FAMILIES = ("decoder", "prefix", "encoder", "encoder_decoder")
NORMS = ("rmsnorm", "layernorm", "batchnorm")
MLPS = ("swiglu", "geglu", "geglu_tanh", "gelu", "gelu_tanh", "relu", "silu")
POSITIONS = ("rope", "learned", "sinusoidal", "relative", "none")
NORM_POSITIONS = ("pre", "post")
ROPE_SCALINGS = ("none", "linear", "ntk", "yarn")  # model/rope_scaling.py


@dataclass
class ModelConfig:
    """Architecture of one Transformer; round-trips through JSON (`to_dict` / `from_dict`)."""

    vocab_size: int
    d_model: int
    n_layer: int
    n_head: int
    n_kv_head: int | None = None  # None: multi-head attention (n_kv_head = n_head)
    head_dim: int | None = None  # None: d_model // n_head
    d_ff: int | None = None  # None: 4 * d_model
    family: str = "decoder"
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    mlp: str = "swiglu"
    position: str = "rope"
    rope_theta: float = 10000.0
    max_seq_len: int = 2048
    # RoPE scaling (model/rope_scaling.py): max_seq_len = rope_factor × the trained window
    rope_scaling: str = "none"  # none (> 1: plain RoPE extrapolated) | linear | ntk | yarn
    rope_factor: float = 1.0
    rope_original_max_seq_len: int = 0  # the trained window when scaled (0: max_seq_len)
    tie_embeddings: bool = True
    bias: bool = False
    norm_position: str = "pre"  # "post": norm after each residual add (+ embeddings, no final)
    type_vocab_size: int = 0  # segment (token type) embeddings, as in BERT; 0: none
    n_encoder_layer: int = 0  # encoder_decoder: encoder depth (0: n_layer); others: unused
    relative_buckets: int = 32  # position="relative" (T5): buckets of relative distance
    relative_max_distance: int = 128  # distances beyond this share the last bucket
    scale_attention: bool = True  # softmax(QKᵀ/√d); False: softmax(QKᵀ) (T5 folds it into init)
    head_rescale: bool = False  # multiply the last hidden state by d_model^-½ (original T5)
    decoder_start_id: int = 0  # encoder_decoder: the first decoder input (T5: pad = 0)
    # mixture of experts (model/moe.py); moe_experts = 0 keeps every feed-forward layer dense
    moe_experts: int = 0  # experts per MoE layer
    moe_routing: str = "topk"  # soft | topk | switch
    moe_k: int = 2  # experts per token (topk)
    moe_d_ff: int | None = None  # an expert's hidden width; None: d_ff
    moe_layers: str | list[int] = "all"  # all | every_other | [block indices]
    moe_capacity_factor: float = 1.25  # switch, training only: ⌈factor · N / n⌉ per expert
    moe_aux_weight: float = 0.01  # load-balancing loss weight (Switch Transformer)
    moe_z_weight: float = 0.001  # router z-loss weight (ST-MoE)
    moe_noise: float = 1.0  # scale of the learned router noise (topk, switch; training only)
    moe_router_fp32: bool = True  # compute the gate in fp32 even under bf16

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.head_dim is None:
            self.head_dim = self.d_model // self.n_head
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        if self.moe_d_ff is None:
            self.moe_d_ff = self.d_ff
        self.validate()

    def validate(self) -> None:
        """Raise LmforgeError naming the first inconsistent field."""
        for name, value, allowed in (
            ("family", self.family, FAMILIES),
            ("norm", self.norm, NORMS),
            ("mlp", self.mlp, MLPS),
            ("position", self.position, POSITIONS),
            ("norm_position", self.norm_position, NORM_POSITIONS),
            ("rope_scaling", self.rope_scaling, ROPE_SCALINGS),
        ):
            if value not in allowed:
                raise LmforgeError(f"config field {name}={value!r} is not one of {allowed}")
        for name in ("vocab_size", "d_model", "n_layer", "n_head", "n_kv_head", "head_dim",
                     "d_ff", "max_seq_len"):
            if int(getattr(self, name)) <= 0:
                raise LmforgeError(
                    f"config field {name} must be positive, got {getattr(self, name)}")
        if self.n_head % self.n_kv_head:
            raise LmforgeError(
                f"n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head} "
                "(in grouped-query attention each key/value head serves n_head/n_kv_head "
                "query heads)"
            )
        if self.type_vocab_size < 0:
            raise LmforgeError(f"config field type_vocab_size must be >= 0 (0: no token types), "
                               f"got {self.type_vocab_size}")
        if self.n_encoder_layer < 0:
            raise LmforgeError(f"config field n_encoder_layer must be >= 0 (0: n_layer), got "
                               f"{self.n_encoder_layer}")
        if self.position == "relative" and (self.relative_buckets < 2
                                            or self.relative_max_distance < 2):
            raise LmforgeError("relative_buckets and relative_max_distance must be >= 2")
        if self.family == "encoder_decoder" and self.norm_position == "post":
            raise LmforgeError("the encoder_decoder family is built pre-norm (T5); use "
                               "norm_position = \"pre\"")
        if self.position == "rope" and self.head_dim % 2:
            raise LmforgeError(f"RoPE needs an even head_dim, got {self.head_dim}")
        scaled = self.rope_scaling != "none" or self.rope_factor != 1
        if scaled and not (self.rope_factor >= 1 and self.rope_original_max_seq_len > 0):
            raise LmforgeError("rope_scaling needs rope_factor >= 1 and the trained window "
                               "in rope_original_max_seq_len (lmforge.model.rope_scaling."
                               "with_rope_scaling sets both)")
        from lmforge.model.moe import validate_moe

        validate_moe(self)

    @property
    def causal(self) -> bool:
        """Whether a position attends only to itself and earlier ones (every family but encoder)."""
        return self.family != "encoder"

    @property
    def encoder_layers(self) -> int:
        """Depth of the encoder stack of an encoder_decoder model."""
        return self.n_encoder_layer or self.n_layer

    @property
    def post_norm(self) -> bool:
        return self.norm_position == "post"

    @property
    def gated(self) -> bool:
        """Whether the feed-forward layer is a gated linear unit (two input projections)."""
        return self.mlp in ("swiglu", "geglu", "geglu_tanh")

    def n_params(self) -> int:
        """Number of parameters (tied embeddings counted once), from a weightless model."""
        import torch

        from lmforge.model.transformer import Transformer

        with torch.device("meta"):
            return sum(p.numel() for p in Transformer(self).parameters())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        return strict.from_dict(cls, data, "model config")

    def save(self, path: str | Path, **extra) -> None:
        """Write `config.json` (plus `extra` top-level keys such as the format tag)."""
        from lmforge.io import atomic_write_text

        atomic_write_text(path, json.dumps({**extra, **self.to_dict()}, indent=2) + "\n")
