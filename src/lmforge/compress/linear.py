"""`QuantLinear`: a projection whose weight is held quantized (`compress/schemes.py`), y = x·Ŵᵀ + b.

Each scheme runs on the fastest product this PyTorch has for it; `module.kernel` names it:

    int8        "int8pack_mm"   aten._weight_int8pack_mm(x, q, s): x·qᵀ·diag(s), int8 codes read
                                as they are (a quarter of fp32's bytes per decode step)
    int4-gG     "int4pack_mm"   aten._weight_int4pack_mm_for_cpu(x, packed, G, [s; z]):
                                x·((q − 8)·s + z)ᵀ, the codes reordered once into the kernel's
                                layout (out_features a multiple of 16; else "dequant_mm"),
                                [s; z] held in bf16
    w8a8        "int_mm"        per token t: s_t = max_j |x_tj| / 127, x̂ = round(x / s_t);
                                y = (x̂·qᵀ) · s_t · s_r, the integer product by torch._int_mm
                                (int32 accumulation)
    int8-gG     "dequant_mm"    Ŵ = q·s made per call in x's dtype, then x·Ŵᵀ
    fp8         "dequant_mm"    the same on CPU; on a CUDA GPU with fp8 (compute capability ≥
                "scaled_mm"     8.9) torch._scaled_mm of e4m3 activations, scaled per token,
                                with the fp8 weight, scaled per channel

Elsewhere than on CPU the int8 and int4 schemes also take "dequant_mm".

Both packed kernels take fp32 activations in bf16 and give their output back in fp32: their
vectorised code is for bf16 (and fp16) activations only, and fp32 runs a scalar loop. On a
1536 × 576 matrix-vector product (AVX-512 EPYC, one thread) fp32 activations took 2.7 ms
(int8) and 6.2 ms (int4), bf16 ones 0.21 and 0.06 ms, against 0.34 ms for the fp32 product
of the float weight. The kernels accumulate in fp32; the rounding of x and of the output to
bf16 (relative 2⁻⁹) is small beside the weights' own (int8: up to s/2 per element).

The state dict holds only what the scheme stores: `codes` (int8, fp8, or int4 packed two per
byte by `pack_int4`), `scale`, `zero` (int4) and `bias`. An "int4pack_mm" layer holds its codes
once, in the kernel's own layout: at load (`init_buffers`) the stored codes become the buffer
`int4_packed` and the kernel's [scale; zero] table `scales_zeros`, both kept out of the state
dict, and the stored codes are dropped; saving gives them back exactly, unpacked by the
kernel's own permutation (`compress/int4pack.py`), so a checkpoint does not depend on the
kernel's layout and save → load → save writes the same bytes. The fp32 scale and zero stay
(the bf16 table rounds them). Off the CPU the layer holds the stored codes again. Casting
the module (`.to(torch.bfloat16)`) casts scales, zeros and bias, never the codes (fp8 codes
keep their format: the cast to bf16 and back is exact for both fp8 formats).

Gradients flow to the input (LoRA on a frozen quantized base): ∂L/∂x = ∂L/∂y · Ŵ, with Ŵ
dequantized in the backward pass; W8A8 rounds activations in the forward pass only (the
straight-through estimator: the rounding's derivative taken as 1). The codes get no gradient.

Under `torch.compile` (the compiled decode step) the packed products are the custom ops
`lmforge::int8pack_mm` and `lmforge::int4pack_mm`, opaque to Inductor, which calls them as
external kernels (its own lowering of `_weight_int8pack_mm` failed on a fused bf16 input);
the elementwise work elsewhere (W8A8's activation rounding, the dequantization) is fused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.compress import int4pack
from lmforge.compress.schemes import (
    FP8_DTYPES,
    QuantizedWeight,
    Scheme,
    decode,
    pack_int4,
    unpack_int4,
)

INT4_ROWS = 16  # the CPU int4 kernel packs output rows in blocks of 16
ALIGN = 64  # bytes: the alignment of PyTorch's CPU allocations


def _scaled_mm_available(device: torch.device) -> bool:
    return (device.type == "cuda" and hasattr(torch, "_scaled_mm")
            and torch.cuda.get_device_capability(device) >= (8, 9))


def choose_kernel(scheme: Scheme, out_features: int, device: torch.device) -> str:
    """The product a layer of this scheme and size runs on `device` (module docstring)."""
    if scheme.kind == "fp8":
        return "scaled_mm" if _scaled_mm_available(device) else "dequant_mm"
    if device.type != "cpu" or scheme.group_size is not None and scheme.kind == "int8":
        return "dequant_mm"
    if scheme.dynamic_activations:
        return "int_mm"
    if scheme.kind == "int8":
        return "int8pack_mm"
    return "int4pack_mm" if out_features % INT4_ROWS == 0 else "dequant_mm"


class QuantLinear(nn.Module):
    """y = x·Ŵᵀ + b with Ŵ held quantized under `scheme`; `slices`: the named output rows of
    the projection it replaces (`model/surgery.py`), so LoRA can wrap it."""

    def __init__(self, scheme: Scheme, in_features: int, out_features: int, bias: bool = True,
                 slices: dict[str, slice] | None = None) -> None:
        super().__init__()
        self.scheme, self.in_features, self.out_features = scheme, in_features, out_features
        self.slices = dict(slices or {"all": slice(0, out_features)})
        groups = in_features // scheme.group_for(in_features)
        if scheme.kind == "fp8":
            shape, codes = ((out_features,) if scheme.per_channel else (1,)), \
                FP8_DTYPES[scheme.fp8_format]
        else:
            shape, codes = ((out_features, groups) if scheme.group_size else (out_features,)), \
                torch.int8
        # the scale is registered first: LoRA takes its dtype from the first float tensor
        self.register_buffer("scale", torch.empty(shape))
        if scheme.kind == "int4":
            self.register_buffer("zero", torch.empty(shape))
            self.register_buffer("codes", torch.empty(out_features, in_features // 2,
                                                      dtype=torch.uint8))
        else:
            self.register_buffer("codes", torch.empty(out_features, in_features, dtype=codes))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.kernel = choose_kernel(scheme, out_features, self.scale.device)

    @classmethod
    def from_weight(cls, weight: QuantizedWeight, bias: torch.Tensor | None = None,
                    slices: dict[str, slice] | None = None) -> QuantLinear:
        """The layer holding `weight` (codes as `schemes.rtn` or GPTQ gives them)."""
        out_features, in_features = weight.codes.shape
        layer = cls(weight.scheme, in_features, out_features, bias is not None, slices)
        codes = pack_int4(weight.codes) if weight.scheme.kind == "int4" else weight.codes
        layer.codes = codes.clone()
        layer.scale = weight.scale.float().reshape(layer.scale.shape).clone()
        if weight.zero is not None:
            layer.zero = weight.zero.float().clone()
        if bias is not None:
            layer.bias = nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        layer.init_buffers()
        return layer

    def init_buffers(self) -> None:
        """The kernel's forms of the stored tensors (after a load onto the meta device too)."""
        self._hold_kernel_forms()
        if self.kernel == "int4pack_mm":
            # it reads only the buffers just made; scale and zero may stay views of a
            # loaded file (a copy would hold them twice while the file stays mapped)
            return
        for name in ("codes", "scale", "zero"):
            tensor = getattr(self, name, None)
            if tensor is not None and tensor.data_ptr() % ALIGN:
                # safetensors places tensors 8-byte aligned; the int8 kernel's bf16 path
                # reads 64-byte aligned vectors (it crashed on such codes)
                setattr(self, name, tensor.clone())

    def _hold_kernel_forms(self) -> None:
        """Pick the device's product and hold the codes in the form it reads: the int4
        kernel's layout (module docstring) or the stored codes."""
        self.kernel = choose_kernel(self.scheme, self.out_features, self.scale.device)
        packed = "int4_packed" in self._buffers
        if self.kernel == "int4pack_mm" and not packed:
            self.register_buffer("int4_packed", int4pack.pack_stored(self.codes),
                                 persistent=False)
            # [s; z] as (in/G, out, 2), the kernel's table
            self.register_buffer("scales_zeros", torch.stack((self.scale, self.zero), -1)
                                 .transpose(0, 1).to(torch.bfloat16).contiguous(),
                                 persistent=False)
            del self._buffers["codes"]
        elif self.kernel != "int4pack_mm" and packed:
            self._hold_stored_codes()

    def _hold_stored_codes(self) -> None:
        """Trade the int4 kernel's layout for the stored codes (a move off the CPU, a load)."""
        self.register_buffer("codes", self.stored_codes())
        del self._buffers["int4_packed"], self._buffers["scales_zeros"]

    def stored_codes(self) -> torch.Tensor:
        """The codes as the state dict holds them (int4: two per byte, `pack_int4`)."""
        if "codes" in self._buffers:
            return self.codes
        packed = self.int4_packed
        shape = (self.out_features, self.in_features // 2)
        if packed.is_meta:
            return torch.empty(shape, dtype=torch.uint8, device="meta")
        codes = int4pack.unpack(packed, self.out_features, self.in_features)
        return pack_int4(codes).to(packed.device)

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if "codes" not in self._buffers:
            destination[prefix + "codes"] = self.stored_codes()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        if "codes" not in self._buffers:  # a load into a layer holding the kernel's layout
            self._hold_stored_codes()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if not self.codes.is_meta:
            self.init_buffers()

    def quantized_weight(self) -> QuantizedWeight:
        """The stored weight as a `QuantizedWeight` (int4 codes unpacked)."""
        if "int4_packed" in self._buffers:
            codes = int4pack.unpack(self.int4_packed, self.out_features, self.in_features)
        elif self.scheme.kind == "int4":
            codes = unpack_int4(self.codes)
        else:
            codes = self.codes
        zero = self.zero if self.scheme.kind == "int4" else None
        return QuantizedWeight(self.scheme, codes, self.scale, zero)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Ŵ (out, in), from codes viewed as (out, groups, G) and parameters broadcast over
        each group (no (out, in) copy of the parameters, as `QuantizedWeight.dequantize`
        makes: this runs on every call of a "dequant_mm" layer)."""
        q = self.quantized_weight()
        out, cols = q.codes.shape
        codes = q.codes.reshape(out, -1, self.scheme.group_for(cols))
        scale = q.scale.float().reshape(q.scale.shape[0], -1, 1)
        zero = None if q.zero is None else q.zero.float().reshape(out, -1, 1)
        return decode(self.scheme, codes, scale, zero).reshape(out, cols).to(dtype)

    def _apply(self, fn, recurse: bool = True):
        kept = {n: t.dtype for n, t in self.named_buffers(recurse=False)
                if n in ("codes", "scales_zeros")}
        super()._apply(fn, recurse)
        for name, dtype in kept.items():  # a cast of the module leaves these formats
            setattr(self, name, getattr(self, name).to(dtype))
        self._hold_kernel_forms()  # a move picks the device's product
        return self

    def product(self, x: torch.Tensor) -> torch.Tensor:
        """x·Ŵᵀ for x (rows, in), by `self.kernel`."""
        if self.kernel == "int8pack_mm":
            return torch.ops.lmforge.int8pack_mm(x, self.codes, self.scale)
        if self.kernel == "int4pack_mm":
            return torch.ops.lmforge.int4pack_mm(x, self.int4_packed, self.scheme.group_size,
                                                 self.scales_zeros)
        if self.kernel == "int_mm":
            return w8a8_product(x, self.codes, self.scale)
        if self.kernel == "scaled_mm":
            return fp8_scaled_product(x, self.codes, self.scale)
        return F.linear(x, self.dequantize(x.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if torch.is_grad_enabled() and x.requires_grad:
            y = QuantProduct.apply(rows, self)
        else:
            y = self.product(rows)
        y = y.view(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"scheme={self.scheme.name}, kernel={self.kernel}, bias={self.bias is not None}")


def _kernel_input(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16) if x.dtype == torch.float32 else x  # module docstring


def int8pack_mm(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x·(q·diag(s))ᵀ by `aten._weight_int8pack_mm`, fp32 activations in bf16; the op
    `lmforge::int8pack_mm`."""
    xk = _kernel_input(x)
    return torch.ops.aten._weight_int8pack_mm(xk, codes, scale.to(xk.dtype)).to(x.dtype)


def int4pack_mm(x: torch.Tensor, packed: torch.Tensor, group_size: int,
                scales_zeros: torch.Tensor) -> torch.Tensor:
    """x·((q − 8)·s + z)ᵀ by `aten._weight_int4pack_mm_for_cpu`, fp32 activations in bf16;
    the op `lmforge::int4pack_mm`."""
    xk = _kernel_input(x)
    return torch.ops.aten._weight_int4pack_mm_for_cpu(
        xk, packed, group_size, scales_zeros.to(xk.dtype)).to(x.dtype)


# Opaque ops for torch.compile, as `lmforge::linear` in model/linear.py: Inductor's own
# lowering of the aten int8 product fails on an input it has fused (the bf16 cast), and an
# external kernel is all either product needs to be
_lib = torch.library.Library("lmforge", "FRAGMENT")
_lib.define("int8pack_mm(Tensor x, Tensor codes, Tensor scale) -> Tensor")
_lib.define("int4pack_mm(Tensor x, Tensor packed, int group_size, Tensor scales_zeros) -> Tensor")
_lib.impl("int8pack_mm", int8pack_mm, "CPU")
_lib.impl("int4pack_mm", int4pack_mm, "CPU")


@torch.library.register_fake("lmforge::int8pack_mm")
def _(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], codes.shape[0])


