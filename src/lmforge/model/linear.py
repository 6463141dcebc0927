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

Inference on more than one row (a batched decode step, a prefill) multiplies by a copy of
the weight that oneDNN has reordered once into its blocked layout (`packed`): a plain
weight is re-packed inside every call, which at 2–8 rows costs as much as the product.
Measured on SmolLM2's 30 layers (2 threads, AVX2 EPYC): 8 rows 52.7 → 34.7 ms, 2 rows
41.6 → 28.4 ms, 64 rows 142 → 108 ms; one row stays on the plain weight, whose matrix-vector
product is already at the memory-bandwidth floor. The copy costs the weights' size again in
memory (`LMFORGE_PACKED_WEIGHTS=0` turns it off) and is made again when the weight may have
changed: its version counter moved (`load_state_dict`, `copy_` under no_grad), its storage
moved, or any torch optimizer stepped (fused AdamW does not move version counters, so a
global step hook drops every packed copy). Writes through `.data` are not seen.

Under `torch.compile` (the compiled decode step, `lmforge.generate.compiled`) the product is
the custom op `lmforge::linear`: opaque to Inductor, which calls it as an external kernel
and so keeps oneDNN and the packed weights (Inductor cannot lower the oneDNN op on a weight
that is not a frozen constant, and its own fp32 product is MKL's).
"""

from __future__ import annotations

import os
import weakref

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
PACKED = ONEDNN and os.environ.get("LMFORGE_PACKED_WEIGHTS", "1") != "0"
PACK_ROWS = 8  # oneDNN's blocking hint: decode batches are a few rows
_packs: dict[int, tuple] = {}  # id(weight) → (version and address, packed)
_watched: set[int] = set()  # weights whose death removes their entry


def _forget(key: int) -> None:
    _packs.pop(key, None)
    _watched.discard(key)


def _forget_all(*_hook_args) -> None:
    _packs.clear()


register_optimizer_step_post_hook(_forget_all)


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


def packed(weight: nn.Parameter) -> torch.Tensor:
    """`weight` reordered into oneDNN's blocked layout, made once per version of it."""
    key = (weight._version, weight.data_ptr())
    entry = _packs.get(id(weight))
    if entry is None or entry[0] != key:
        if id(weight) not in _watched:
            _watched.add(id(weight))
            weakref.finalize(weight, _forget, id(weight))
        with torch.no_grad():
            entry = (key, torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_ROWS))
        _packs[id(weight)] = entry
    return entry[1]


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
           ) -> torch.Tensor:
    if (not ONEDNN or x.dtype != torch.float32 or x.device.type != "cpu"
            or torch.is_autocast_enabled("cpu")):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return OneDNNLinear.apply(x, weight, bias)
    if torch.compiler.is_compiling():
        return torch.ops.lmforge.linear(x, weight, bias)
    return inference_linear(x, weight, bias)


def inference_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                     ) -> torch.Tensor:
    """x·Wᵀ + b through oneDNN, without autograd; also the op `lmforge::linear`."""
    if (PACKED and isinstance(weight, nn.Parameter) and x.numel() >= 2 * x.shape[-1]
            and not weight.is_inference()):  # an inference tensor has no version to watch
        return _mm(x, packed(weight), bias)
    return _mm(x, weight, bias)


# A plain library op rather than `torch.library.custom_op`: the same opacity to torch.compile
# with less Python around each call (a decode step makes one per projection).
_lib = torch.library.Library("lmforge", "FRAGMENT")
_lib.define("linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor")
_lib.impl("linear", inference_linear, "CPU")


@torch.library.register_fake("lmforge::linear")
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
