"""One flat dataclass that describes every architecture lmforge builds.

Design choices:
- Fields are explicit component choices (norm, mlp, position, kv heads); behaviour never
  follows from a model's name.
- Derived fields (`head_dim`, `d_ff`) are filled once in `__post_init__`.
- `from_dict` rejects unknown keys by name, so a misspelled key in a config file is an error,
  not a silent default.
- Runtime settings (batch size, cache length, device, dtype) are not here.
- `family` picks the attention mask: "encoder" attends both ways (BERT), every other family
  causally. `norm_position` picks pre-norm (GPT-2 onwards, Llama) or post-norm blocks (the
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
NORMS = ("rmsnorm", "layernorm")
MLPS = ("swiglu", "geglu", "gelu", "gelu_tanh", "relu", "silu")
POSITIONS = ("rope", "learned", "sinusoidal", "none")
NORM_POSITIONS = ("pre", "post")


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
    tie_embeddings: bool = True
    bias: bool = False
    norm_position: str = "pre"  # "post": norm after each residual add (+ embeddings, no final)
    type_vocab_size: int = 0  # segment (token type) embeddings, as in BERT; 0: none

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.head_dim is None:
            self.head_dim = self.d_model // self.n_head
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        self.validate()

    def validate(self) -> None:
        """Raise LmforgeError naming the first inconsistent field."""
        for name, value, allowed in (
            ("family", self.family, FAMILIES),
            ("norm", self.norm, NORMS),
            ("mlp", self.mlp, MLPS),
            ("position", self.position, POSITIONS),
            ("norm_position", self.norm_position, NORM_POSITIONS),
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
        if self.position == "rope" and self.head_dim % 2:
            raise LmforgeError(f"RoPE needs an even head_dim, got {self.head_dim}")

    @property
    def causal(self) -> bool:
        """Whether a position attends only to itself and earlier ones (every family but encoder)."""
        return self.family != "encoder"

    @property
    def post_norm(self) -> bool:
        return self.norm_position == "post"

    @property
    def gated(self) -> bool:
        """Whether the feed-forward layer is a gated linear unit (two input projections)."""
        return self.mlp in ("swiglu", "geglu")

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
