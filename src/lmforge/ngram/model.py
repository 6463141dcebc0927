"""An n-gram language model in ARPA back-off form: training, scoring and sampling.

The model stores, for every order n, the sorted trie keys of its n-grams (see
`lmforge.ngram.counts`), their log10 probabilities and their log10 back-off weights. A word
w after a history h is scored with the back-off rule (Katz 1987; the ARPA convention):

    log p(w | h) = log p*(h_m w) + Σ_{k=m}^{N-1} log b(h_k)

where h_m w is the longest stored n-gram that ends the history, h_k the last k words of h,
and b(h_k) = 1 when h_k is not stored. Sentences are scored as `<s> w1 … wk </s>`: every word
and the end marker, never `<s>` (as KenLM's `score(s, bos=True, eos=True)`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.ngram import addk, kneser_ney
from lmforge.ngram.counts import Corpus, count_ngrams, lookup
from lmforge.ngram.vocab import BOS_ID, EOS_ID, UNK_ID, Vocabulary, build_vocabulary

SMOOTHINGS = ("mkn", "kn", "addk")


@dataclass
class CorpusScore:
    """log10 probabilities of every scored token (the words and one `</s>` per sentence)."""

    log10p: np.ndarray
    oov: np.ndarray  # bool: the word is not in the vocabulary (scored as <unk>)
    sentences: int

    @property
    def tokens(self) -> int:
        return len(self.log10p)

    @property
    def oovs(self) -> int:
        return int(self.oov.sum())

    def perplexity(self, include_oov: bool = False) -> float:
        """SRILM's convention by default: 10^(−Σ log10 p / (tokens − OOVs)), OOVs left out;
        with include_oov, KenLM's `perplexity()`: OOVs scored as <unk> and counted."""
        keep = np.ones_like(self.oov) if include_oov else ~self.oov
        n = int(keep.sum())
        if n == 0:
            raise LmforgeError("nothing to score: every token is out of the vocabulary")
        return float(10 ** (-self.log10p[keep].sum() / n))


@dataclass
class NgramModel:
    vocab: Vocabulary
    keys: list[np.ndarray]
    logp: list[np.ndarray]
    logbo: list[np.ndarray]

    @property
    def order(self) -> int:
        return len(self.keys)

    @property
    def sizes(self) -> list[int]:
        return [len(k) for k in self.keys]

    def encode(self, sentences: list[list[str]]) -> tuple[Corpus, np.ndarray]:
        """The corpus of word ids and its OOV mask (aligned with `Corpus.seq`)."""
        get = self.vocab.ids.get
        ids = [[get(w, -1) for w in s] for s in sentences]
        corpus = Corpus.from_ids(ids)
        oov = corpus.seq < 0
        corpus.seq[oov] = UNK_ID
        return corpus, oov

    def match_rows(self, corpus: Corpus) -> list[np.ndarray]:
        """For each order n, the row of the n-gram ending at each position (-1: not stored)."""
        seq, V = corpus.seq, len(self.vocab)
        rows = [seq.copy()]
        same = corpus.start[1:] == corpus.start[:-1]
        for n in range(2, self.order + 1):
            prev = rows[-1]
            r = np.full_like(seq, -1)
            m = same & (prev[:-1] >= 0)
            r[1:][m] = lookup(self.keys[n - 1], prev[:-1][m] * V + seq[1:][m])
            rows.append(r)
        return rows

    def score_corpus(self, sentences: list[list[str]]) -> CorpusScore:
        """Back-off log10 probability of every word and `</s>` of every sentence."""
        corpus, oov = self.encode(sentences)
        rows = self.match_rows(corpus)
        found = np.stack([r >= 0 for r in rows])  # (N, T)
        longest = self.order - np.argmax(found[::-1], axis=0)  # m per position
        total = np.zeros(len(corpus.seq))
        for n in range(1, self.order + 1):
            at = longest == n
            total[at] = self.logp[n - 1][rows[n - 1][at]]
        for k in range(1, self.order):
            ctx = np.full_like(corpus.seq, -1)
            ctx[1:] = rows[k - 1][:-1]
            use = (k >= longest) & (ctx >= 0)
            total[use] += self.logbo[k - 1][ctx[use]]
        keep = np.arange(len(corpus.seq)) != corpus.start  # every token but <s>
        return CorpusScore(total[keep], oov[keep], len(sentences))

    def score(self, sentence: str) -> float:
        """log10 p(<s> sentence </s>) given `<s>`, as KenLM's score(s, bos=True, eos=True)."""
        return float(self.score_corpus([sentence.split()]).log10p.sum())

    def context_rows(self, context: list[int]) -> list[int]:
        """Rows of the last 1, 2, … words of `context` while they are stored."""
        V, rows = len(self.vocab), []
        for k in range(1, min(len(context), self.order - 1) + 1):
            row = context[-k]
            for j, w in enumerate(context[len(context) - k + 1:], start=1):
                row = int(lookup(self.keys[j], np.array([row * V + w]))[0])
                if row < 0:
                    return rows
            rows.append(row)
        return rows

    def distribution(self, context: list[int]) -> np.ndarray:
        """p(· | context) over the vocabulary by the back-off rule (p(<s>) = 0)."""
        V = len(self.vocab)
        logd = self.logp[0].copy()
        for k, row in enumerate(self.context_rows(context), start=1):
            logd += self.logbo[k - 1][row]
            lo, hi = np.searchsorted(self.keys[k], [row * V, (row + 1) * V])
            logd[self.keys[k][lo:hi] % V] = self.logp[k][lo:hi]
        p = 10.0 ** logd
        p[BOS_ID] = 0.0
        return p / p.sum()

    def sample(self, rng: np.random.Generator, max_words: int = 50,
               prefix: list[str] | None = None) -> list[str]:
        """Words drawn one at a time from p(· | history) until `</s>` or max_words."""
        context = [BOS_ID] + self.vocab.encode(prefix or [])
        out: list[str] = []
        while len(out) < max_words:
            w = int(rng.choice(len(self.vocab), p=self.distribution(context)))
            if w == EOS_ID:
                break
            out.append(self.vocab.words[w])
            context.append(w)
        return out


def train(sentences: list[list[str]], order: int = 5, smoothing: str = "mkn",
          k: float = 1.0, min_count: int = 1, closed: bool = False,
          progress: bool = False) -> NgramModel:
    """Count and smooth an n-gram model: `mkn` (modified Kneser-Ney, lmplz's estimator),
    `kn` (interpolated Kneser-Ney) or `addk` (add-k with back-off)."""
    if smoothing not in SMOOTHINGS:
        raise LmforgeError(f"unknown smoothing {smoothing!r}; choose one of {SMOOTHINGS}")
    if not sentences:
        raise LmforgeError("the training text is empty")
    vocab = build_vocabulary(sentences, min_count, closed)
    corpus = Corpus.from_ids([vocab.encode(s) for s in sentences])
    counts = count_ngrams(corpus, order, len(vocab), progress)
    if smoothing == "addk":
        logp, logbo = addk.estimate(counts, k)
    else:
        logp, logbo = kneser_ney.estimate(counts, smoothing == "mkn", progress)
    return NgramModel(vocab, counts.keys, logp, logbo)