@torch.library.register_fake("lmforge::int4pack_mm")
def _(x: torch.Tensor, packed: torch.Tensor, group_size: int, scales_zeros: torch.Tensor
      ) -> torch.Tensor:
    return x.new_empty(x.shape[0], scales_zeros.shape[1])


class QuantProduct(torch.autograd.Function):
    """x·Ŵᵀ with ∂L/∂x = ∂L/∂y·Ŵ (Ŵ dequantized in the backward pass; module docstring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: QuantLinear) -> torch.Tensor:
        ctx.layer = layer
        return layer.product(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad @ ctx.layer.dequantize(grad.dtype), None


def row_scales(x: torch.Tensor, top: float) -> torch.Tensor:
    """s_t = max_j |x_tj| / top per row t (token), (rows, 1) in fp32."""
    return (x.float().abs().amax(dim=1, keepdim=True) / top).clamp_min(
        torch.finfo(torch.float32).tiny)


def w8a8_product(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(x̂·qᵀ)·s_t·s_r with x̂ = round(x / s_t), s_t = max_j |x_tj| / 127 per row (token)."""
    s_t = row_scales(x, 127)
    xq = torch.clamp(torch.round(x.float() / s_t), -127, 127).to(torch.int8)
    acc = torch._int_mm(xq, codes.t())  # (rows, out) int32: exact up to 2^31 / 127² ≈ 133k inputs
    return (acc.float() * s_t * scale.float()).to(x.dtype)


def fp8_scaled_product(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x·Ŵᵀ on fp8 tensor cores: x scaled per row into e4m3, times the fp8 weight (torch._scaled_mm
    wants the second operand column-major: the transposed row-major weight is)."""
    s_t = row_scales(x, torch.finfo(torch.float8_e4m3fn).max)
    xq = (x.float() / s_t).to(torch.float8_e4m3fn)
    s_w = scale.float().expand(codes.shape[0]).reshape(1, -1).contiguous()
    y = torch._scaled_mm(xq, codes.t(), scale_a=s_t, scale_b=s_w, out_dtype=torch.bfloat16)
    return y.to(x.dtype)
