"""A memory-mapped reader of the GGUF container format (versions 2 and 3, little-endian).

Layout (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md):

    magic "GGUF" | version:u32 | n_tensors:u64 | n_kv:u64
    n_kv ×      key:str | type:u32 | value          (str = len:u64 + UTF-8 bytes)
    n_tensors × name:str | n_dims:u32 | dims:u64[n_dims] | type:u32 | offset:u64
    padding to `general.alignment` (default 32) | tensor data (offsets relative to here)

Value types: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool, 8 str,
9 array (item type:u32 + count:u64 + items), 10 u64, 11 i64, 12 f64.

GGUF lists dims fastest-varying first, so a torch shape is the dims reversed: a matrix
with dims [576, 49152] is the (49152, 576) weight of 49152 rows.

Design choices: the header is parsed with `struct` straight from the map (SmolLM2's 49,152
tokens and 48,900 merges take ~0.06 s; `gguf.GGUFReader` spends ~1.8 s on per-field arrays);
tensor bytes are never read until asked for; every bound is checked, so a truncated or
corrupt file is an LmforgeError naming the file, never a struct.error or a segfault.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmforge.errors import LmforgeError
from lmforge.interop import quants

MAGIC = b"GGUF"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class _Corrupt(Exception):
    """Internal: the header does not parse; turned into an LmforgeError naming the file."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # torch order: GGUF dims reversed
    qtype: int  # ggml type id (gguf.GGMLQuantizationType)
    offset: int  # absolute byte offset in the file
    n_bytes: int


class _Cursor:
    """Reads little-endian values from a buffer, checking every bound."""

    def __init__(self, buf: mmap.mmap, pos: int = 0) -> None:
        self.buf, self.pos, self.size = buf, pos, len(buf)

    def take(self, n: int) -> int:
        """Advance over `n` bytes and return where they start."""
        if n < 0 or self.pos + n > self.size:
            raise _Corrupt(f"a field at byte {self.pos} needs {n} bytes but the file ends at "
                           f"byte {self.size}")
        start, self.pos = self.pos, self.pos + n
        return start

    def scalar(self, fmt: str):
        return struct.unpack_from(fmt, self.buf, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.scalar("<Q")
        start = self.take(n)
        try:
            return self.buf[start:start + n].decode("utf-8")
        except UnicodeDecodeError:
            # llama.cpp vocabularies occasionally hold invalid UTF-8 pieces; keep them readable
            return self.buf[start:start + n].decode("utf-8", errors="surrogateescape")

    def value(self, vtype: int):
        if vtype == 6:
            # an f32 scalar as its shortest decimal (1e-05, not 9.999999747378752e-06): the
            # value the converter was given, and it round-trips to the same f32
            return float(str(np.float32(self.scalar("<f"))))
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            return self.array()
        raise _Corrupt(f"unknown value type {vtype} at byte {self.pos - 4}")

    def array(self) -> list:
        itype, count = self.scalar("<I"), self.scalar("<Q")
        if itype in _SCALARS and itype != 7:
            # numeric arrays in one go (token types, scores): np.frombuffer, then plain ints/floats
            dtype = np.dtype(_SCALARS[itype])
            start = self.take(count * dtype.itemsize)
            return np.frombuffer(self.buf, dtype, count, start).tolist()
        if count > self.size - self.pos:  # every item takes at least one byte
            raise _Corrupt(f"an array at byte {self.pos} claims {count} items, more than the "
                           "bytes left in the file")
        return [self.value(itype) for _ in range(count)]


class GGUFFile:
    """An open GGUF file: `metadata` (plain Python values), `tensors` (name → TensorInfo).

    Use as a context manager; `raw(name)` is a uint8 view of the mapped bytes, `tensor(name)`
    the dequantized float32 tensor (a copy that outlives the file).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = _open_checked(self.path)
        try:
            # ACCESS_COPY gives a writable (private, copy-on-write) map: torch.frombuffer needs
            # a writable buffer, and nothing is ever written, so no page is ever copied.
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY)
            self.version, self.metadata, self.tensors = _parse(self._map, self.path)
        except BaseException:
            self.close()
            raise

    def raw(self, name: str) -> torch.Tensor:
        info = self.tensors[name]
        return torch.frombuffer(self._map, dtype=torch.uint8, count=info.n_bytes,
                                offset=info.offset)

    def tensor(self, name: str) -> torch.Tensor:
        info = self.tensors[name]
        return quants.dequantize(self.raw(name), info.qtype, info.shape, name)

    def close(self) -> None:
        if getattr(self, "_map", None) is not None:
            try:
                self._map.close()
            except BufferError:  # a caller still holds a raw() view; the map closes with it
                pass
            self._map = None
        self._file.close()

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open_checked(path: Path):
    if not path.exists():
        raise LmforgeError(f"{path}: no such file")
    if path.is_dir():
        raise LmforgeError(f"{path} is a directory, not a GGUF file")
    f = open(path, "rb")  # closed by GGUFFile.close
    head = f.read(8)
    if head[:4] != MAGIC:
        f.close()
        raise LmforgeError(f"{path} is not a GGUF file: it starts with {head[:4]!r}, "
                           f"a GGUF file starts with {MAGIC!r}")
    if len(head) < 8:
        f.close()
        raise LmforgeError(f"{path} is truncated: it ends inside the GGUF header")
    return f


def _parse(buf: mmap.mmap, path: Path) -> tuple[int, dict, dict[str, TensorInfo]]:
    try:
        return _parse_header(_Cursor(buf, 4), path)
    except _Corrupt as exc:
        raise LmforgeError(f"{path} is truncated or corrupt: {exc}") from None
    except (struct.error, ValueError, OverflowError, MemoryError) as exc:
        raise LmforgeError(f"{path} is truncated or corrupt ({exc})") from None


def _parse_header(cur: _Cursor, path: Path) -> tuple[int, dict, dict[str, TensorInfo]]:
    version = cur.scalar("<I")
    if version & 0xFFFF == 0:
        raise LmforgeError(f"{path} is a big-endian GGUF file; lmforge reads little-endian only")
    if version not in (2, 3):
        raise LmforgeError(f"{path} is GGUF version {version}; lmforge reads versions 2 and 3 "
                           "(re-convert it with a recent llama.cpp)")
    n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
    if n_tensors > cur.size or n_kv > cur.size:
        raise _Corrupt(f"the header claims {n_tensors} tensors and {n_kv} keys")
    metadata = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(cur.scalar("<I"))
    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.scalar("<I")
        if n_dims > 8:
            raise _Corrupt(f"tensor {name!r} claims {n_dims} dimensions")
        dims = [cur.scalar("<Q") for _ in range(n_dims)]
        infos.append((name, tuple(reversed(dims)), cur.scalar("<I"), cur.scalar("<Q")))
    align = int(metadata.get("general.alignment", 32))
    data_start = -(-cur.pos // align) * align  # round up to the alignment
    tensors = {}
    for name, shape, qtype, offset in infos:
        n_bytes = quants.n_bytes(qtype, math.prod(shape))
        end = data_start + offset + n_bytes
        if end > cur.size:
            raise LmforgeError(f"{path} is truncated: tensor {name!r} ends at byte {end} but the "
                               f"file has {cur.size} bytes (an interrupted download or copy?)")
        tensors[name] = TensorInfo(name, shape, qtype, data_start + offset, n_bytes)
    return version, metadata, tensors
