"""Exact, fast Viterbi encoding for the Unigram tokenizer (`unigram.py`).

The recursion is sentencepiece's, unchanged: per "▁"-word, best(0) = 0 and

    best(j) = max over pieces x = w[i:j] of best(i) + log p(x)      (float64 sums)

with the earliest start winning ties, and an unknown character scored min log p − 10. Three
things make it fast without changing one id:

1. A word cache: a word is solved once (`dict.__missing__`, so a line of known words costs
   one `str.split` at "▁" and one C-level `map`).
2. A trie of the pieces (nested dicts keyed by character), so the pieces starting at i are
   found by walking one character at a time, without slicing substrings.
3. Cut points. A position no piece can span (the two characters around it never stand side
   by side inside a piece) lies on every segmentation, so a word's path is the paths of the
   segments between cut points put end to end. Chinese lines have no spaces, but most of
   their characters stand alone between two cut points (a single character's ids come from
   a per-character cache, found for the whole line in one C-level `map`), and the runs of
   joinable characters are short: each distinct run is solved once and cached.

Exactness of cut points. Solved alone, a segment starts from 0 instead of best(k) = b, so
its sums round differently. By induction over the recursion (max is 1-Lipschitz), with d the
segment length, n the word length, M the largest |score| and u = 2⁻⁵³,

    |best_b(j) − (b + best_0(j))| ≤ 2·d·u·n·M,

so every choice on the segment's path is the same from b when it won by more than twice
that: 4·d·u·n·M = d·n·M·2⁻⁵¹. A run is cached only if its smallest winning margin exceeds
d·M·2⁻⁴³·MAX_WORD (256 times the bound for any word up to MAX_WORD characters); a word
holding any other run (an exact tie such as "aaa" = a + aa = aa + a, which the float sums
break one way from 0 and maybe the other way from b) is solved whole, as before. So are
words longer than MAX_WORD and words of at most SHORT_WORD characters (for those, cutting
costs more than it saves).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import chain, compress, count, islice
from operator import add

Hit = tuple[int, float]  # (piece id, score)
Path = list[tuple[int, int]]  # (start, piece id or −1 for unknown) of each piece, in order
Trie = dict[str, list]  # character → [children, the piece's Hit or None]
WS = "\u2581"  # the escaped space: a word starts at each one
_SAFETY = 2.0 ** -43
MAX_WORD = 1 << 20  # longer words are solved whole
SHORT_WORD = 24  # and so are words this short


def build_trie(pieces: dict[str, Hit]) -> Trie:
    """Nested dicts of the pieces' characters; a node is [children, Hit of the piece that
    ends there or None]."""
    root: Trie = {}
    for piece, hit in pieces.items():
        children, node = root, None
        for c in piece:
            node = children.get(c)
            if node is None:
                node = children[c] = [{}, None]
            children = node[0]
        node[1] = hit  # type: ignore[index]
    return root


def viterbi(word: str, trie: Trie, unk_score: float) -> tuple[Path, list[float]]:
    """The best path of `word` and best(j) for every j."""
    n = len(word)
    best = [0.0] + [-math.inf] * n
    back: Path = [(0, -1)] * (n + 1)
    for i in range(n):
        base = best[i]
        node = trie.get(word[i])
        if (node is None or node[1] is None) and base + unk_score > best[i + 1]:
            best[i + 1], back[i + 1] = base + unk_score, (i, -1)  # no one-character piece
        j = i
        while node is not None:
            j += 1
            if (hit := node[1]) is not None and base + hit[1] > best[j]:
                best[j], back[j] = base + hit[1], (i, hit[0])  # strict: earliest start stays
            if j == n:
                break
            node = node[0].get(word[j])
    path, j = [], n
    while j > 0:
        path.append(back[j])
        j = back[j][0]
    return path[::-1], best


def margin(word: str, path: Path, best: list[float], pieces: dict[str, Hit], max_len: int,
           unk_score: float) -> float:
    """The smallest winning margin on the path: at each of its nodes j, best(j) minus the
    best other candidate best(i) + s(word[i:j]) (0 on a tie, inf if there is none)."""
    out = math.inf
    for (won, _), j in zip(path, [i for i, _ in path[1:]] + [len(word)], strict=True):
        for i in range(max(0, j - max_len), j):
            hit = pieces.get(word[i:j])
            if hit is None and i == j - 1:
                hit = (-1, unk_score)
            if hit is not None and i != won:
                out = min(out, best[j] - (best[i] + hit[1]))
    return out


def runs(joined: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each run of characters glued by the boundaries `joined` (sorted; k
    glues characters k − 1 and k): [1, 2, 5] → [(0, 3), (4, 6)]."""
    out, start = [], joined[0]
    for prev, k in zip(joined, joined[1:], strict=False):
        if k != prev + 1:
            out.append((start - 1, prev + 1))
            start = k
    out.append((start - 1, joined[-1] + 1))
    return out


