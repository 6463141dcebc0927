"""Normalisation layers, chosen by `ModelConfig.norm`.

- RMSNorm (Zhang & Sennrich, 2019): y = x / sqrt(mean(x²) + ε) · g
- LayerNorm (Ba et al., 2016): y = (x − mean(x)) / sqrt(var(x) + ε) · g + b
- BatchNorm (Ioffe & Szegedy, 2015), for the comparison only: the same formula with mean and
  variance taken per channel over every token of the batch, so in training one sequence's
  output depends on the other sequences in its batch (and on padding); LayerNorm's
  statistics are per token, which is why Transformers use it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.config import ModelConfig


class RMSNorm(nn.Module):
    """Root-mean-square norm; one fused `F.rms_norm` call (its statistics accumulate in fp32)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


class BatchNorm(nn.BatchNorm1d):
    """BatchNorm over the channels of (B, T, d): statistics over all B·T tokens in training,
    running averages in evaluation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).view(x.shape)


def make_norm(config: ModelConfig) -> nn.Module:
    """The norm layer the config names."""
    if config.norm == "rmsnorm":
        return RMSNorm(config.d_model, config.norm_eps)
    if config.norm == "batchnorm":
        return BatchNorm(config.d_model, eps=config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)
