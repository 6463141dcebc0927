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
- A slot may start with a P-Tuning v2 prefix (`write_prefix`): trained keys and values in
  its first `prefix_len` positions, read like cached tokens by every later step, while the
  tokens' own positions still count from 0 (the prefix has none).
- Under torch.compile (`lmforge.generate.compiled`) the writes are the in-place ops
  `lmforge::kv_write_at` and `lmforge::kv_write`, opaque to the compiler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from lmforge.errors import LmforgeError
from lmforge.model.attention import KVStore
from lmforge.model.config import ModelConfig
from lmforge.model.cross_attention import CrossMemory

if TYPE_CHECKING:
    from lmforge.model.prefix import PrefixKV


class KVCache:
    def __init__(self, config: ModelConfig, n_slots: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                 source_len: int | None = None) -> None:
        """`source_len`: the longest encoder output a slot holds (encoder-decoder models;
        the model's window by default)."""
        shape = (config.n_layer, n_slots, config.n_kv_head, max_len, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.lengths = [0] * n_slots
        self.prefix_len = [0] * n_slots  # positions holding a P-Tuning v2 prefix, per slot
        self._free = list(range(n_slots))
        self.cross_k = self.cross_v = None
        self.source_lengths = [0] * n_slots
        if config.family == "encoder_decoder":
            S = source_len or config.max_seq_len
            shape = (config.n_layer, n_slots, config.n_kv_head, S, config.head_dim)
            self.cross_k = torch.zeros(shape, dtype=dtype, device=device)
            self.cross_v = torch.zeros(shape, dtype=dtype, device=device)
        self._cross_view: tuple[tuple[int, ...], CrossMemory] | None = None

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
        self.lengths[slot] = self.prefix_len[slot] = 0
        return slot

    def free(self, slot: int) -> None:
        if slot in self._free:
            raise LmforgeError(f"KV-cache slot {slot} is already free")
        self.lengths[slot] = self.prefix_len[slot] = 0
        self._set_source_length(slot, 0)
        self._free.append(slot)

    def truncate(self, slot: int, length: int) -> None:
        """Keep the first `length` positions of a slot (the rest is overwritten later)."""
        self.lengths[slot] = min(self.lengths[slot], length)

    def copy(self, src: int, dst: int, length: int | None = None) -> None:
        """Make slot `dst` a copy of the first `length` positions (all by default) of slot
        `src`, and of its encoder output (n samples or beams of one prompt, a reused prefix)."""
        n = self.lengths[src] if length is None else min(length, self.lengths[src])
        self.k[:, dst, :, :n] = self.k[:, src, :, :n]
        self.v[:, dst, :, :n] = self.v[:, src, :, :n]
        self.lengths[dst] = n
        self.prefix_len[dst] = min(self.prefix_len[src], n)
        if self.cross_k is not None:
            s = self.source_lengths[src]
            self.cross_k[:, dst, :, :s] = self.cross_k[:, src, :, :s]
            self.cross_v[:, dst, :, :s] = self.cross_v[:, src, :, :s]
            self._set_source_length(dst, s)

    def write_cross(self, slot: int, memory: CrossMemory) -> None:
        """Store one row's encoder output as the decoder reads it (every layer's
        cross-attention K/V), so the slot decodes against it in any batch."""
        if self.cross_k is None:
            raise LmforgeError("this KV cache holds no encoder outputs: the model is not an "
                               "encoder-decoder")
        S = memory.kv[0][0].shape[2]
        if S > self.cross_k.shape[3]:
            raise LmforgeError(f"the source has {S} tokens but the cache holds sources of at "
                               f"most {self.cross_k.shape[3]}; shorten it")
        for layer, (k, v) in enumerate(memory.kv):
            self.cross_k[layer, slot, :, :S] = k[0]
            self.cross_v[layer, slot, :, :S] = v[0]
        self._set_source_length(slot, S)

    def cross(self, slots: list[int]) -> CrossMemory | None:
        """The encoder outputs of `slots`, in order, as one `CrossMemory` (views when the slots
        are contiguous); kept until the slots or their sources change. None without any."""
        if self.cross_k is None:
            return None
        key = tuple(slots)
        if self._cross_view is not None and self._cross_view[0] == key:
            return self._cross_view[1]
        lengths = [self.source_lengths[s] for s in slots]
        S = max(lengths)
        first = slots[0]
        rows = slice(first, first + len(slots)) if list(key) == list(
            range(first, first + len(slots))) else torch.tensor(slots, device=self.k.device)
        kv = [(self.cross_k[layer, rows, :, :S], self.cross_v[layer, rows, :, :S])
              for layer in range(self.cross_k.shape[0])]
        mask = None
        if min(lengths) < S:
            lens = torch.tensor(lengths, device=self.k.device)
            mask = (torch.arange(S, device=self.k.device) < lens[:, None])[:, None, None, :]
        memory = CrossMemory(kv, mask)
        self._cross_view = (key, memory)
        return memory

    def _set_source_length(self, slot: int, length: int) -> None:
        self.source_lengths[slot] = length
        self._cross_view = None

    def reorder(self, slots: list[int], sources: list[int]) -> None:
        """Slot slots[i] takes the contents of slots[sources[i]] (beam search)."""
        idx = torch.tensor(slots, device=self.k.device)
        src = idx[torch.tensor(sources, device=self.k.device)]
        n = max(self.lengths[s] for s in slots)
        self.k[:, idx, :, :n] = self.k[:, src, :, :n]
        self.v[:, idx, :, :n] = self.v[:, src, :, :n]
        lengths = [self.lengths[s] for s in slots]
        prefix_len = [self.prefix_len[s] for s in slots]
        for slot, j in zip(slots, sources, strict=True):
            self.lengths[slot], self.prefix_len[slot] = lengths[j], prefix_len[j]
        if self.cross_k is not None:
            S = max(self.source_lengths[s] for s in slots)
            self.cross_k[:, idx, :, :S] = self.cross_k[:, src, :, :S]
            self.cross_v[:, idx, :, :S] = self.cross_v[:, src, :, :S]
            source_lengths = [self.source_lengths[s] for s in slots]
            for slot, j in zip(slots, sources, strict=True):
                self._set_source_length(slot, source_lengths[j])

    def write_prefix(self, slot: int, prefix: PrefixKV) -> None:
        """Write a P-Tuning v2 prefix's keys and values (`model.prefix.PrefixKV`) into the
        first positions of an empty slot, once. The slot's length starts at n_prefix, so
        prefills and decode steps (batched, or joining a running batch) read the prefix like
        any cached tokens; their positions still start at 0 (`CacheStep` subtracts
        `prefix_len`), as in a pass through `PrefixStore` without a cache."""
        if slot in self._free or self.lengths[slot]:
            raise LmforgeError(f"KV-cache slot {slot} is free or already holds tokens; write "
                               "the prefix into a slot just allocated")
        with torch.no_grad():
            k, v = prefix.tensors()  # (n_layer, n_kv_head, n_prefix, head_dim)
        n_layer, _, n_kv_head, max_len, head_dim = self.k.shape
        if (k.shape[0], k.shape[1], k.shape[3]) != (n_layer, n_kv_head, head_dim):
            got = (k.shape[0], k.shape[1], k.shape[3])
            raise LmforgeError(f"the prefix has (n_layer, n_kv_head, head_dim) = {got} but "
                               f"the cache {(n_layer, n_kv_head, head_dim)}: it was trained "
                               "for another model")
        n = k.shape[2]
        if n >= max_len:
            raise LmforgeError(f"the prefix has {n} positions but the KV cache holds "
                               f"{max_len}; use a larger cache")
        self.k[:, slot, :, :n] = k
        self.v[:, slot, :, :n] = v
        self.lengths[slot] = self.prefix_len[slot] = n

    def step(self, slots: list[int], n_new: list[int] | None = None, width: int = 1,
             bidirectional: bool = False) -> CacheStep:
        """Reserve positions for one forward pass over `slots` with `width` tokens per row,
        of which the first n_new[b] are real (the rest is right padding). `bidirectional`:
        the new tokens also see each other's later positions (a prefix decoder's prompt)."""
        return CacheStep(self, slots, n_new or [width] * len(slots), width, bidirectional)


class CacheStep(KVStore):
    """One forward pass's view of the cache, the `KVStore` attention reads; advances the
    slots' lengths when built.

    Index i of a slot holds the key of position i − prefix_len: the tokens count from 0
    after a P-Tuning v2 prefix, whose keys sit at −prefix_len…−1 (no position of their own).
    """

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
        self.write_at = start[:, None] + torch.arange(width, device=device)  # (B, T) indices
        self.prefix_len = [cache.prefix_len[s] for s in slots]
        self.positions = self.write_at  # (B, T); the same tensor unless a row has a prefix
        if any(self.prefix_len):
            self.positions = self.write_at - torch.tensor(self.prefix_len, device=device)[:, None]
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
            self.mask = (key <= self.write_at[:, :, None]).unsqueeze(1)  # (B, 1, T, L)
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

    @property
    def key_positions(self) -> torch.Tensor:
        """(B, L): slot index minus the row's prefix length; built when read (only a relative
        position bias reads it), so decode steps of other models never pay for it."""
        key = torch.arange(self.length, device=self.row_ids.device)
        if not any(self.prefix_len):
            return key.expand(len(self.prefix_len), -1)
        return key - torch.tensor(self.prefix_len, device=key.device)[:, None]

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
        write(self.cache.k, self.cache.v, k, v, layer, self.row_ids, self.write_at)
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