class _Tie(Exception):
    """A run whose path could change inside a long word: the word is solved whole."""


class _Memo(dict):
    """key → fn(key), computed on first use and kept; back to `base` when it holds `limit`
    entries."""

    def __init__(self, fn: Callable, limit: int, base: dict | None = None):
        super().__init__(base or {})
        self.fn, self.limit, self.base = fn, limit, base or {}

    def __missing__(self, key):
        if len(self) >= self.limit:
            self.reset()
        value = self[key] = self.fn(key)
        return value

    def reset(self) -> None:
        self.clear()
        self.update(self.base)


class ViterbiEncoder:
    """Words → ids through the word cache, cut points and the cache of parts (single
    characters, pre-filled with the one-character pieces, and runs)."""

    def __init__(self, pieces: dict[str, Hit], unk_score: float,
                 finish: Callable[[str, Path], list[int]], unk_id: int | None,
                 cache_limit: int):
        """`pieces` are the matchable pieces; `finish` turns a path into ids; `unk_id` is
        the id whose runs fuse into one (None with byte fallback: nothing fuses)."""
        self.pieces, self.trie, self.unk_score, self.finish, self.unk_id = \
            pieces, build_trie(pieces), unk_score, finish, unk_id
        self.max_len = max(map(len, pieces), default=1)
        self.joins = frozenset(p[k:k + 2] for p in pieces for k in range(len(p) - 1))
        largest = max([abs(unk_score), *(abs(s) for _, s in pieces.values())])
        # a run is kept if its path holds in any word up to MAX_WORD characters
        self.tie_margin = _SAFETY * largest * MAX_WORD if math.isfinite(largest) else math.inf
        self.tied: set[str] = set()
        self.words = _Memo(self._encode_word, cache_limit)  # words without a leading "▁"
        self.spaced = _Memo(lambda tail: self._encode_word(WS + tail), cache_limit)
        singles = {p: (hit[0],) for p, hit in pieces.items() if len(p) == 1}
        self.parts = _Memo(self._solve_part, cache_limit, singles)

    def encode(self, text: str) -> list[int]:
        """Ids of normalized text, word by word: "▁a▁b" is "▁a" + "▁b" (the cache of "▁"-words
        is keyed by what follows the "▁"; text before the first "▁" is a word too)."""
        words = text.split(WS)
        ids = list(self.words[words[0]]) if words[0] else []
        ids += chain.from_iterable(map(self.spaced.__getitem__, islice(words, 1, None)))
        return ids

    def clear(self) -> None:
        self.words.reset()
        self.spaced.reset()
        self.parts.reset()
        self.tied.clear()

    def _whole(self, word: str) -> tuple[int, ...]:
        return tuple(self.finish(word, viterbi(word, self.trie, self.unk_score)[0]))

    def _solve_part(self, part: str) -> tuple[int, ...]:
        if part in self.tied:
            raise _Tie
        path, best = viterbi(part, self.trie, self.unk_score)
        won_by = margin(part, path, best, self.pieces, self.max_len, self.unk_score)
        if not won_by > len(part) * self.tie_margin:  # (a NaN score counts as a tie)
            self.tied.add(part)
            raise _Tie
        return tuple(self.finish(part, path))

    def _encode_word(self, word: str) -> tuple[int, ...]:
        n = len(word)
        if n <= SHORT_WORD:
            return self._whole(word)
        parts = list(word)  # one str per character, shared by the bigrams below
        bigrams = map(add, parts, islice(parts, 1, None))
        joined = list(compress(count(1), map(self.joins.__contains__, bigrams)))
        if len(joined) == n - 1 or n > MAX_WORD:
            return self._whole(word)
        for a, b in reversed(runs(joined)) if joined else ():
            parts[a:b] = (word[a:b],)
        try:
            ids = list(chain.from_iterable(map(self.parts.__getitem__, parts)))
        except _Tie:
            return self._whole(word)
        unk = self.unk_id
        if unk is not None and ids.count(unk) > 1:  # a run of unknowns across parts: one <unk>
            ids = [t for t, prev in zip(ids, [None, *ids], strict=False) if t != unk or prev != unk]
        return tuple(ids)
