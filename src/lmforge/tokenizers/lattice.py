"""Segmentation lattices of many words at once, in numpy: the engine of the Unigram trainer.

A word of n characters has nodes 0..n (the boundaries between characters); an edge (i, j)
is a vocabulary piece spelling characters i..j-1, scored by the piece's log probability.
The trainer needs three passes over the lattices of every distinct word (Kudo 2018, §3.2):
- forward-backward (the E step): alpha(j) = logsumexp_{(i,j)} alpha(i) + s(i,j) and
  beta(i) = logsumexp_{(i,j)} s(i,j) + beta(j); the expected count of an edge is
  count(word) · exp(alpha(i) + s(i,j) + beta(j) − Z), Z = alpha(n);
- Viterbi (the pruning step): the same recursion with max in place of logsumexp.

Design choices:
- All words share one flat array of code points; node k of word w is global node
  `start[w] + w + k`, so the lattices of all words are one graph with no edge between words.
- Edges are found without a trie: the 64-bit polynomial hash of every substring up to the
  longest piece is compared with the sorted hashes of the pieces (`np.searchsorted`). Two
  different strings share a hash with probability ~2^-64 per pair.
- The recursions run column by column: step k updates node k of every word at once, so the
  Python loop has as many steps as the longest word, and each step is a few numpy calls
  (`np.maximum.reduceat` / `np.add.reduceat` over the edges grouped by their end node).
- A position that no single-character piece covers gets an unknown edge of score
  `unk_score` (sentencepiece: the lowest piece score − 10), so every word has a path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier (golden ratio)
_NEG_INF = -np.inf


def flatten(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(code points of all strings concatenated, start offsets with the total appended)."""
    codes = np.frombuffer("".join(strings).encode("utf-32-le"), dtype=np.uint32)
    lengths = np.fromiter((len(s) for s in strings), dtype=np.int64, count=len(strings))
    return codes.astype(np.int64), np.concatenate([[0], np.cumsum(lengths)])


def hash_strings(codes: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hash of each string, sorted hashes of all their proper prefixes), with the hash
    h = h·B + (c + 1) over the code points, modulo 2^64."""
    lengths = np.diff(starts)
    h = np.zeros(len(lengths), dtype=np.uint64)
    prefixes = []
    for k in range(int(lengths.max(initial=0))):
        live = np.flatnonzero(lengths > k)
        h[live] = h[live] * _BASE + (codes[starts[live] + k] + 1).astype(np.uint64)
        prefixes.append(h[live[lengths[live] > k + 1]])
    return h, np.unique(np.concatenate([np.zeros(0, np.uint64), *prefixes]))


def _member(sorted_hashes: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Position of each hash in `sorted_hashes` (clipped) and whether it is there."""
    pos = np.minimum(np.searchsorted(sorted_hashes, h), max(len(sorted_hashes) - 1, 0))
    return pos, sorted_hashes[pos] == h if len(sorted_hashes) else np.zeros(len(h), bool)


@dataclass
class PieceTable:
    """Piece hashes sorted for lookup, with the piece index of each, and the hashes of
    every proper prefix of a piece (a substring that is none cannot grow into a piece)."""

    hashes: np.ndarray
    index: np.ndarray
    prefixes: np.ndarray
    max_len: int

    @classmethod
    def build(cls, pieces: list[str]) -> PieceTable:
        h, prefixes = hash_strings(*flatten(pieces))
        order = np.argsort(h, kind="stable")
        if len(h) > 1 and (np.diff(h[order]) == 0).any():
            raise ValueError("two pieces share a 64-bit hash or a piece is repeated")
        return cls(h[order], order, prefixes, max(map(len, pieces)))

    def lookup(self, h: np.ndarray) -> np.ndarray:
        """Piece index of each hash, −1 where no piece has it."""
        pos, found = _member(self.hashes, h)
        return np.where(found, self.index[pos], -1)


