"""Training a Unigram LM tokenizer: Kudo (2018), "Subword Regularization", as sentencepiece does it.

1. Load: normalize each line (NFKC, extra spaces removed), escape spaces as "▁" with a dummy
   prefix; the characters covering `character_coverage` of the text are required, rarer ones
   become U+2585 (never part of a piece). Words are the "▁"-prefixed pieces of the lines,
   counted: every pass below runs over distinct words, weighted by their counts.
2. Seed (`unigram_seed.py`): all characters plus the `seed_size` most frequent substrings by
   frequency × length, scored log(value / Σ value).
3. EM, `num_sub_iterations` times per round. E step: expected piece counts c_i by
   forward-backward over each word's lattice (`lattice.py`). M step: pieces with c_i < 0.5
   are dropped, and sentencepiece's Bayesian ("DP-ified") update replaces the maximum
   likelihood estimate log(c_i / Σc): score_i = ψ(c_i) − ψ(Σc), ψ the digamma function —
   a sparse prior that favours frequent pieces (Liang & Klein 2007, tutorial slides).
4. Prune while there are more than 1.1 × vocab_size pieces: for each piece, its
   alternative is the best segmentation of its own string without it; the loss of removing
   it is F_i · (log p_i − Σ_{alt} log p'_n), where F_i is its share of Viterbi tokens and p'
   the probabilities after its count moves to the alternative pieces. Pieces whose own best
   segmentation is already split, or that no Viterbi path uses, go first; then the lowest
   losses, keeping max(shrinking_factor × size, 1.1 × vocab_size) pieces per round.
5. Finalize: required characters always stay (absent ones get the lowest score), then
   the best-scored pieces fill `vocab_size` with the special (and byte) tokens.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, fields

import numpy as np
from tqdm import tqdm

from lmforge.errors import LmforgeError
from lmforge.tokenizers.lattice import Lattice, PieceTable
from lmforge.tokenizers.unigram import UNK_PENALTY, normalize
from lmforge.tokenizers.unigram_seed import UNK_CHAR, WS, seed_pieces


@dataclass
class UnigramOptions:
    """Trainer settings; the defaults are sentencepiece's."""

    max_piece_length: int = 16
    seed_size: int = 1_000_000
    shrinking_factor: float = 0.75
    num_sub_iterations: int = 2
    character_coverage: float = 0.9995
    split_by_unicode_script: bool = True
    max_sentence_length: int = 4192  # bytes; longer lines are skipped
    nfkc: bool = True
    remove_extra_whitespaces: bool = True
    add_dummy_prefix: bool = True
    byte_fallback: bool = False
    unk: str = "<unk>"
    bos: str | None = "<s>"
    eos: str | None = "</s>"
    pad: str | None = None

    def check(self) -> None:
        limits = {"max_piece_length": (1, 16), "seed_size": (1, 10_000_000),
                  "shrinking_factor": (0.5, 0.95), "num_sub_iterations": (1, 10),
                  "character_coverage": (0.9, 1.0), "max_sentence_length": (1, 1 << 30)}
        for name, (lo, hi) in limits.items():
            if not lo <= getattr(self, name) <= hi:
                raise LmforgeError(f"Unigram option {name}={getattr(self, name)} is out of "
                                   f"range; use a value in [{lo}, {hi}]")

    @classmethod
    def from_kwargs(cls, options: dict) -> UnigramOptions:
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(options) - known):
            raise LmforgeError(f"unknown Unigram training option(s) {unknown}; "
                               f"known: {sorted(known)}")
        opts = cls(**options)
        opts.check()
        return opts

    def specials(self) -> list[str]:
        """The special tokens in id order: unk, bos, eos, pad (those set)."""
        return [t for t in (self.unk, self.bos, self.eos, self.pad) if t]


def digamma(x: np.ndarray) -> np.ndarray:
    """ψ(x) as sentencepiece computes it: shift x up to ≥ 7 with ψ(x) = ψ(x+1) − 1/x,
    then the asymptotic series ln x − 1/2x − Σ B_2k / (2k x^2k), here around x − 1/2."""
    x = np.array(x, dtype=np.float64)
    result = np.zeros_like(x)
    while (small := x < 7).any():
        result[small] -= 1 / x[small]
        x[small] += 1
    x = x - 0.5
    xx2 = 1 / (x * x)
    xx4 = xx2 * xx2
    return result + np.log(x) + xx2 / 24 - 7 / 960 * xx4 + 31 / 8064 * xx4 * xx2 \
        - 127 / 30720 * xx4 * xx4


