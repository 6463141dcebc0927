"""The seed vocabulary of the Unigram trainer: every character, then the frequent substrings.

sentencepiece (`MakeSeedSentencePieces`) builds an enhanced suffix array over the corpus
(sentences joined by U+0000) and takes every internal node of the suffix tree, i.e. every
substring that occurs at least twice and is followed by at least two different characters
(a right-maximal repeat). A node of depth 2..max_len whose string is a valid piece is scored
by frequency × length ("character-wise coverage"); the top `seed_size` are kept.

Here the suffix tree is never built: suffixes are sorted by their first 17 characters
(prefix doubling, `np.unique` on rank pairs), the longest common prefix (LCP) of
neighbours is found by binary lifting on the rank tables, and for each depth d the maximal
runs of neighbours with LCP ≥ d are the substrings of length d that repeat; a run whose
smallest LCP is exactly d is a node of depth d (its string is right-maximal). All of it is
a few dozen vectorised passes over the corpus.

A valid piece (sentencepiece's `IsValidSentencePiece`): no U+0000, tab, space or the
rare-character mark U+2585; "▁" only as the first character; with
`split_by_unicode_script`, one Unicode script (Hiragana and Katakana count as Han).
"""

from __future__ import annotations

import numpy as np
import regex

UNK_CHAR = "\u2585"  # stands for a character outside the required set during training
WS = "\u2581"
_DEPTH_CAP = 17  # one more than the longest piece we can need to tell apart
_FORBIDDEN = np.array([0, 9, 0x20, ord(UNK_CHAR)])


def _scripts() -> tuple[list[str], int]:
    """(one name per Unicode script the `regex` module knows, the position of Han)."""
    from regex import _regex_core  # its property table is the only list of script names

    values = _regex_core.PROPERTIES["SCRIPT"][1]
    first: dict[int, str] = {}
    for name, value in values.items():
        first.setdefault(value, name)
    numbers = sorted(first)
    return [first[v] for v in numbers], numbers.index(values["HAN"])


def script_of(chars: list[str]) -> np.ndarray:
    """A script number per character (Hiragana, Katakana and U+30FC counted as Han)."""
    text = "".join(chars)
    index = {c: i for i, c in enumerate(chars)}
    out = np.zeros(len(chars), dtype=np.int64)
    names, han = _scripts()
    for number, name in enumerate(names):
        for c in regex.findall(rf"\p{{Script={name}}}", text):
            out[index[c]] = number
    for c in ("\u30fc", *regex.findall(r"[\p{Script=Hiragana}\p{Script=Katakana}]", text)):
        if c in index:
            out[index[c]] = han
    return out


def _max_valid(codes: np.ndarray, max_len: int, split_by_script: bool) -> np.ndarray:
    """Length of the longest valid piece starting at each position (0 where none)."""
    uniq, inv = np.unique(codes, return_inverse=True)
    script = script_of([chr(c) for c in uniq])[inv]
    ws = codes == ord(WS)
    bad = np.isin(codes, _FORBIDDEN) | ((codes >= 0xD800) & (codes < 0xE000))
    brk = bad | ws
    if split_by_script:
        brk[1:] |= ~ws[:-1] & (script[1:] != script[:-1])
    breaks = np.r_[np.flatnonzero(brk), len(codes)]
    pos = np.arange(len(codes))
    nxt = breaks[np.searchsorted(breaks, pos, side="right")]
    return np.where(bad, 0, np.minimum(nxt - pos, max_len))


