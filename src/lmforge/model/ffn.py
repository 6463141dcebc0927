"""Position-wise feed-forward layers, chosen by `ModelConfig.mlp`.

Plain:  FFN(x) = W_down · act(W_up · x)
Gated (Shazeer, 2020, "GLU Variants Improve Transformer"):
        FFN(x) = W_down · (act(W_gate · x) ⊙ (W_up · x))
SwiGLU uses act = SiLU, GeGLU act = GELU. The gate and up projections are one matrix
`up` of 2·d_ff rows ([gate; up]) so that decoding reads them in a single matmul.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.config import ModelConfig
from lmforge.model.linear import Linear

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "swiglu": F.silu,
    "geglu": F.gelu,
    "geglu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # T5 v1.1's gated-gelu
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gated = config.gated
        self.act = ACTIVATIONS[config.mlp]
        n_up = 2 * config.d_ff if self.gated else config.d_ff
        self.up = Linear(config.d_model, n_up, bias=config.bias,
                         slices={"gate": config.d_ff, "up": config.d_ff} if self.gated else None)
        self.down = Linear(config.d_ff, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            return self.down(self.act(gate) * up)
        return self.down(self.act(h))
