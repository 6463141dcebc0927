"""The linear layer every projection uses: y = x·Wᵀ + b, as `nn.Linear`, computed by oneDNN
for fp32 on CPU, with named output slices and an optional packed copy of the weight.

PyTorch sends fp32 `F.linear` on CPU to MKL's sgemm, and bf16 to oneDNN. On AMD CPUs MKL
takes slower code paths: measured on SmolLM2 (2 threads, AMD EPYC), oneDNN's fp32 product
makes a 512-token prefill 1.66× faster and a batch-1 decode step 37 → 22 ms, batch 8
43 → 31 ms. Its rounding differs from MKL's by a few ulps per dot product (logits stay
within 1e-4 of transformers, which the parity tests check).

Training goes through `OneDNNLinear`, whose backward computes both products with oneDNN too:

    ∂L/∂x = ∂L/∂y · W        ∂L/∂W = (∂L/∂y)ᵀ · x        ∂L/∂b = Σ_rows ∂L/∂y

Under autocast, for other dtypes and on other devices, `F.linear` is used as it is.

Slices: a fused projection declares the row ranges of its output by name (`attn.qkv`: q, k,
v; a gated `ffn.up`: gate, up; `cross_attn.kv`: k, v), so a wrapper that replaces it from
outside (`model/surgery.py`) knows which output columns belong to which projection; a plain
projection has one slice, "all".

Packing (an explicit step for inference, `pack_for_inference`): inference on more than one
row (a batched decode step, a prefill) multiplies by a copy of the weight that oneDNN has
reordered once into its blocked layout: a plain weight is re-packed inside every call,
which at 2–8 rows costs as much as the product. Measured on SmolLM2's 30 layers (2 threads,
AVX2 EPYC): 8 rows 52.7 → 34.7 ms, 2 rows 41.6 → 28.4 ms, 64 rows 142 → 108 ms; one row
stays on the plain weight, whose matrix-vector product is already at the memory-bandwidth
floor. The copy costs the weights' size again in memory (`LMFORGE_PACKED_WEIGHTS=0` turns
packing off). The rule that keeps it from going stale:
- it is dropped by `train()`, by moving or casting the module (`.to`, `.float`, …), by
  `unpack()` and by `surgery.replace_linears` (on the replaced module and its replacement);
- before each use it is checked against the weight, and made again when it differs: the
  weight's version counter (`copy_` or any in-place op under no_grad, `load_state_dict`),
  its storage address (`weight.data = …`, `.to`), and a probe of ≈ one element per row on
  a wrapped diagonal compared bit for bit. A write through `.data` (or a fused optimizer
  step) moves no version counter: the probe is what sees it. LoRA merges, optimizer steps,
  reloads and rewritten rows (new token embeddings) change probed elements; a write confined
  to elements off the probe is not seen: call `pack_for_inference()` again after one.
The check costs about 1 µs per call (a few hundred per decode step), under 1% of a step.
Copies and pickles of a module start unpacked (the packed tensor has no storage to copy).

Under `torch.compile` (the compiled decode step, `lmforge.generate.compiled`) the product is
the custom op `lmforge::linear`: opaque to Inductor, which calls it as an external kernel
and so keeps oneDNN and the packed weights (Inductor cannot lower the oneDNN op on a weight
that is not a frozen constant, and its own fp32 product is MKL's). The op receives only
tensors, so the packed copy hangs on the weight itself (an attribute, not a global table).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import LmforgeError

ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
PACKED = ONEDNN and os.environ.get("LMFORGE_PACKED_WEIGHTS", "1") != "0"
PACK_ROWS = 8  # oneDNN's blocking hint: decode batches are a few rows
PACK_ATTR = "_lmforge_pack"  # where a weight keeps its packed copy


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


class Pack:
    """A weight reordered into oneDNN's blocked layout, with what it was made from."""

    __slots__ = ("packed", "ptr", "probe", "seen", "version")

    def __init__(self, weight: torch.Tensor) -> None:
        self.refresh(weight)

    def refresh(self, weight: torch.Tensor) -> None:
        w = weight.detach()
        # every (in+1)-th element: column r mod in of (nearly) every row r, read as int32 so
        # the comparison is bitwise (NaN equals itself, -0.0 differs from 0.0)
        self.probe = w.reshape(-1).view(torch.int32)[:: w.shape[1] + 1]
        self.seen = self.probe.clone()
        self.version, self.ptr = weight._version, weight.data_ptr()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w, PACK_ROWS)

    def current(self, weight: torch.Tensor) -> torch.Tensor:
        """The packed weight, made again first if the weight changed since."""
        if (weight._version != self.version or weight.data_ptr() != self.ptr
                or not torch.equal(self.probe, self.seen)):
            self.refresh(weight)
        return self.packed

    def __reduce__(self):
        return type(None), ()  # a copied or pickled weight starts unpacked


