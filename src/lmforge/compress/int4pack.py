"""The CPU int4 kernel's weight layout, both ways: codes → packed by
`aten._convert_weight_to_int4pack_for_cpu`, and packed → codes again, exactly, so a layer
need hold only the packed form.

The conversion moves each 4-bit code q[r, c] (out × in, values 0..15) to one nibble of the
packed (out, in/2) bytes; where it goes depends on the CPU (PyTorch packs rows in blocks of
64 with AVX-512, 32 with AVX2, pairs of rows otherwise). Rather than copy those rules, the
inverse asks the conversion itself: it is a fixed permutation π of nibble positions, so
packing the base-16 digits of each element's flat index r·in + c, one digit per call,

    digit_k[r, c] = ⌊(r·in + c) / 16ᵏ⌋ mod 16,   k = 0 … ⌈log₁₆(out·in)⌉ − 1

and reading back what lands at each nibble position p gives π⁻¹(p) = Σ_k nibble_k(p)·16ᵏ,
the element stored at p. `order` checks that this is a permutation (every element once);
`unpack` is then one gather: q.flatten()[π⁻¹(p)] = nibble(p). Nibbles are read low first.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from lmforge.compress.schemes import unpack_int4
from lmforge.errors import LmforgeError
from lmforge.interop.threads import single_threaded

ROWS = 64  # the conversion packs blocks of 64 rows (AVX-512) or 32, each on its own


def pack(codes: torch.Tensor) -> torch.Tensor:
    """The kernel's packed (out, in/2) uint8 form of codes (out, in), values 0..15."""
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)


@single_threaded()  # small copies: a parallel region per piece waits on busy cores
def pack_stored(stored: torch.Tensor) -> torch.Tensor:
    """The kernel's form of stored codes (`schemes.pack_int4` bytes, (out, in/2)), ROWS rows
    at a time: each block of rows is packed into the same rows of the packed matrix, so the
    pieces make the whole (tests/test_quant_linear.py checks it); the int32 codes the
    conversion takes (8× the stored bytes) are made per piece, small temporaries the heap
    reuses rather than a hole per layer."""
    packed = torch.empty_like(stored)
    for start in range(0, stored.shape[0], ROWS):
        packed[start:start + ROWS] = pack(unpack_int4(stored[start:start + ROWS]))
    return packed


def nibbles(packed: torch.Tensor) -> torch.Tensor:
    """The packed bytes as a flat run of 4-bit values, the low nibble of each byte first."""
    flat = packed.reshape(-1)
    return torch.stack((flat & 15, flat >> 4), dim=1).reshape(-1)


@lru_cache(maxsize=8)  # a model has a handful of projection shapes; made on first use only
@single_threaded()
def order(out: int, cols: int) -> torch.Tensor:
    """π⁻¹: the flat index (int32) of the element the kernel stores at each nibble position
    of a packed (out, cols) matrix (module docstring)."""
    n = out * cols
    index = torch.arange(n, dtype=torch.int32)
    found = torch.zeros(n, dtype=torch.int32)
    shift = 0
    while (1 << shift) < n:
        digit = ((index >> shift) & 15).view(out, cols)
        found |= nibbles(pack(digit)).to(torch.int32) << shift
        shift += 4
    if not torch.equal(torch.bincount(found, minlength=n), torch.ones(n, dtype=torch.int64)):
        raise LmforgeError(f"PyTorch {torch.__version__}'s int4 weight packing is not a "
                           "permutation of the codes, so an int4 layer cannot give its codes "
                           "back to be saved or dequantized; use a PyTorch release whose "
                           "packing is (2.13 is)")
    return found


def unpack(packed: torch.Tensor, out: int, cols: int) -> torch.Tensor:
    """The codes (out, cols), uint8 0..15, that `pack` turned into `packed` (on the CPU)."""
    codes = torch.empty(out * cols, dtype=torch.uint8)
    codes[order(out, cols)] = nibbles(packed.cpu())
    return codes.view(out, cols)
