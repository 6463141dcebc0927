"""Training byte-level BPE (Sennrich et al. 2016; GPT-2's byte level, Radford et al. 2019).

    tok = train_bpe(open("train.txt"), 8000, special=["<|endoftext|>"])

The algorithm, as the `tokenizers` library's BpeTrainer runs it:
1. Pre-tokenize every line (GPT-2's regex by default) and count each distinct pre-token
   once, with its frequency; spell it as UTF-8 bytes.
2. Start from the 256 single bytes. Ids follow `tokenizers`: special tokens first, then the
   256 byte tokens in the order of their printable spelling's code point ("!" … "~", "¡" …,
   "Ā" = byte 0x00, "Ġ" = space), then each new token in the order it was made.
3. Count every adjacent pair of tokens within the words (overlapping pairs too: "aaa"
   holds ("a", "a") twice), weighted by word frequency.
4. Repeatedly merge the most frequent pair everywhere (left to right, so "aaa" becomes
   "aa a") until the vocabulary reaches its size. Ties go to the smallest pair of ids
   (left id first), exactly `tokenizers`' rule, so both trainers learn the same merges in
   the same order. A merge whose result already is a token (ab+c and a+bc) is kept as a
   merge but adds no token.

Incremental updates (the reason this is fast): all words live in one array of symbols with
linked-list `nxt`/`prv` links and a separator (-1) between words. For each pair the trainer
keeps its count and the positions where it starts. Merging a pair visits only its
positions and changes only the two neighbouring pairs of each: the total work over the
whole training is bounded by the number of symbols, not merges × corpus. Position lists
are append-only; an entry whose symbols changed since is stale and skipped when visited.
The most frequent pair comes from a heap of integer priorities with lazy invalidation
(a popped entry whose count is out of date is pushed back with the current count).
"""

from __future__ import annotations

import heapq
from array import array
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from lmforge.errors import LmforgeError
from lmforge.tokenizers.added import AddedToken
from lmforge.tokenizers.base import SpecialTokens
from lmforge.tokenizers.bpe import BYTE_TO_CHAR, BPETokenizer
from lmforge.tokenizers.pretokenize import get_pre_tokenizer
from lmforge.tokenizers.training import check_special, count_words

ID_BITS = 20  # a pair key is left << 20 | right; vocabularies up to 2**20 tokens
_PAIR_MASK = (1 << 2 * ID_BITS) - 1
# byte -> initial id: the byte tokens sorted by the code point of their spelling
_BYTE_ORDER = sorted(range(256), key=lambda b: ord(BYTE_TO_CHAR[b]))
_BYTE_TO_ID = bytes(_BYTE_ORDER.index(b) for b in range(256))


def train_bpe(texts: Iterable[str], vocab_size: int, *, special: Sequence[str] = (),
              pre: str = "gpt2", eos: str | None = None, progress: bool = True
              ) -> BPETokenizer:
    """A byte-level BPE tokenizer of `vocab_size` tokens (special ones included) learned
    from `texts` (lines), pre-tokenized with `pre` (a `PRE_TOKENIZERS` name)."""
    special = list(special) + ([eos] if eos is not None and eos not in special else [])
    special = check_special(special, vocab_size, 256)
    if vocab_size > 1 << ID_BITS:
        raise LmforgeError(f"--vocab-size {vocab_size} is larger than the {1 << ID_BITS} "
                           "tokens the BPE trainer supports")
    pre_tok = get_pre_tokenizer(pre)
    counts = count_words(texts, pre_tok.split, special=special, progress=progress)
    tokens, merges = learn_merges(counts, vocab_size - len(special), progress=progress)
    added = [AddedToken(t, i) for i, t in enumerate(special)]
    roles = SpecialTokens(eos=special.index(eos) if eos is not None else None)
    return BPETokenizer([*special, *tokens], merges, pre=pre_tok, added=added, special=roles)


def learn_merges(counts: dict[str, int], n_tokens: int, *, progress: bool = True
                 ) -> tuple[list[str], list[tuple[str, str]]]:
    """(tokens by id, merges in rank order) learned from word frequencies, `n_tokens`
    tokens in all (the 256 bytes included), spelled at byte level."""
    tokens = [BYTE_TO_CHAR[b] for b in _BYTE_ORDER]
    state = _Corpus([w.encode("utf-8").translate(_BYTE_TO_ID) for w in counts],
                    list(counts.values()))
    ids = {t: i for i, t in enumerate(tokens)}
    merges: list[tuple[str, str]] = []
    with tqdm(total=n_tokens - len(tokens), desc="BPE merges", disable=not progress,
              mininterval=0.5) as bar:
        while len(tokens) < n_tokens:
            best = state.pop_best()
            if best is None:
                break  # every word is a single token
            a, b = best >> ID_BITS, best & ((1 << ID_BITS) - 1)
            text = tokens[a] + tokens[b]
            new = ids.get(text)
            if new is None:
                new = ids[text] = len(tokens)
                tokens.append(text)
                bar.update()
            merges.append((tokens[a], tokens[b]))
            state.merge(a, b, new)
    return tokens, merges