def load_words(texts: Iterable[str], opts: UnigramOptions
               ) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """(words with their follower → count, words → count, required characters → count)."""
    specials = opts.specials()
    contexts: Counter[str] = Counter()
    for line in texts:
        line = line.rstrip("\r\n")
        if len(line.encode("utf-8", errors="replace")) > opts.max_sentence_length or \
                UNK_CHAR in line:
            continue
        for t in specials:  # as sentencepiece: special strings are never learned as pieces
            line = line.replace(t, " ")
        text = normalize(line, opts.nfkc, opts.remove_extra_whitespaces, opts.add_dummy_prefix)
        words = [w for w in text.replace(WS, "\0" + WS).split("\0") if w]
        contexts.update(w + WS for w in words[:-1])
        if words:
            contexts[words[-1] + "\0"] += 1
    chars: Counter[str] = Counter()
    for ctx, n in contexts.items():
        for c, k in Counter(ctx[:-1]).items():
            chars[c] += k * n
    required = _required_chars(chars, opts.character_coverage)
    rare = {c for c in chars if c not in required}
    if rare:
        table = str.maketrans({c: UNK_CHAR for c in rare})
        merged: Counter[str] = Counter()
        for ctx, n in contexts.items():
            merged[ctx.translate(table)] += n
        contexts = merged
    words: Counter[str] = Counter()
    for ctx, n in contexts.items():
        words[ctx[:-1]] += n
    return dict(contexts), dict(words), required


def _required_chars(chars: Counter[str], coverage: float) -> dict[str, int]:
    """The most frequent characters until they cover `coverage` of all characters."""
    total, covered, required = sum(chars.values()), 0, {}
    for c, n in sorted(chars.items(), key=lambda t: (-t[1], t[0])):
        if covered / total >= coverage:
            break
        covered += n
        required[c] = n
    return required


