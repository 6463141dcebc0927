"""Dequantization of GGUF (ggml) tensor types to torch float32, vectorised over blocks.

A quantized tensor is a flat run of blocks; each block holds `block_size` weights in
`type_size` bytes. Every kernel below takes the blocks as a uint8 tensor of shape
(n_blocks, type_size) and returns float32 weights of shape (n_blocks, block_size), with
whole-tensor torch ops (no Python loop over blocks).

Block layouts (ggml-common.h; `f16` is IEEE half, little-endian; q are unsigned codes):

    type  block bytes  layout                                   weight
    Q4_0  32    18     d:f16, qs[16] (4-bit)                    d * (q - 8)
    Q4_1  32    20     d:f16, m:f16, qs[16]                     d * q + m
    Q5_0  32    22     d:f16, qh[4] (bit 5), qs[16]             d * (q - 16)
    Q5_1  32    24     d:f16, m:f16, qh[4], qs[16]              d * q + m
    Q8_0  32    34     d:f16, qs[32] (int8)                     d * q
    Q2_K  256   84     scales[16], qs[64] (2-bit), d, dmin      d*sc*q - dmin*m  (16 groups of 16)
    Q3_K  256   110    hmask[32], qs[64], scales[12], d         d*(sc-32)*(q-4*!h)  (16 groups)
    Q4_K  256   144    d, dmin, scales[12] (6-bit), qs[128]     d*sc*q - dmin*m  (8 groups of 32)
    Q5_K  256   176    d, dmin, scales[12], qh[32], qs[128]     d*sc*q - dmin*m  (8 groups of 32)
    Q6_K  256   210    ql[128], qh[64], scales[16]:i8, d        d*sc*(q - 32)  (16 groups of 16)

Nibble order (Q4_0 .. Q5_1): element j < 16 is the low nibble of qs[j], element j >= 16 the
high nibble of qs[j - 16]; the 5th bit of element j is bit j of qh read as a little-endian
uint32. K-quants repeat the same idea per group of 32 (or 64/128) bytes: successive shifts
of the same bytes give successive groups of weights.

The arithmetic follows ggml's order of float32 operations, so results are bit-identical to
`gguf.quants.dequantize` (tests/test_quants.py checks every type).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from lmforge.errors import LmforgeError
from lmforge.interop.threads import single_threaded

QK_K = 256  # weights per K-quant super-block


def _f16(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The f16 at byte `start` of every block, as float32 of shape (n_blocks, 1)."""
    return blocks[:, start:start + 2].contiguous().view(torch.float16).float()


