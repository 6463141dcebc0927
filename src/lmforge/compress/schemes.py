"""Weight quantization schemes: the number grids, their parameters, and round-to-nearest.

A scheme maps a float weight matrix W (out × in) to integer or fp8 codes q and scales s
(and, for int4, zero points z) from which W is approximately recovered:

    int8      symmetric, per output channel      s_r = max_j |W_rj| / 127
              q = clamp(round(W / s), -127, 127)            Ŵ = q · s
    int8-gG   the same per group of G inputs (GGUF's Q8_0 is int8-g32)
    int4-gG   asymmetric, per group of G inputs  s = (max − min) / 15 over the group
              q = clamp(round((W − min) / s), 0, 15)        Ŵ = (q − 8) · s + z,  z = min + 8s
    fp8-e4m3  per output channel (or `-tensor`)  s = max |W| / 448   (e5m2: / 57344)
    fp8-e5m2  q = fp8(W / s)                                Ŵ = float(q) · s
    w8a8      int8 weights as above; activations quantized per token at run time

int4 keeps PyTorch's convention (`_weight_int4pack_mm_for_cpu`, torchao): the zero point is
a float offset applied after centring the codes on 8, so a scale and zero pair feeds the
kernel as it is. Round to nearest bounds each element's error by s/2 for the integer grids;
fp8 has a relative error of at most 2^-4 (e4m3) or 2^-3 (e5m2) for normal values.

The block functions (`fit`, `encode`, `decode`) act on one group of columns at a time:
GPTQ (`compress/gptq.py`) calls them column block by column block on weights it has
updated, and `rtn` calls them on every group of the original weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from lmforge.errors import LmforgeError

FP8_DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
GROUPS = (32, 64, 128)
_NAMES = re.compile(r"^(?:(int8|w8a8|int4)(?:-g(\d+))?|fp8-(e4m3|e5m2)(-tensor)?)$")


@dataclass(frozen=True)
class Scheme:
    """One quantization scheme; `Scheme.parse("int4-g64")`, `scheme.name` gives it back."""

    kind: str  # "int8", "int4" or "fp8"
    group_size: int | None = None  # inputs per (scale, zero) pair; None: the whole row
    fp8_format: str | None = None  # fp8 only: "e4m3" or "e5m2"
    per_channel: bool = True  # fp8: one scale per output channel, else one per tensor
    dynamic_activations: bool = False  # W8A8: int8 activations, per token, at run time

    @staticmethod
    def parse(text: str) -> Scheme:
        match = _NAMES.match(text.strip().lower())
        if match is None:
            raise LmforgeError(f"unknown quantization scheme {text!r}; use int8, w8a8, "
                               "int4-g32, int4-g64, int4-g128, fp8-e4m3, fp8-e5m2 (add "
                               "-tensor to an fp8 scheme for one scale per tensor, -gG to "
                               "int8 for one scale per group of G inputs)")
        name, group, fp8, tensor = match.groups()
        if fp8:
            return Scheme("fp8", fp8_format=fp8, per_channel=tensor is None)
        size = int(group) if group else (32 if name == "int4" else None)
        if size is not None and (size not in GROUPS or name == "w8a8"):
            raise LmforgeError(f"{text!r}: groups of {', '.join(map(str, GROUPS))} inputs "
                               "are supported for int4 and int8 (w8a8 is per channel)")
        if name == "int4":
            return Scheme("int4", group_size=size)
        return Scheme("int8", group_size=size, dynamic_activations=name == "w8a8")

    @property
    def name(self) -> str:
        if self.kind != "fp8":
            base = "w8a8" if self.dynamic_activations else self.kind
            return base + (f"-g{self.group_size}" if self.group_size else "")
        return f"fp8-{self.fp8_format}" + ("" if self.per_channel else "-tensor")

    @property
    def bits(self) -> int:
        return 4 if self.kind == "int4" else 8

    def group_for(self, in_features: int) -> int:
        """Columns sharing one set of parameters: the group, or the whole row."""
        if self.group_size is None:
            return in_features
        if in_features % self.group_size:
            raise LmforgeError(f"{in_features} input features do not split into groups of "
                               f"{self.group_size}; pick a group size that divides it")
        return self.group_size


@dataclass
class QuantizedWeight:
    """Codes and parameters of one weight matrix (out × in).

    int8: codes int8 (out, in), scale (out,) or, with groups, (out, in / G). int4: codes
    uint8 0..15 (out, in), unpacked (`pack_int4` for storage), scale and zero (out, in / G).
    fp8: codes float8 (out, in), scale (out,) or (1,).
    """

    scheme: Scheme
    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None = None

    def dequantize(self) -> torch.Tensor:
        """Ŵ in float32."""
        group = self.scheme.group_for(self.codes.shape[1])
        scale, zero = _per_column(self.scale, group), None
        if self.zero is not None:
            zero = _per_column(self.zero, group)
        return decode(self.scheme, self.codes, scale, zero)


def _per_column(params: torch.Tensor, group: int) -> torch.Tensor:
    """(out, n_groups) or (out,) or (1,) parameters → broadcastable to (out, in)."""
    if params.dim() == 1:
        return params.float().view(-1, 1)
    return params.float().repeat_interleave(group, dim=1)


def fit(scheme: Scheme, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale (out, 1) and zero (out, 1) or None for a block of columns w (out, k) treated as
    one group; for fp8 per tensor the scale is (1, 1)."""
    w = w.float()
    if scheme.kind == "int4":
        lo, hi = w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True)
        scale = ((hi - lo) / 15).clamp_min(torch.finfo(torch.float32).tiny)
        return scale, lo + 8 * scale
    amax = w.abs().amax(dim=1, keepdim=True) if scheme.per_channel else w.abs().amax().view(1, 1)
    top = 127.0 if scheme.kind == "int8" else torch.finfo(FP8_DTYPES[scheme.fp8_format]).max
    return (amax / top).clamp_min(torch.finfo(torch.float32).tiny), None


