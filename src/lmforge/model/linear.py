"""The linear layer every projection uses: y = x·Wᵀ + b, as `nn.Linear`, with a faster
product for a decode step of a few rows in fp32 on CPU.

Decoding a small batch multiplies 2–16 rows (one position each) by each weight matrix.
For that shape MKL's sgemm (what `F.linear` calls) is 1.2–3× slower than the transposed
product (W·xᵀ)ᵀ with the same weights (measured on SmolLM2's matrices, 2 threads: a batch-8
decode step 65 ms against 45 ms, batch 4 60 ms against 40 ms). bf16 is faster through
`F.linear`, so it keeps it.
The result equals `F.linear` up to floating-point summation order (a few 1e-5 in SmolLM2's
logits); prompts of any length keep `F.linear`, bit-identical to transformers.

Being an `nn.Linear`, a layer can still be wrapped or replaced by name (LoRA, quantization).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FEW_ROWS = range(2, 17)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
           ) -> torch.Tensor:
    rows = x.numel() // x.shape[-1]
    one_position = x.dim() < 3 or x.shape[-2] == 1  # a decode step, not a short prompt
    if (rows in FEW_ROWS and one_position and x.dtype == torch.float32
            and x.device.type == "cpu"):
        y = torch.mm(weight, x.reshape(rows, -1).t()).t()
        if bias is not None:
            y = y + bias
        return y.reshape(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
