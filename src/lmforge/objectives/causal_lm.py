"""Causal language modelling (next-token prediction):

    L = −(1/N) Σ_t log p(x_{t+1} | x_≤t)

the mean cross-entropy of every position's prediction of the token that follows it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits (B, T, V), targets (B, T) = the inputs shifted left by one."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