class _Model:
    """The current pieces with their scores, and the lattice of every word over them."""

    def __init__(self, pieces: list[str], scores: np.ndarray, words: dict[str, int]):
        self.pieces, self.scores = pieces, scores
        self.words = list(words)
        self.counts = np.fromiter(words.values(), dtype=np.float64, count=len(words))
        self.lattice = Lattice(self.words, self.counts, PieceTable.build(pieces))

    @property
    def unk_score(self) -> float:
        return float(self.scores.min()) - UNK_PENALTY

    def keep(self, index: np.ndarray, scores: np.ndarray) -> None:
        """Keep pieces[index] (in that order) with new scores; the lattice follows."""
        new_id = np.full(len(self.pieces), -1, dtype=np.int64)
        new_id[index] = np.arange(len(index))
        self.lattice.remap(new_id)
        self.pieces = [self.pieces[i] for i in index.tolist()]
        self.scores = np.asarray(scores, dtype=np.float64)

    def em_step(self) -> float:
        """One E step and M step; returns the objective (mean −log likelihood per word)."""
        expected, objective = self.lattice.expected_counts(self.scores, self.unk_score)
        index = np.flatnonzero(expected >= 0.5)
        c = expected[index]
        self.keep(index, digamma(c) - digamma(c.sum()))
        return objective

    def prune(self, desired: int, shrinking_factor: float) -> None:
        """Drop the pieces whose removal costs the likelihood least (see the module doc)."""
        w, p, _ = self.lattice.viterbi(self.scores, self.unk_score)
        known = p >= 0
        freq = np.bincount(p[known], self.counts[w[known]], minlength=len(self.pieces))
        own_best, alt_w, alt_p = self._alternatives()
        split = own_best > self.scores  # its best segmentation is not itself
        total = freq.sum()
        n_alt = np.bincount(alt_w, minlength=len(self.pieces))
        alt_freq = np.where(alt_p >= 0, freq[np.maximum(alt_p, 0)], 0.0)  # unknown: 0
        with np.errstate(divide="ignore", invalid="ignore"):  # unused pieces: dropped below
            logsum_alt = np.log(total + freq * (n_alt - 1))
            logprob_alt = np.bincount(alt_w, np.log(alt_freq + freq[alt_w])
                                      - logsum_alt[alt_w], minlength=len(self.pieces))
            loss = freq / self.counts.sum() * (np.log(freq) - np.log(total) - logprob_alt)
        used = (freq > 0) & ~split
        always = np.flatnonzero(used & (n_alt == 0))
        ranked = np.flatnonzero(used & (n_alt > 0))
        ranked = ranked[np.argsort(-loss[ranked], kind="stable")]
        size = max(desired, int(shrinking_factor * len(self.pieces)))
        index = np.concatenate([always, ranked])[:max(size, len(always))]
        self.keep(index, self.scores[index])

    def _alternatives(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(best score of each piece's string without the piece itself, −inf if none, and
        the (piece, alternative piece) pairs of those segmentations)."""
        multi = np.flatnonzero(np.fromiter(map(len, self.pieces), np.int64) > 1)
        lat = Lattice([self.pieces[i] for i in multi.tolist()], np.ones(len(multi)),
                      PieceTable.build(self.pieces), drop_whole=True)
        w, p, best = lat.viterbi(self.scores, self.unk_score)
        own_best = np.full(len(self.pieces), -np.inf)
        own_best[multi] = best
        return own_best, multi[w], p


def _rounds(seed: int, desired: int, shrinking_factor: float) -> int:
    """How many prune rounds the seed needs to shrink to the desired size (for the bar)."""
    return max(1, math.ceil(math.log(max(seed / desired, 1)) / -math.log(shrinking_factor)) + 1)


def train_pieces(texts: Iterable[str], vocab_size: int, opts: UnigramOptions, *,
                 progress: bool = True) -> list[tuple[str, float]]:
    """The learned (piece, score) pairs, best first, without special or byte tokens."""
    contexts, words, required = load_words(texts, opts)
    n_meta = len(opts.specials()) + (256 if opts.byte_fallback else 0)
    if not words:
        raise LmforgeError("the training text is empty after normalization; give it text")
    if len(required) + n_meta >= vocab_size:
        raise LmforgeError(f"vocab_size {vocab_size} is too small: the text needs "
                           f"{len(required)} characters + {n_meta} special tokens; raise "
                           "vocab_size or lower character_coverage")
    seed = seed_pieces(contexts, max_len=opts.max_piece_length, seed_size=opts.seed_size,
                       split_by_script=opts.split_by_unicode_script)
    model = _Model([p for p, _ in seed], np.array([s for _, s in seed]), words)
    desired = int(vocab_size * 1.1)
    bar = tqdm(total=_rounds(len(seed), desired, opts.shrinking_factor), unit="round",
               desc="unigram EM", disable=not progress)
    while True:
        for _ in range(opts.num_sub_iterations):
            objective = model.em_step()
        bar.set_postfix(pieces=len(model.pieces), obj=f"{objective:.3f}")
        bar.update()
        if len(model.pieces) <= desired:
            break
        model.prune(desired, opts.shrinking_factor)
    bar.total = bar.n  # the estimate of rounds was an upper bound
    bar.close()
    return _finalize(model, required, vocab_size - n_meta)


def _finalize(model: _Model, required: dict[str, int], size: int) -> list[tuple[str, float]]:
    """Required characters first (absent ones at the lowest score plus 1e-4 per rank, as
    sentencepiece), then the best pieces up to `size`, all sorted by score."""
    scores = dict(zip(model.pieces, model.scores.tolist(), strict=True))
    low, final = float(model.scores.min()), {}
    penalty = 0.0
    for c in required:
        if c in scores:
            final[c] = scores[c]
        else:
            final[c], penalty = low + penalty, penalty + 1e-4
    for piece, score in sorted(scores.items(), key=lambda t: (-t[1], t[0])):
        if len(final) >= size:
            break
        final.setdefault(piece, score)
    if len(final) < size:
        raise LmforgeError(f"the text yields only {len(final)} pieces, fewer than the "
                           f"{size} asked for; lower vocab_size or train on more text")
    return sorted(final.items(), key=lambda t: (-t[1], t[0]))
