"""Add-k (Laplace for k = 1) estimation in ARPA back-off form.

For an n-gram h w seen c(h w) > 0 times, with c(h) = Σ_x c(h x) and V' the vocabulary
without `<s>` (the words that can follow a context):

    p(w | h) = (c(h w) + k) / (c(h) + k V')

Unseen words get the remaining mass of h, shared in proportion to the shorter context's
distribution (Katz's back-off, as SRILM's `-addsmooth`):

    α(h) = (1 − Σ_{w: c(h w)>0} p(w | h)) / (1 − Σ_{w: c(h w)>0} p(w | h'))

Unigrams are add-k over the whole vocabulary, so every word has a probability.
"""

from __future__ import annotations

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.ngram.counts import NgramCounts
from lmforge.ngram.vocab import BOS_ID


def estimate(counts: NgramCounts, k: float = 1.0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """log10 p and log10 α of every n-gram."""
    if not k > 0:
        raise LmforgeError(f"--k must be positive, got {k}")
    V = counts.vocab_size
    followers = V - 1
    c1 = counts.counts[0].astype(np.float64)
    c1[BOS_ID] = 0
    p1 = (c1 + k) / (c1.sum() + k * followers)
    p1[BOS_ID] = 1.0
    probs, alphas = [p1], []
    suffix = counts.suffix
    for n in range(2, counts.order + 1):
        c, ctx = counts.counts[n - 1], counts.keys[n - 1] // V
        n_ctx = len(counts.keys[n - 2])
        total = np.bincount(ctx, weights=c, minlength=n_ctx)
        p = (c + k) / (total[ctx] + k * followers)
        seen = np.bincount(ctx, weights=p, minlength=n_ctx)
        seen_lower = np.bincount(ctx, weights=probs[n - 2][suffix[n - 1]], minlength=n_ctx)
        # a context whose followers are all seen has no mass left to share
        ok = (total > 0) & (seen_lower < 1 - 1e-12)
        alphas.append(np.where(ok, (1 - seen) / np.where(ok, 1 - seen_lower, 1.0), 1.0))
        probs.append(p)
    logp = [np.log10(p) for p in probs]
    logbo = [np.log10(a) for a in alphas] + [np.zeros(len(logp[-1]))]
    return logp, logbo
