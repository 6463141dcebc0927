"""KV-cache slots for a server: each is active, cached or free; prompts reuse cached prefixes.

A finished sequence leaves its slot *cached*: the keys and values of its tokens stay, so the
next turn of the same chat (which re-sends the whole history) prefills only what is new.
`acquire(prompt)` finds the slot whose tokens share the longest common prefix with the
prompt (active slots too: their first tokens never change) and
- takes a cached slot over when all its tokens are a prefix of the prompt (the next turn),
- otherwise copies the shared prefix into a free slot, or into the least recently used
  cached slot when none is free (eviction), so other conversations keep their cache.
At least one prompt token is always left to prefill: its logits give the first new token.
Like vLLM's automatic prefix caching, but per slot rather than per block, since our cache has
one row per sequence.
"""

from __future__ import annotations

import itertools

from lmforge.errors import LmforgeError
from lmforge.generate.cache import KVCache

FREE, CACHED, ACTIVE = "free", "cached", "active"


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]: bisect on list equality (C speed)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


class SlotPool:
    """The slot states and token contents of one KV cache (used by one scheduler thread)."""

    def __init__(self, cache: KVCache, reuse: bool = True) -> None:
        self.cache = cache
        self.reuse = reuse  # False: every prompt is prefilled whole (for comparisons)
        self.state = [FREE] * cache.n_slots
        self.tokens: list[list[int]] = [[] for _ in range(cache.n_slots)]
        self._clock = itertools.count()
        self.last_used = [0] * cache.n_slots

    def count(self, state: str) -> int:
        return self.state.count(state)

    @property
    def available(self) -> int:
        """Slots a new sequence can take (free, or cached and evictable)."""
        return len(self.state) - self.count(ACTIVE)

    def acquire(self, prompt: list[int]) -> tuple[int, int]:
        """An active slot holding the longest reusable prefix of `prompt`; (slot, reused)."""
        if not self.available:
            raise LmforgeError("no KV-cache slot is free or cached; wait for a sequence to end")
        source, reused = self._best_prefix(prompt)
        if source is not None and self.state[source] == CACHED \
                and reused == len(self.tokens[source]):
            target = source
        else:
            target = self._free_or_lru()
            if source is not None and source != target:
                self._copy_prefix(source, target, reused)
        self.cache.truncate(target, reused)
        self.tokens[target] = self.tokens[source][:reused] if source is not None else []
        self.state[target] = ACTIVE
        self.last_used[target] = next(self._clock)
        return target, reused

    def release(self, slot: int) -> None:
        """An active slot ends: its tokens stay cached for a later prompt."""
        self.state[slot] = CACHED
        self.last_used[slot] = next(self._clock)

    def _best_prefix(self, prompt: list[int]) -> tuple[int | None, int]:
        limit = len(prompt) - 1  # the last prompt token is always prefilled
        best, best_len = None, 0
        if not self.reuse:
            return best, best_len
        for slot, tokens in enumerate(self.tokens):
            if self.state[slot] == FREE or not tokens:
                continue
            n = min(common_prefix(tokens, prompt), limit)
            if n > best_len:
                best, best_len = slot, n
        return best, best_len

    def _free_or_lru(self) -> int:
        if FREE in self.state:
            return self.state.index(FREE)  # the lowest: active rows stay contiguous
        cached = [s for s, st in enumerate(self.state) if st == CACHED]
        return min(cached, key=lambda s: self.last_used[s])

    def _copy_prefix(self, src: int, dst: int, n: int) -> None:
        k, v = self.cache.k, self.cache.v
        k[:, dst, :, :n] = k[:, src, :, :n]
        v[:, dst, :, :n] = v[:, src, :, :n]
        self.cache.lengths[dst] = n