def encode(scheme: Scheme, w: torch.Tensor, scale: torch.Tensor,
           zero: torch.Tensor | None) -> torch.Tensor:
    """Codes of w under parameters broadcastable to it (round to nearest)."""
    w = w.float()
    if scheme.kind == "int8":
        return torch.clamp(torch.round(w / scale), -127, 127).to(torch.int8)
    if scheme.kind == "int4":
        return torch.clamp(torch.round((w - zero) / scale) + 8, 0, 15).to(torch.uint8)
    return (w / scale).to(FP8_DTYPES[scheme.fp8_format])


def decode(scheme: Scheme, codes: torch.Tensor, scale: torch.Tensor,
           zero: torch.Tensor | None) -> torch.Tensor:
    """Ŵ (float32) from codes and parameters broadcastable to them."""
    if scheme.kind == "int4":
        return (codes.float() - 8) * scale + zero
    return codes.float() * scale


def rtn(scheme: Scheme, weight: torch.Tensor) -> QuantizedWeight:
    """Round-to-nearest quantization of a whole (out × in) weight, group by group."""
    out, cols = weight.shape
    group = scheme.group_for(cols)
    blocks = weight.float().reshape(out * (cols // group), group)  # one row per group
    scale, zero = fit(scheme, blocks)  # fp8 per tensor: fit takes the amax of all blocks
    codes = encode(scheme, blocks, scale, zero).reshape(out, cols)
    if scheme.kind == "int4":
        return QuantizedWeight(scheme, codes, scale.view(out, -1), zero.view(out, -1))
    if scheme.group_size:
        return QuantizedWeight(scheme, codes, scale.view(out, -1))
    return QuantizedWeight(scheme, codes, scale.reshape(-1))


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """(out, in) uint8 codes 0..15 → (out, in / 2) bytes: column 2j in the low nibble,
    column 2j + 1 in the high nibble."""
    if codes.shape[-1] % 2:
        raise LmforgeError("int4 packing needs an even number of columns")
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_int4`."""
    return torch.stack((packed & 0x0F, packed >> 4), dim=-1).flatten(-2)
