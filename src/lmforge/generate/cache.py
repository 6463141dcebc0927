"""The KV cache: pre-allocated key/value slots that rows of a batch take, free and reuse.

Design (after nanochat's KVCache and vLLM's slots, without paging):
- One tensor per K and V, shaped (n_layer, n_slots, n_kv_head, max_len, head_dim),
  allocated once; nothing grows during generation.
- Each slot (a batch row) has its own length, so rows of different lengths decode together
  (a ragged batch), a new row is prefilled while others are mid-answer, and a row is
  extended from its current length by a multi-token prefill (prefix reuse).
- A forward pass over some slots goes through a `CacheStep`, built once per pass: it holds
  the positions, the attention mask of the ragged rows and the slot indexing, and each
  attention layer calls its `update` to store new keys/values and read all visible ones.
- Under torch.compile (`lmforge.generate.compiled`) the writes are the in-place ops
  `lmforge::kv_write_at` and `lmforge::kv_write`, opaque to the compiler.
"""

from __future__ import annotations

import torch

from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig


class KVCache:
    def __init__(self, config: ModelConfig, n_slots: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> None:
        shape = (config.n_layer, n_slots, config.n_kv_head, max_len, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.lengths = [0] * n_slots
        self._free = list(range(n_slots))

    @property
    def n_slots(self) -> int:
        return len(self.lengths)

    @property
    def n_free(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        """Take the lowest free slot (low slots keep active rows contiguous: a faster path)."""
        if not self._free:
            raise LmforgeError(f"all {self.n_slots} KV-cache slots are in use; free one first")
        self._free.sort()
        slot = self._free.pop(0)
        self.lengths[slot] = 0
        return slot

    def free(self, slot: int) -> None:
        if slot in self._free:
            raise LmforgeError(f"KV-cache slot {slot} is already free")
        self.lengths[slot] = 0
        self._free.append(slot)

    def truncate(self, slot: int, length: int) -> None:
        """Keep the first `length` positions of a slot (the rest is overwritten later)."""
        self.lengths[slot] = min(self.lengths[slot], length)

    def copy(self, src: int, dst: int) -> None:
        """Make slot `dst` a copy of slot `src` (n samples or beams sharing one prompt)."""
        n = self.lengths[src]
        self.k[:, dst, :, :n] = self.k[:, src, :, :n]
        self.v[:, dst, :, :n] = self.v[:, src, :, :n]
        self.lengths[dst] = n

    def reorder(self, slots: list[int], sources: list[int]) -> None:
        """Slot slots[i] takes the contents of slots[sources[i]] (beam search)."""
        idx = torch.tensor(slots, device=self.k.device)
        src = idx[torch.tensor(sources, device=self.k.device)]
        n = max(self.lengths[s] for s in slots)
        self.k[:, idx, :, :n] = self.k[:, src, :, :n]
        self.v[:, idx, :, :n] = self.v[:, src, :, :n]
        lengths = [self.lengths[s] for s in slots]
        for slot, j in zip(slots, sources, strict=True):
            self.lengths[slot] = lengths[j]

    def step(self, slots: list[int], n_new: list[int] | None = None, width: int = 1,
             bidirectional: bool = False) -> CacheStep:
        """Reserve positions for one forward pass over `slots` with `width` tokens per row,
        of which the first n_new[b] are real (the rest is right padding). `bidirectional`:
        the new tokens also see each other's later positions (a prefix decoder's prompt)."""
        return CacheStep(self, slots, n_new or [width] * len(slots), width, bidirectional)


class CacheStep:
    """One forward pass's view of the cache; advances the slots' lengths when built."""

    def __init__(self, cache: KVCache, slots: list[int], n_new: list[int], width: int,
                 bidirectional: bool = False) -> None:
        if len(set(slots)) != len(slots):
            raise LmforgeError(f"a slot appears twice in one batch: {slots}")
        starts = [cache.lengths[s] for s in slots]
        end = max(starts) + width
        if end > cache.max_len:
            raise LmforgeError(
                f"the KV cache holds {cache.max_len} positions but this step needs {end}; "
                "use a shorter prompt or fewer new tokens, or a larger cache")
        device = cache.k.device
        self.cache = cache
        start = torch.tensor(starts, device=device)
        self.positions = start[:, None] + torch.arange(width, device=device)  # (B, T)
        self.length = max(s + n for s, n in zip(starts, n_new, strict=True))
        first = slots[0]
        contiguous = slots == list(range(first, first + len(slots)))
        self.row_ids = torch.tensor(slots, device=device)
        self.rows = slice(first, first + len(slots)) if contiguous else self.row_ids
        self.uniform_start = starts[0] if len(set(starts)) == 1 else None
        self.causal = False
        self.mask = None
        if bidirectional:  # every query sees every real key of its row, before or after
            ends = start + torch.tensor(n_new, device=device)
            key = torch.arange(self.length, device=device)
            self.mask = (key < ends[:, None])[:, None, None, :]  # (B, 1, 1, L)
        elif width > 1 and self.uniform_start == 0 and self.length == width:
            self.causal = True  # a plain causal prefill: SDPA's own mask, no tensor
        elif width > 1 or self.uniform_start is None:
            key = torch.arange(self.length, device=device)
            self.mask = (key <= self.positions[:, :, None]).unsqueeze(1)  # (B, 1, T, L)
        for s, n in zip(slots, n_new, strict=True):
            cache.lengths[s] += n
        # Contiguous rows that all start at one position (every decode step of a batch that
        # started together): slice the write and read windows of all layers once per pass,
        # so each layer's update is a few views and two copies (the decode hot path).
        self.windows = None
        if isinstance(self.rows, slice) and self.uniform_start is not None:
            pos = slice(self.uniform_start, self.uniform_start + width)
            self.windows = (cache.k[:, self.rows, :, pos], cache.v[:, self.rows, :, pos],
                            cache.k[:, self.rows, :, : self.length],
                            cache.v[:, self.rows, :, : self.length])

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nkv, T, hd) at each row's positions; return (B, nkv, L, hd) views.

        Under torch.compile each write is one opaque op that mutates its input in place:
        writing through the window views (graph inputs that alias each other) is
        miscompiled at batch 8, and a traced slice write copies the whole cache each step."""
        compiling = torch.compiler.is_compiling()
        if self.windows is not None:
            write_k, write_v, read_k, read_v = self.windows
            if compiling:
                torch.ops.lmforge.kv_write_at(read_k, read_v, k, v, layer, self.uniform_start)
            else:
                write_k[layer].copy_(k)
                write_v[layer].copy_(v)
            return read_k[layer], read_v[layer]
        write = torch.ops.lmforge.kv_write if compiling else kv_write
        write(self.cache.k, self.cache.v, k, v, layer, self.row_ids, self.positions)
        ck, cv = self.cache.k[layer], self.cache.v[layer]
        return ck[self.rows, :, : self.length], cv[self.rows, :, : self.length]


def kv_write(cache_k: torch.Tensor, cache_v: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             layer: int, rows: torch.Tensor, positions: torch.Tensor) -> None:
    """Store k, v (B, nkv, T, hd) at positions (B, T) of rows (B,) of one layer, in place."""
    r = rows[:, None]
    cache_k[layer][r, :, positions] = k.transpose(1, 2)
    cache_v[layer][r, :, positions] = v.transpose(1, 2)


def kv_write_at(window_k: torch.Tensor, window_v: torch.Tensor, k: torch.Tensor,
                v: torch.Tensor, layer: int, start: int) -> None:
    """Store k, v (B, nkv, T, hd) at positions start… of every row of a window, in place."""
    window_k[layer, :, :, start: start + k.shape[2]].copy_(k)
    window_v[layer, :, :, start: start + v.shape[2]].copy_(v)


_lib = torch.library.Library("lmforge", "FRAGMENT")
_lib.define("kv_write(Tensor(a!) cache_k, Tensor(b!) cache_v, Tensor k, Tensor v, int layer, "
            "Tensor rows, Tensor positions) -> ()")
_lib.define("kv_write_at(Tensor(a!) window_k, Tensor(b!) window_v, Tensor k, Tensor v, "
            "int layer, SymInt start) -> ()")
for _name, _fn in (("kv_write", kv_write), ("kv_write_at", kv_write_at)):
    _lib.impl(_name, _fn, "CompositeExplicitAutograd")
    torch.library.register_fake(f"lmforge::{_name}", lambda *args: None)