def _rank_tables(codes: np.ndarray) -> dict[int, np.ndarray]:
    """k → rank (≥1) of the k characters starting at each position, for k = 1, 2, 4, 8, 16;
    positions past the end rank 0, so each table is padded with zeros."""
    n, pad = len(codes), 2 * _DEPTH_CAP
    r = np.zeros(n + pad, dtype=np.int32)
    r[:n] = np.unique(codes, return_inverse=True)[1] + 1
    tables = {1: r}
    for k in (2, 4, 8, 16):
        prev = tables[k // 2]
        pairs = prev[:n].astype(np.int64) * (n + 1) + prev[k // 2:k // 2 + n]
        r = np.zeros(n + pad, dtype=np.int32)
        r[:n] = np.unique(pairs, return_inverse=True)[1] + 1
        tables[k] = r
    return tables


def _lcp(ranks: dict[int, np.ndarray], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Longest common prefix of the suffixes at a and b (up to 31), by binary lifting."""
    lcp = np.zeros(len(a), dtype=np.int64)
    for k in (16, 8, 4, 2, 1):
        lcp += np.where(ranks[k][a + lcp] == ranks[k][b + lcp], k, 0)
    return lcp


def repeated_substrings(contexts: dict[str, int], max_len: int, split_by_script: bool
                        ) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """(text, offset, length, frequency) of every right-maximal repeat of length
    2..max_len that is a valid piece.

    The corpus is given as distinct words, each with the character that follows it in
    the corpus ("▁" or U+0000), and their counts: no valid piece crosses a word, and the
    follower is all of the outside a suffix tree node can see, so suffixes are compared
    only up to the end of their longest valid piece plus one character, and weighted.
    """
    text = "".join(contexts)
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    lengths = np.fromiter(map(len, contexts), dtype=np.int64, count=len(contexts))
    weight = np.repeat(np.fromiter(contexts.values(), dtype=np.float64), lengths)
    inside = np.ones(len(codes), dtype=bool)
    inside[np.cumsum(lengths) - 1] = False  # the follower characters start no suffix
    cap = np.minimum(_max_valid(codes, max_len, split_by_script) + 1, _DEPTH_CAP)
    ranks = _rank_tables(codes)
    n = len(codes)
    order = np.lexsort((ranks[1][16:16 + n], ranks[16][:n]))
    order = order[inside[order]]
    a, b = order[:-1], order[1:]
    lcp = np.minimum(np.minimum(_lcp(ranks, a, b), cap[a]), cap[b])
    cum = np.r_[0.0, np.cumsum(weight[order])]
    offs, lens, freqs = [], [], []
    for d in range(2, max_len + 1):
        ge = lcp >= d
        if not ge.any():
            break
        edge = np.diff(np.r_[0, ge.astype(np.int8), 0])
        s, e = np.flatnonzero(edge == 1), np.flatnonzero(edge == -1)  # run: suffixes s..e
        smallest = np.minimum.reduceat(np.where(ge, lcp, _DEPTH_CAP + 1), s)
        node = (smallest == d) & (cap[order[s]] > d)
        offs.append(order[s[node]])
        lens.append(np.full(int(node.sum()), d))
        freqs.append(cum[e[node] + 1] - cum[s[node]])
    if not offs:
        return text, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return text, np.concatenate(offs), np.concatenate(lens), np.concatenate(freqs)


def seed_pieces(contexts: dict[str, int], *, max_len: int, seed_size: int,
                split_by_script: bool) -> list[tuple[str, float]]:
    """Characters (by count) then the top `seed_size` substrings (by frequency × length),
    each scored log(value / Σ values), as sentencepiece's `ToLogProb`. `contexts`: each
    distinct word followed by the character after it ("▁" or U+0000) → its count."""
    char_counts: dict[str, int] = {}
    for ctx, count in contexts.items():
        for c in ctx[:-1]:
            char_counts[c] = char_counts.get(c, 0) + count
    char_counts.pop(UNK_CHAR, None)
    seed = [(c, float(n)) for c, n in sorted(char_counts.items(), key=lambda t: (-t[1], t[0]))]
    text, off, length, freq = repeated_substrings(contexts, max_len, split_by_script)
    score = freq * length
    top = np.lexsort((off, -score))[:seed_size]
    seed += [(text[o:o + n], float(s)) for o, n, s in
             zip(off[top].tolist(), length[top].tolist(), score[top].tolist(), strict=True)]
    logsum = np.log(sum(v for _, v in seed))
    return [(p, float(np.log(v) - logsum)) for p, v in seed]