def find_edges(codes: np.ndarray, starts: np.ndarray, table: PieceTable
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start position, length, piece index) of every piece occurrence inside a word, plus an
    unknown edge (piece −1, length 1) where no single-character piece starts. Substrings
    grow one character at a time from the positions whose substring is a piece prefix."""
    word_end = np.repeat(starts[1:], np.diff(starts))  # end offset of each position's word
    pos = np.arange(len(codes))
    h = np.zeros(len(codes), dtype=np.uint64)
    pos_l, len_l, pid_l = [], [], []
    for length in range(1, table.max_len + 1):
        inside = pos + length <= word_end[pos]
        pos, h = pos[inside], h[inside]
        if not len(pos):
            break
        h = h * _BASE + (codes[pos + length - 1] + 1).astype(np.uint64)
        pid = table.lookup(h)
        hit = pid >= 0
        if length == 1:
            pos_l.append(pos[~hit]), len_l.append(np.ones(int((~hit).sum()), np.int64))
            pid_l.append(np.full(int((~hit).sum()), -1, np.int64))
        pos_l.append(pos[hit]), len_l.append(np.full(int(hit.sum()), length, np.int64))
        pid_l.append(pid[hit])
        _, grows = _member(table.prefixes, h)
        pos, h = pos[grows], h[grows]
    return np.concatenate(pos_l), np.concatenate(len_l), np.concatenate(pid_l)


@dataclass
class _Step:
    """Edges of one column, grouped by the node they update."""

    lo: int
    hi: int
    group_starts: np.ndarray  # relative to lo
    group_sizes: np.ndarray
    nodes: np.ndarray  # the node each group updates


def _group_steps(column: np.ndarray, node: np.ndarray) -> list[_Step]:
    """Steps over edges already sorted by (column, node)."""
    steps = []
    cuts = np.flatnonzero(np.diff(column)) + 1
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(column)], strict=True):
        nd = node[lo:hi]
        gs = np.r_[0, np.flatnonzero(np.diff(nd)) + 1]
        steps.append(_Step(int(lo), int(hi), gs, np.diff(np.r_[gs, hi - lo]), nd[gs]))
    return steps


class Lattice:
    """The lattices of a list of words (with counts) over one vocabulary.

    `drop_whole=True` leaves out every edge that spans a whole word: the lattice of a piece
    without the piece itself, whose best path is what the piece would be split into.
    """

    def __init__(self, words: list[str], counts: np.ndarray, table: PieceTable, *,
                 drop_whole: bool = False):
        codes, starts = flatten(words)
        self.n_words = len(words)
        self.counts = np.asarray(counts, dtype=np.float64)
        pos, length, pid = find_edges(codes, starts, table)
        word = np.searchsorted(starts, pos, side="right") - 1
        if drop_whole:
            keep = length != np.diff(starts)[word]
            pos, length, pid, word = pos[keep], length[keep], pid[keep], word[keep]
        src, dst = pos + word, pos + word + length
        self.first = starts[:-1] + np.arange(self.n_words)  # start node of each word
        self.last = starts[1:] + np.arange(self.n_words)  # end node of each word
        self.n_nodes = int(starts[-1]) + self.n_words
        end_col, start_col = dst - self.first[word], src - self.first[word]
        fwd = np.lexsort((src, dst, end_col))  # sentencepiece's order: earlier start first
        i32 = np.int32  # edges are the bulk of training memory: 4 bytes per field
        self.src, self.dst, self.pid, self.word = (a[fwd].astype(i32) for a in
                                                   (src, dst, pid, word))
        self.col = end_col[fwd].astype(i32)
        bwd = np.lexsort((dst, src, -start_col))
        self.b_src, self.b_dst, self.b_pid = (a[bwd].astype(i32) for a in (src, dst, pid))
        self.b_col = (-start_col[bwd]).astype(i32)
        self._build_steps()

    def _build_steps(self) -> None:
        self.fwd_steps = _group_steps(self.col, self.dst)
        self.bwd_steps = _group_steps(self.b_col, self.b_src)

    def remap(self, new_id: np.ndarray) -> None:
        """Follow a smaller vocabulary: piece i becomes new_id[i], or is gone where −1;
        a gone single-character edge becomes an unknown edge, as if built anew."""
        def mapped(pid: np.ndarray, src: np.ndarray, dst: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
            m = np.where(pid >= 0, new_id[np.maximum(pid, 0)], -1)
            return m, (m >= 0) | (dst - src == 1)

        pid, keep = mapped(self.pid, self.src, self.dst)
        self.src, self.dst, self.word, self.col = (a[keep] for a in
                                                   (self.src, self.dst, self.word, self.col))
        self.pid = pid[keep]
        pid, keep = mapped(self.b_pid, self.b_src, self.b_dst)
        self.b_src, self.b_dst, self.b_col = (a[keep] for a in (self.b_src, self.b_dst,
                                                                self.b_col))
        self.b_pid = pid[keep]
        self._build_steps()

    @property
    def n_edges(self) -> int:
        return len(self.pid)

    # -- the recursions -------------------------------------------------------------------

    def _sweep(self, steps: list[_Step], frm: np.ndarray, scores: np.ndarray,
               init: np.ndarray, *, viterbi: bool) -> tuple[np.ndarray, np.ndarray]:
        """Forward (or backward, with src/dst swapped) log-sum-exp or max recursion;
        `back[node]` is the chosen edge under Viterbi."""
        value = np.full(self.n_nodes, _NEG_INF)
        value[init] = 0.0
        back = np.full(self.n_nodes, -1, dtype=np.int64)
        for st in steps:
            v = value[frm[st.lo:st.hi]] + scores[st.lo:st.hi]
            m = np.maximum.reduceat(v, st.group_starts)
            if viterbi:
                group = np.repeat(np.arange(len(m)), st.group_sizes)
                hits = np.flatnonzero(v == m[group])
                first = hits[np.r_[True, group[hits][1:] != group[hits][:-1]]]
                back[st.nodes] = st.lo + first
                value[st.nodes] = m
            else:
                safe = np.where(np.isfinite(m), m, 0.0)
                s = np.add.reduceat(np.exp(v - np.repeat(safe, st.group_sizes)), st.group_starts)
                value[st.nodes] = safe + np.log(s)
        return value, back

    def edge_scores(self, piece_scores: np.ndarray, unk_score: float, *,
                    backward: bool = False) -> np.ndarray:
        pid = self.b_pid if backward else self.pid
        return np.where(pid >= 0, piece_scores[np.maximum(pid, 0)], unk_score)

    def expected_counts(self, piece_scores: np.ndarray, unk_score: float
                        ) -> tuple[np.ndarray, float]:
        """(expected count of each piece, −Σ count·log Z / Σ count): the E step."""
        es = self.edge_scores(piece_scores, unk_score)
        alpha, _ = self._sweep(self.fwd_steps, self.src, es, self.first, viterbi=False)
        bes = self.edge_scores(piece_scores, unk_score, backward=True)
        beta, _ = self._sweep(self.bwd_steps, self.b_dst, bes, self.last, viterbi=False)
        z = alpha[self.last]
        post = np.exp(alpha[self.src] + es + beta[self.dst] - z[self.word]) \
            * self.counts[self.word]
        known = self.pid >= 0
        expected = np.bincount(self.pid[known], post[known], minlength=len(piece_scores))
        return expected, float(-(self.counts * z).sum() / self.counts.sum())

    def viterbi(self, piece_scores: np.ndarray, unk_score: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(word index, piece index) of every token on the best paths, and each word's best
        score (−inf where the word has no path); tokens come last-to-first per word."""
        es = self.edge_scores(piece_scores, unk_score)
        best, back = self._sweep(self.fwd_steps, self.src, es, self.first, viterbi=True)
        words, pieces = [], []
        live = np.flatnonzero(np.isfinite(best[self.last]))
        cur = self.last[live]
        while len(live):
            e = back[cur]
            words.append(live)
            pieces.append(self.pid[e])
            cur = self.src[e]
            more = cur != self.first[live]
            live, cur = live[more], cur[more]
        if not words:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), best[self.last]
        return np.concatenate(words), np.concatenate(pieces), best[self.last]
