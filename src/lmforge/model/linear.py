"""The linear layer every projection uses: y = x·Wᵀ + b, as `nn.Linear`, computed by oneDNN
for fp32 on CPU.

PyTorch sends fp32 `F.linear` on CPU to MKL's sgemm, and bf16 to oneDNN. On AMD CPUs MKL
takes slower code paths: measured on SmolLM2 (2 threads, AMD EPYC), oneDNN's fp32 product
makes a 512-token prefill 1.66× faster and a batch-1 decode step 37 → 22 ms, batch 8
43 → 31 ms. Its rounding differs from MKL's by a few ulps per dot product (logits stay
within 1e-4 of transformers, which the parity tests check).

Training goes through `OneDNNLinear`, whose backward computes both products with oneDNN too:

    ∂L/∂x = ∂L/∂y · W        ∂L/∂W = (∂L/∂y)ᵀ · x        ∂L/∂b = Σ_rows ∂L/∂y

Under autocast, for other dtypes and on other devices, `F.linear` is used as it is.
Being an `nn.Linear`, a layer can still be wrapped or replaced by name (LoRA, quantization).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _mm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
        ) -> torch.Tensor:
    """x·Wᵀ + b through oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _mm(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])  # (rows, out)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _mm(grad, weight.t().contiguous())
        if ctx.needs_input_grad[1] and not g.shape[0]:
            gw = torch.zeros_like(weight)  # no rows (an expert that got no token): oneDNN refuses
        elif ctx.needs_input_grad[1]:
            gw = _mm(g.t().contiguous(), x.reshape(-1, x.shape[-1]).t().contiguous())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(0)
        return gx, gw, gb


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
           ) -> torch.Tensor:
    if (not ONEDNN or x.dtype != torch.float32 or x.device.type != "cpu"
            or torch.is_autocast_enabled("cpu")):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return OneDNNLinear.apply(x, weight, bias)
    return _mm(x, weight, bias)


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
