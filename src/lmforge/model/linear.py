"""The linear layer every projection uses: y = x·Wᵀ + b, as `nn.Linear`, computed by oneDNN
for fp32 inference on CPU.

PyTorch sends fp32 `F.linear` on CPU to MKL's sgemm, and bf16 to oneDNN. On AMD CPUs MKL
takes slower code paths: measured on SmolLM2 (2 threads, AMD EPYC), oneDNN's fp32 product
makes a 512-token prefill 1.66× faster and a batch-1 decode step 37 → 22 ms, batch 8
43 → 31 ms. Its rounding differs from MKL's by a few ulps per dot product (logits stay
within 1e-4 of transformers, which the parity tests check). Training (gradients needed),
other dtypes and devices use `F.linear`.

Being an `nn.Linear`, a layer can still be wrapped or replaced by name (LoRA, quantization).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
           ) -> torch.Tensor:
    if (ONEDNN and x.dtype == torch.float32 and x.device.type == "cpu"
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