class _Corpus:
    """The words as one symbol array with links, pair counts, pair positions and the heap."""

    def __init__(self, words: list[bytes], freqs: list[int]):
        lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        n = int(lengths.sum()) + len(words) + 1
        # layout: -1, word 0, -1, word 1, -1, …, -1 (a separator ends every word)
        where = np.arange(int(lengths.sum())) + np.repeat(np.arange(1, len(words) + 1), lengths)
        sym = np.full(n, -1, dtype=np.int64)
        sym[where] = np.frombuffer(b"".join(words), dtype=np.uint8)
        freq = np.zeros(n, dtype=np.int64)
        freq[where] = np.repeat(np.asarray(freqs, dtype=np.int64), lengths)
        self.sym, self.freq = _int_array(sym), _int_array(freq)
        self.nxt = array("i", range(1, n + 1))
        self.prv = array("i", range(-1, n - 1))
        self.counts, self.positions = _initial_pairs(sym, freq)
        self.heap = [(-c << 2 * ID_BITS) | k for k, c in self.counts.items()]
        heapq.heapify(self.heap)

    def pop_best(self) -> int | None:
        """The key of the most frequent pair (smallest key on ties); None when none is left."""
        heap, counts = self.heap, self.counts
        while heap:
            top = heapq.heappop(heap)
            key = top & _PAIR_MASK
            count = counts.get(key, 0)
            if count == -(top >> 2 * ID_BITS):
                return key
            if count > 0:  # stale: the count fell since this entry was pushed
                heapq.heappush(heap, (-count << 2 * ID_BITS) | key)
        return None

    def merge(self, a: int, b: int, new: int) -> None:
        """Replace every (a, b) by `new`, left to right, updating the neighbouring pairs."""
        sym, nxt, prv, freq = self.sym, self.nxt, self.prv, self.freq
        counts, positions = self.counts, self.positions
        grown: set[int] = set()
        for p in sorted(positions.pop(a << ID_BITS | b)):  # sorted: leftmost first when a == b
            q = nxt[p]
            if sym[p] != a or sym[q] != b:
                continue  # stale, or consumed by the merge just left of it ("aaa")
            f, h, k = freq[p], prv[p], nxt[q]
            x, y = sym[h], sym[k]
            if x >= 0:
                counts[x << ID_BITS | a] -= f
                key = x << ID_BITS | new
                counts[key] = counts.get(key, 0) + f
                positions[key].append(h)
                grown.add(key)
            if y >= 0:
                counts[b << ID_BITS | y] -= f
                key = new << ID_BITS | y
                counts[key] = counts.get(key, 0) + f
                positions[key].append(p)
                grown.add(key)
            sym[p], sym[q] = new, -1
            nxt[p], prv[k] = k, p
        del counts[a << ID_BITS | b]  # after the loop: overlaps of a == b decrement it
        for key in grown:
            if (c := counts[key]) > 0:
                heapq.heappush(self.heap, (-c << 2 * ID_BITS) | key)


def _int_array(values: np.ndarray) -> array:
    out = array("i")
    out.frombytes(values.astype(np.int32).tobytes())
    return out


def _initial_pairs(sym: np.ndarray, freq: np.ndarray
                   ) -> tuple[dict[int, int], defaultdict[int, array]]:
    """Pair key -> frequency-weighted count, and pair key -> ascending start positions."""
    left, right = sym[:-1], sym[1:]
    start = np.flatnonzero((left >= 0) & (right >= 0))
    keys = left[start] << ID_BITS | right[start]
    order = np.argsort(keys, kind="stable")  # stable: positions stay ascending per pair
    keys, start = keys[order], start[order]
    uniq, first = np.unique(keys, return_index=True)
    totals = np.add.reduceat(freq[start], first) if len(first) else np.zeros(0, np.int64)
    positions: defaultdict[int, array] = defaultdict(lambda: array("i"))
    for key, lo, hi in zip(uniq.tolist(), first.tolist(), [*first[1:].tolist(), len(keys)],
                           strict=True):
        positions[key] = _int_array(start[lo:hi])
    return dict(zip(uniq.tolist(), totals.tolist(), strict=True)), positions
