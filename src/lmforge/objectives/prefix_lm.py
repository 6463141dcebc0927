"""Prefix language modelling (UniLM, GLM): the model reads the prefix bidirectionally and
is trained to predict only the target part after it:

    L = −(1/N) Σ_{t ≥ p−1} log p(x_{t+1} | x_≤t)      p = the row's prefix length

Positions whose next token is still inside the prefix carry no loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def prefix_lm_loss(logits: torch.Tensor, targets: torch.Tensor, prefix: torch.Tensor
                   ) -> torch.Tensor:
    """logits (B, T, V); targets (B, T) = inputs shifted left; prefix (B,) lengths."""
    T = targets.shape[1]
    # target t is input position t + 1: it counts when t + 1 ≥ prefix
    scored = torch.arange(T, device=targets.device)[None, :] + 1 >= prefix[:, None]
    labels = targets.masked_fill(~scored, -100)
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