def _unpack(x: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """Split each byte into 8/bits codes of `bits` bits, low bits first, per run of `group` bytes.

    x: (n, m) uint8 → (n, m * 8 // bits) uint8. The bytes x[:, g*group:(g+1)*group] give
    8/bits consecutive runs of `group` codes: shift 0 first, then shift `bits`, and so on.
    """
    n, m = x.shape
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8).view(1, 1, -1, 1)
    codes = (x.view(n, m // group, 1, group) >> shifts) & ((1 << bits) - 1)  # (n, G, 8/bits, group)
    return codes.reshape(n, -1)


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    q = _unpack(b[:, 2:], 4, 16).to(torch.int8) - 8
    return _f16(b, 0) * q.float()


def _q4_1(b: torch.Tensor) -> torch.Tensor:
    q = _unpack(b[:, 4:], 4, 16).float()
    return _f16(b, 0) * q + _f16(b, 2)


def _q5_codes(qh: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    """5-bit codes of a Q5_0/Q5_1 block: low nibbles from qs, bit 4 from the 32 bits of qh."""
    return _unpack(qs, 4, 16) | (_unpack(qh, 1, 1) << 4)


def _q5_0(b: torch.Tensor) -> torch.Tensor:
    q = _q5_codes(b[:, 2:6], b[:, 6:]).to(torch.int8) - 16
    return _f16(b, 0) * q.float()


def _q5_1(b: torch.Tensor) -> torch.Tensor:
    q = _q5_codes(b[:, 4:8], b[:, 8:]).float()
    return _f16(b, 0) * q + _f16(b, 2)


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    return b[:, 2:].contiguous().view(torch.int8).float() * _f16(b, 0)


def _q2_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    scales = b[:, :16]  # low nibble: scale, high nibble: min, per group of 16
    d, dmin = _f16(b, 80), _f16(b, 82)
    dl = (d * (scales & 0xF).float()).view(n, 16, 1)
    ml = (dmin * (scales >> 4).float()).view(n, 16, 1)
    q = _unpack(b[:, 16:80], 2, 32).view(n, 16, 16).float()
    return (dl * q - ml).view(n, QK_K)


def _q3_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    # 16 6-bit scales: low 4 bits are the nibbles of bytes 0-7 (low nibbles first),
    # high 2 bits are the 2-bit fields of bytes 8-11; stored with an offset of 32.
    low = _unpack(b[:, 96:104], 4, 8)
    high = _unpack(b[:, 104:108], 2, 4)
    sc = (low | (high << 4)).to(torch.int8) - 32
    dl = (_f16(b, 108) * sc.float()).view(n, 16, 1)
    ql = _unpack(b[:, 32:96], 2, 32).view(n, 16, 16).to(torch.int8)
    hbit = _unpack(b[:, :32], 1, 32).view(n, 16, 16).to(torch.int8)
    q = ql - ((hbit ^ 1) << 2)  # the 4 is subtracted where the high-mask bit is 0
    return (dl * q.float()).view(n, QK_K)


def _k_scale_min(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eight 6-bit scales and mins of a Q4_K/Q5_K block from its 12 packed bytes.

    Bytes 0-3: scales 0-3 (low 6 bits), bytes 4-7: mins 0-3; their top 2 bits are the top
    bits of scales/mins 4-7, whose low 4 bits are the nibbles of bytes 8-11 (scale low, min high).
    """
    d, m, md = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=1)
    return sc.float(), mn.float()


def _k_affine(b: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """d*sc*q - dmin*m over the 8 groups of 32 of a Q4_K/Q5_K block; q: (n, 8, 32) float."""
    n = b.shape[0]
    sc, mn = _k_scale_min(b[:, 4:16])
    d = (_f16(b, 0) * sc).view(n, 8, 1)
    dm = (_f16(b, 2) * mn).view(n, 8, 1)
    return (d * q - dm).view(n, QK_K)


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    q = _unpack(b[:, 16:], 4, 32).view(-1, 8, 32).float()
    return _k_affine(b, q)


def _q5_k(b: torch.Tensor) -> torch.Tensor:
    q = _unpack(b[:, 48:], 4, 32) | (_unpack(b[:, 16:48], 1, 32) << 4)
    return _k_affine(b, q.view(-1, 8, 32).float())


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    sc = b[:, 192:208].contiguous().view(torch.int8).float()
    d = (_f16(b, 208) * sc).view(n, 16, 1)
    ql = _unpack(b[:, :128], 4, 64)
    qh = _unpack(b[:, 128:192], 2, 32)
    q = (ql | (qh << 4)).to(torch.int8) - 32
    return (d * q.view(n, 16, 16).float()).view(n, QK_K)


T = GGMLQuantizationType
KERNELS: dict[GGMLQuantizationType, Callable[[torch.Tensor], torch.Tensor]] = {
    T.Q4_0: _q4_0, T.Q4_1: _q4_1, T.Q5_0: _q5_0, T.Q5_1: _q5_1, T.Q8_0: _q8_0,
    T.Q2_K: _q2_k, T.Q3_K: _q3_k, T.Q4_K: _q4_k, T.Q5_K: _q5_k, T.Q6_K: _q6_k,
}
FLOATS = {T.F32: torch.float32, T.F16: torch.float16, T.BF16: torch.bfloat16}
SUPPORTED = tuple(sorted((*FLOATS, *KERNELS), key=int))

# Weights dequantized per kernel call: 2^16 (256 KB of float32) keeps the temporaries in cache
# and lets the allocator reuse them; one call per tensor was 2-5x slower (page faults).
_CHUNK_WEIGHTS = 1 << 16


def type_name(qtype: int) -> str:
    try:
        return GGMLQuantizationType(qtype).name
    except ValueError:
        return f"type id {qtype}"


def n_bytes(qtype: int, n_elements: int) -> int:
    """Bytes of a tensor of `n_elements` weights stored as `qtype` (0 when the type is unknown)."""
    try:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
    except (ValueError, KeyError):
        return 0
    return n_elements // block * size


@single_threaded()
def dequantize(raw: torch.Tensor, qtype: int, shape: tuple[int, ...], name: str = "tensor"
               ) -> torch.Tensor:
    """float32 tensor of torch `shape` from the raw uint8 bytes of a GGUF tensor of `qtype`."""
    if qtype not in FLOATS and qtype not in KERNELS:
        supported = ", ".join(t.name for t in SUPPORTED)
        raise LmforgeError(
            f"tensor {name!r} has GGUF type {type_name(qtype)}, which lmforge cannot dequantize; "
            f"supported types: {supported}. Re-quantize the model to one of them.")
    qtype = GGMLQuantizationType(qtype)
    numel = math.prod(shape)
    block, size = GGML_QUANT_SIZES[qtype]
    if numel % block:
        raise LmforgeError(f"tensor {name!r} has {numel} weights, not a multiple of the "
                           f"{qtype.name} block size {block}; the file is corrupt")
    if raw.numel() != numel // block * size:
        raise LmforgeError(f"tensor {name!r} of shape {tuple(shape)} as {qtype.name} needs "
                           f"{numel // block * size} bytes, got {raw.numel()}")
    if qtype in FLOATS:
        # copy=True: the result must not alias the memory-mapped file (F32 would otherwise)
        return raw.view(FLOATS[qtype]).to(torch.float32, copy=True).view(shape)
    blocks = raw.view(-1, size)
    out = torch.empty(blocks.shape[0], block, dtype=torch.float32)
    step = max(1, _CHUNK_WEIGHTS // block)
    for start in range(0, blocks.shape[0], step):  # a loop over chunks of blocks, not blocks
        out[start:start + step] = KERNELS[qtype](blocks[start:start + step])
    return out.view(shape)

