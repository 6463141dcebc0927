"""Position encodings, chosen by `ModelConfig.position`.

- RoPE (Su et al., 2021, "RoFormer"): rotate each pair of query/key channels by an angle
  m·θ_i, θ_i = base^(−2i/d). We use the rotate-half layout of GPT-NeoX / Hugging Face Llama:
  channel i is paired with channel i + d/2, so x' = x·cos + rotate_half(x)·sin. The θ_i
  of a scaled RoPE (linear, NTK-aware, YaRN: past the trained window) come from
  `model/rope_scaling.py`.
- Learned absolute (GPT-2): a table of `max_seq_len` vectors added to the token embeddings.
- Sinusoidal (Vaswani et al., 2017): PE(m, 2i) = sin(m / 10000^(2i/d)), PE(m, 2i+1) = cos(…).
- Relative bias (T5, Raffel et al., 2020): no position is added to the embeddings; each
  attention score gets a learned per-head scalar b[bucket(j − i)], where the relative
  distance j − i is bucketed: exact below half the buckets, logarithmic up to a maximum
  distance. Encoders tell left from right (half the buckets each); decoders see only the
  past. One table per stack, shared by all its layers.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lmforge.model.config import ModelConfig
from lmforge.model.rope_scaling import rope_frequencies


def rope_tables(inv_freq: torch.Tensor, max_len: int, attention_factor: float = 1.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin of m·θ_i for m < max_len, each (max_len, head_dim), in fp32, times
    `attention_factor` (YaRN's temperature, `model/rope_scaling.py`; 1 otherwise).

    The sin table carries rotate_half's sign, [−sin, +sin] over the two halves, so that
    rotate_half(x)·sin = roll(x, d/2)·signed_sin: a roll instead of a split, negation and
    concatenation (three fewer operations per layer in every decode step)."""
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    sin = angles.sin() * attention_factor
    return (torch.cat([angles, angles], dim=-1).cos() * attention_factor,
            torch.cat([-sin, sin], dim=-1))


class RotaryEmbedding(nn.Module):
    """Looks up cos/sin for given positions; `apply` rotates queries and keys."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("cos", None, persistent=False)
        self.register_buffer("sin", None, persistent=False)
        self.init_buffers()

    def init_buffers(self) -> None:
        """(Re)compute the tables, e.g. after building the model on the meta device."""
        inv_freq, attention_factor = rope_frequencies(self.config)
        self.cos, self.sin = rope_tables(inv_freq, self.config.max_seq_len, attention_factor)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for `positions` (B, T), shaped (B, 1, T, head_dim) to broadcast over heads."""
        return (self.cos[positions].unsqueeze(1).to(dtype),
                self.sin[positions].unsqueeze(1).to(dtype))


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x' = x·cos + rotate_half(x)·sin, with rotate_half([a, b]) = [−b, a]
    = x·cos + [b, a]·[−sin, sin] (`rope_tables` gives the signed sin)."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), signed_sin)


class LearnedPosition(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.table = nn.Embedding(config.max_seq_len, config.d_model)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return self.table(positions)


class SinusoidalPosition(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("table", None, persistent=False)
        self.init_buffers()

    def init_buffers(self) -> None:
        d, n = self.config.d_model, self.config.max_seq_len
        div = torch.exp(torch.arange(0, d, 2).float() * (-math.log(10000.0) / d))
        angles = torch.arange(n).float()[:, None] * div
        table = torch.zeros(n, d)
        table[:, 0::2], table[:, 1::2] = angles.sin(), angles.cos()[:, : d // 2]
        self.table = table

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return self.table[positions]


def make_absolute_position(config: ModelConfig) -> nn.Module | None:
    """The module adding absolute positions to embeddings, or None (RoPE, none)."""
    return {"learned": LearnedPosition, "sinusoidal": SinusoidalPosition}.get(
        config.position, lambda _: None)(config)


def relative_bucket(distance: torch.Tensor, bidirectional: bool, buckets: int,
                    max_distance: int) -> torch.Tensor:
    """T5's bucket of a relative distance d = key − query (Mesh TensorFlow's rule).

    Bidirectional: buckets/2 for d ≤ 0 and buckets/2 for d > 0; causal: d ≤ 0 only. Within
    a half of n buckets, |d| < n/2 keeps its own bucket and larger |d| falls into
    n/2 + ⌊log(|d| / (n/2)) / log(max_distance / (n/2)) · (n/2)⌋, capped at n − 1.
    """
    offset = torch.zeros_like(distance)
    if bidirectional:
        buckets //= 2
        offset = (distance > 0).long() * buckets
        distance = distance.abs()
    else:
        distance = (-distance).clamp(min=0)
    exact = buckets // 2
    log_bucket = exact + (torch.log(distance.float().clamp(min=1) / exact)
                          / math.log(max_distance / exact) * (buckets - exact)).long()
    log_bucket = log_bucket.clamp(max=buckets - 1)
    return offset + torch.where(distance < exact, distance, log_bucket)


class RelativePositionBias(nn.Module):
    def __init__(self, config: ModelConfig, bidirectional: bool) -> None:
        super().__init__()
        self.bidirectional = bidirectional
        self.buckets, self.max_distance = config.relative_buckets, config.relative_max_distance
        self.table = nn.Embedding(config.relative_buckets, config.n_head)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Bias (B, n_head, T, L) for query positions (B, T) and key positions (B, L)."""
        distance = keys[:, None, :] - queries[:, :, None]
        bucket = relative_bucket(distance, self.bidirectional, self.buckets, self.max_distance)
        return self.table(bucket).permute(0, 3, 1, 2)
