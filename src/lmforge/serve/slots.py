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
one row per sequence. The `KVCache` owns the slots: a cached or active slot is allocated
there, and slots are taken, freed and copied only through it. A slot that starts with a
P-Tuning v2 prefix is reused only by prompts read after the same prefix: entries are keyed
on the prefix in use as well as the tokens.

Reuse is only correct where a token's keys and values depend on the tokens before it alone:
a decoder. A prefix decoder reads its prompt both ways and an encoder-decoder's prompt is its
source, so their servers run with reuse off (`reuse=False`).
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
    """Which allocated slots of one KV cache are active, and the tokens each one holds
    (used by one scheduler thread)."""

    def __init__(self, cache: KVCache, reuse: bool = True) -> None:
        self.cache = cache
        self.reuse = reuse  # False: every prompt is prefilled whole
        self.tokens: dict[int, list[int]] = {}  # allocated slots (active or cached)
        self.keys: dict[int, object] = {}  # the prefix each allocated slot starts with
        self.active: set[int] = set()
        self._clock = itertools.count()
        self.last_used: dict[int, int] = {}

    def count(self, state: str) -> int:
        if state == ACTIVE:
            return len(self.active)
        return len(self.tokens) - len(self.active) if state == CACHED else self.cache.n_free

    def state(self, slot: int) -> str:
        return ACTIVE if slot in self.active else CACHED if slot in self.tokens else FREE

    @property
    def available(self) -> int:
        """Slots a new sequence can take (free, or cached and evictable)."""
        return self.cache.n_slots - len(self.active)

    def acquire(self, prompt: list[int], reuse: bool = True, key: object = None
                ) -> tuple[int, int]:
        """An active slot holding the longest reusable prefix of `prompt`; (slot, reused).
        `reuse=False`: a slot with nothing reused (the prompt's every logit is wanted);
        `key`: the P-Tuning v2 prefix the prompt is read after (None: none)."""
        if not self.available:
            raise LmforgeError("no KV-cache slot is free or cached; wait for a sequence to end")
        source, reused = self._best_prefix(prompt, key) if reuse and self.reuse else (None, 0)
        if source is not None and source not in self.active \
                and reused == len(self.tokens[source]):
            target = source
        else:
            target = self._take(keep=source)
            if source is not None and source != target:
                self.cache.copy(source, target, self.cache.prefix_len[source] + reused)
        self.cache.truncate(target, self.cache.prefix_len[target] + reused)
        self.tokens[target] = self.tokens[source][:reused] if source is not None else []
        self.keys[target] = key
        self.active.add(target)
        self.last_used[target] = next(self._clock)
        return target, reused

    def release(self, slot: int) -> None:
        """An active slot ends: its tokens stay cached for a later prompt."""
        self.active.discard(slot)
        self.last_used[slot] = next(self._clock)

    def drop(self, slot: int) -> None:
        """Forget a slot whose contents may be half written (a failed prefill)."""
        self.active.discard(slot)
        self.keys.pop(slot, None)
        if self.tokens.pop(slot, None) is not None:
            self.cache.free(slot)

    def _best_prefix(self, prompt: list[int], key: object) -> tuple[int | None, int]:
        limit = len(prompt) - 1  # the last prompt token is always prefilled
        best, best_len = None, 0
        for slot, tokens in self.tokens.items():
            if self.keys.get(slot) is not key:
                continue
            n = min(common_prefix(tokens, prompt), limit)
            if n > best_len:
                best, best_len = slot, n
        return best, best_len

    def _take(self, keep: int | None) -> int:
        """A free slot (the lowest: active rows stay contiguous), else the least recently
        used cached one, evicted (`keep`, the slot to copy a prefix from, goes last)."""
        if not self.cache.n_free:
            cached = [s for s in self.tokens if s not in self.active]
            lru = min(cached, key=lambda s: (s == keep, self.last_used[s]))
            if lru == keep:
                return lru  # the source itself is taken over, truncated to the prefix
            self.drop(lru)
        return self.cache.allocate()