def pack(weight: torch.Tensor) -> bool:
    """Give `weight` a packed copy for multi-row inference; False where packing does not
    apply (packing off, not fp32 on CPU, an inference tensor: it has no version counter)."""
    if not (PACKED and weight.dtype == torch.float32 and weight.device.type == "cpu"
            and weight.dim() == 2 and weight.is_contiguous() and not weight.is_inference()):
        return False
    existing = getattr(weight, PACK_ATTR, None)
    if existing is not None:  # a weight shared by several models (adapters) is packed once
        existing.current(weight)
    else:
        setattr(weight, PACK_ATTR, Pack(weight))
    return True


def unpack(weight: torch.Tensor) -> None:
    """Drop `weight`'s packed copy, if any."""
    if getattr(weight, PACK_ATTR, None) is not None:
        delattr(weight, PACK_ATTR)


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
    if x.numel() >= 2 * x.shape[-1]:
        packed = getattr(weight, PACK_ATTR, None)
        if packed is not None:
            return _mm(x, packed.current(weight), bias)
    return _mm(x, weight, bias)


# A plain library op rather than `torch.library.custom_op`: the same opacity to torch.compile
# with less Python around each call (a decode step makes one per projection).
_lib = torch.library.Library("lmforge", "FRAGMENT")
_lib.define("linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor")
_lib.impl("linear", inference_linear, "CPU")


@torch.library.register_fake("lmforge::linear")
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def named_slices(sizes: Mapping[str, int], total: int) -> dict[str, slice]:
    """{"q": 64, "k": 16, "v": 16} → {"q": slice(0, 64), "k": slice(64, 80), …}: consecutive
    row ranges, which must cover exactly `total` rows."""
    if sum(sizes.values()) != total or any(n <= 0 for n in sizes.values()):
        raise LmforgeError(f"output slices {dict(sizes)} must be positive and sum to the "
                           f"{total} output features of the projection")
    out, start = {}, 0
    for name, n in sizes.items():
        out[name], start = slice(start, start + n), start + n
    return out


class PackedWeights:
    """What a module with a packable weight does about it (see the module docstring): pack
    on request, drop the copy on `train()` and on moving or casting the module."""

    weight: torch.Tensor

    def pack_for_inference(self) -> bool:
        """Pack the weight for multi-row inference; False where packing does not apply."""
        return pack(self.weight)

    def unpack(self) -> None:
        unpack(self.weight)

    def train(self, mode: bool = True):
        if mode:
            self.unpack()
        return super().train(mode)

    def _apply(self, fn, recurse: bool = True):
        self.unpack()
        return super()._apply(fn, recurse)


class Linear(PackedWeights, nn.Linear):
    """`nn.Linear` computed by `linear`; `slices` names row ranges of the output (sizes in
    order, summing to out_features), one slice "all" when not given."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 slices: Mapping[str, int] | None = None, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.slices = named_slices(slices or {"all": out_features}, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def pack_for_inference(model: nn.Module) -> int:
    """Pack every packable weight of `model` (call once after loading, for inference);
    the number of weights packed."""
    return sum(bool(m.pack_for_inference()) for m in model.modules()
               if isinstance(m, PackedWeights))


def unpack_all(model: nn.Module) -> None:
    """Drop every packed copy held by `model`'s modules."""
    for m in model.modules():
        if isinstance(m, PackedWeights):
            m.unpack()
