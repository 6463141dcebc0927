"""Counting n-grams of every order with sentence markers, keyed like a trie.

Each sentence w1 … wk is counted as `<s> w1 … wk </s>`: n-grams never cross sentences, and
only the first position of one may be `<s>`. N-grams of order n live in one sorted int64
array of keys

    key(w1 … wn) = id(w1 … wn-1) · V + wn         (order 1: key = id = the word id)

where id(·) is the row of the (n-1)-gram in its own order's array and V the vocabulary
size. Sorting these keys sorts the n-grams lexicographically, the rows that share a context
are contiguous, and finding an n-gram is one `searchsorted` given its prefix's row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from lmforge.errors import LmforgeError
from lmforge.ngram.vocab import BOS_ID, EOS_ID


@dataclass
class Corpus:
    """Sentences as one flat array `<s> w … </s> <s> …` of word ids."""

    seq: np.ndarray  # (T,) int64 word ids
    start: np.ndarray  # (T,) int64: the position of the `<s>` that opens each token's sentence

    @classmethod
    def from_ids(cls, sentences: list[list[int]]) -> Corpus:
        lengths = np.fromiter((len(s) + 2 for s in sentences), np.int64, len(sentences))
        flat = [BOS_ID]
        for s in sentences:
            flat.extend(s)
            flat.append(EOS_ID)
            flat.append(BOS_ID)
        seq = np.array(flat[:-1] if sentences else [], dtype=np.int64)
        starts = np.cumsum(lengths) - lengths
        return cls(seq, np.repeat(starts, lengths))


@dataclass
class NgramCounts:
    """Raw counts of every order: `keys[n-1]` sorted as described above, `counts[n-1]`."""

    vocab_size: int
    keys: list[np.ndarray]
    counts: list[np.ndarray]
    # suffix[n-1]: the row in order n-1 of each n-gram's suffix w2 … wn (empty for n = 1)
    suffix: list[np.ndarray]

    @property
    def order(self) -> int:
        return len(self.keys)


def count_ngrams(corpus: Corpus, order: int, vocab_size: int,
                 progress: bool = False) -> NgramCounts:
    """Count the n-grams of orders 1..order; unigrams cover the whole vocabulary (count 0 for
    words never seen, such as `<unk>` in an open vocabulary without rare words)."""
    if order < 1:
        raise LmforgeError(f"--order must be at least 1, got {order}")
    seq, V = corpus.seq, vocab_size
    keys = [np.arange(V, dtype=np.int64)]
    counts = [np.bincount(seq, minlength=V).astype(np.int64)]
    suffix = [np.empty(0, np.int64)]
    ids = seq.copy()  # row of the n-gram ending at each position (-1: none)
    same_sentence = corpus.start[1:] == corpus.start[:-1]
    for _ in tqdm(range(2, order + 1), desc="count", unit="order", disable=not progress):
        mask = same_sentence & (ids[:-1] >= 0)
        uniq, inverse, cnt = np.unique(ids[:-1][mask] * V + seq[1:][mask],
                                       return_inverse=True, return_counts=True)
        # the suffix of the n-gram ending at t is the (n-1)-gram ending at t
        suf = np.empty(len(uniq), np.int64)
        suf[inverse] = ids[1:][mask]
        ids = np.full_like(seq, -1)
        ids[1:][mask] = inverse
        keys.append(uniq)
        counts.append(cnt.astype(np.int64))
        suffix.append(suf)
    return NgramCounts(V, keys, counts, suffix)


def lookup(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Rows of `query` keys in the sorted `keys`, -1 where absent."""
    if len(keys) == 0:
        return np.full(np.shape(query), -1, np.int64)
    pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return np.where(keys[pos] == query, pos, -1)


def word_rows(keys: list[np.ndarray], vocab_size: int) -> list[np.ndarray]:
    """The (M, n) word ids of the n-grams of every order n."""
    out: list[np.ndarray] = []
    for n, k in enumerate(keys, start=1):
        prefix, word = np.divmod(k, vocab_size)
        out.append(word[:, None] if n == 1 else
                   np.concatenate([out[-1][prefix], word[:, None]], axis=1))
    return out


def first_words(keys: list[np.ndarray], vocab_size: int) -> list[np.ndarray]:
    """The first word of every n-gram of each order."""
    out = [keys[0]]
    for n in range(2, len(keys) + 1):
        out.append(out[n - 2][keys[n - 1] // vocab_size])
    return out
