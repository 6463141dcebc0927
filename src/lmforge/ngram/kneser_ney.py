"""Interpolated Kneser-Ney and modified Kneser-Ney estimation, exactly as KenLM's lmplz.

Chen & Goodman (1998), "An Empirical Study of Smoothing Techniques for Language Modeling",
and Heafield et al. (2013), "Scalable Modified Kneser-Ney Language Model Estimation".

1. Adjusted counts a(·) (lmplz adjust_counts.cc): the highest order keeps raw counts; a
   lower-order n-gram g gets its continuation count N1+(• g) = |{v : c(v g) > 0}| (v may be
   `<s>`), except n-grams that start with `<s>`, which cannot be extended to the left and
   keep their raw count. The unigram `<s>` gets 0 (it is never predicted).
2. Discounts per order n from the count-of-counts t_k = |{g : a(g) = k}| of adjusted counts
   (equation (26) in Chen and Goodman):
       Y = t1 / (t1 + 2 t2),    D_k = k − (k + 1) Y t_{k+1} / t_k     (k = 1, 2, 3+)
   Plain Kneser-Ney uses the single discount D = Y for every count.
3. Interpolation (Chen and Goodman p. 20), for a context h and its shorter context h':
       p(w | h) = (a(h w) − D(a(h w))) / Σ_x a(h x)  +  γ(h) p(w | h')
       γ(h)     = (D1 N1(h •) + D2 N2(h •) + D3 N3+(h •)) / Σ_x a(h x)
   and the unigrams interpolate with the uniform distribution 1 / (|V| − 1) over the
   vocabulary without `<s>` (so `<unk>`, never seen, gets γ(ε) / (|V| − 1)); p(<s>) = 1.
4. In ARPA back-off form the stored probability is the interpolated p(w | h), and the
   back-off weight of an n-gram h used as a context is γ(h) (1 where it is no context).

lmplz computes in float32, we in float64: the ARPA values differ by a few 1e-6.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from lmforge.errors import LmforgeError
from lmforge.ngram.counts import NgramCounts, first_words
from lmforge.ngram.vocab import BOS_ID


def adjusted_counts(counts: NgramCounts) -> list[np.ndarray]:
    """a(·) of every order (step 1 above)."""
    N, V = counts.order, counts.vocab_size
    suffix, first = counts.suffix, first_words(counts.keys, V)
    out = []
    for n in range(1, N + 1):
        c = counts.counts[n - 1]
        if n == N:
            a = c.copy()
        else:
            continuation = np.bincount(suffix[n], minlength=len(c))
            a = np.where(first[n - 1] == BOS_ID, c, continuation)
        if n == 1:
            a[BOS_ID] = 0
        out.append(a)
    return out


def discounts(a: np.ndarray, n: int, modified: bool = True) -> np.ndarray:
    """[D(0)=0, D1, D2, D3+] of one order from its adjusted counts (step 2 above)."""
    t = [int(np.count_nonzero(a == k)) for k in range(5)]
    needed = range(1, 4) if modified else range(1, 3)
    for k in needed:
        if t[k] == 0:
            raise LmforgeError(
                f"cannot compute Kneser-Ney discounts for {n}-grams: no {n}-gram has adjusted "
                f"count {k} (too little or artificial data); use a lower --order, more text, "
                "or --smoothing addk")
    y = t[1] / (t[1] + 2 * t[2])
    if not modified:
        return np.array([0.0, y, y, y])
    d = np.array([0.0] + [k - (k + 1) * y * t[k + 1] / t[k] for k in range(1, 4)])
    for k in range(1, 4):
        if not 0 <= d[k] <= k:
            raise LmforgeError(f"{n}-gram discount D{k} = {d[k]:.4f} is out of range [0, {k}] "
                               "(unusual count statistics); try --smoothing kn or addk")
    return d


def estimate(counts: NgramCounts, modified: bool = True,
             progress: bool = False) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Interpolated (modified) Kneser-Ney: log10 p and log10 back-off of every n-gram."""
    N, V = counts.order, counts.vocab_size
    a_all = adjusted_counts(counts)
    suffix = counts.suffix
    probs: list[np.ndarray] = []
    gammas: list[np.ndarray] = []
    for n in tqdm(range(1, N + 1), desc="kneser-ney", unit="order", disable=not progress):
        a, keys = a_all[n - 1], counts.keys[n - 1]
        disc = discounts(a, n, modified)[np.minimum(a, 3)]
        ctx = np.zeros(len(a), np.int64) if n == 1 else keys // V
        n_ctx = 1 if n == 1 else len(counts.keys[n - 2])
        denom = np.bincount(ctx, weights=a, minlength=n_ctx)
        safe = np.where(denom > 0, denom, 1.0)
        gamma = np.where(denom > 0, np.bincount(ctx, weights=disc, minlength=n_ctx) / safe, 0.0)
        lower = np.full(len(a), 1.0 / (V - 1)) if n == 1 else probs[n - 2][suffix[n - 1]]
        p = (a - disc) / safe[ctx] + gamma[ctx] * lower
        if n == 1:
            p[BOS_ID] = 1.0
        probs.append(p)
        gammas.append(np.where(denom > 0, gamma, 1.0))
    logp = [np.minimum(0.0, np.log10(p)) for p in probs]
    logbo = [np.log10(g) for g in gammas[1:]] + [np.zeros(len(logp[-1]))]
    return logp, logbo
