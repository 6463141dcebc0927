"""Information-theory measures of distributions and of language models on texts.

Distributions are numpy arrays or torch tensors whose last axis sums to 1; results are in
bits unless `base` says otherwise (base e gives nats). The convention 0 · log 0 = 0 holds
throughout, so a zero of p never contributes.

    H(p)       = −Σ_x p(x) log p(x)                    entropy
    H(p, q)    = −Σ_x p(x) log q(x)                    cross-entropy
    KL(p ‖ q)  =  Σ_x p(x) log (p(x) / q(x))           Kullback-Leibler divergence
               =  H(p, q) − H(p)  ≥ 0                  (Gibbs' inequality; 0 iff p = q)

KL is not symmetric: with p = (1/2, 1/2) and q = (9/10, 1/10), KL(p ‖ q) ≈ 0.737 bits but
KL(q ‖ p) ≈ 0.531 bits. A model that gives an observed outcome no probability (q(x) = 0 where
p(x) > 0) has infinite cross-entropy and divergence.

For a model scored on a text of N tokens, B UTF-8 bytes and C characters with total negative
log-likelihood ℓ nats:

    cross-entropy = ℓ / N (nats per token),   perplexity = exp(ℓ / N)
    bits per byte = ℓ / (B ln 2),             bits per character = ℓ / (C ln 2)

Perplexity depends on the tokenization; bits per byte and per character do not, so they
compare models with different tokenizers (a word n-gram model and a subword Transformer).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch

Array = np.ndarray | torch.Tensor


def _xlogy(x: Array, y: Array) -> Array:
    """x · log y elementwise, 0 where x = 0 (also when y = 0)."""
    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        return torch.special.xlogy(torch.as_tensor(x), torch.as_tensor(y))
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x == 0, 0.0, x * np.log(np.where(x == 0, 1.0, y)))


def _sum(values: Array) -> Array:
    return values.sum(-1) if isinstance(values, torch.Tensor) else np.sum(values, axis=-1)


def entropy(p: Array, base: float = 2.0) -> Array:
    """H(p) = −Σ p log p over the last axis."""
    return -_sum(_xlogy(p, p)) / math.log(base)


def cross_entropy(p: Array, q: Array, base: float = 2.0) -> Array:
    """H(p, q) = −Σ p log q over the last axis: the cost of coding p with a code made for q."""
    return -_sum(_xlogy(p, q)) / math.log(base)


def kl_divergence(p: Array, q: Array, base: float = 2.0) -> Array:
    """KL(p ‖ q) = Σ p log(p / q) = H(p, q) − H(p); asymmetric, ≥ 0, 0 iff p = q."""
    return _sum(_xlogy(p, p) - _xlogy(p, q)) / math.log(base)


def perplexity(p: Array, q: Array | None = None) -> Array:
    """2^H(p) (the number of equally likely outcomes with the same uncertainty), or 2^H(p, q)
    of a model q on data distributed as p."""
    h = entropy(p) if q is None else cross_entropy(p, q)
    return 2.0 ** h


def unigram_entropy(tokens: Iterable[str], base: float = 2.0) -> float:
    """Entropy of the empirical unigram distribution c(w) / N of a token sequence."""
    counts = np.array(list(Counter(tokens).values()), dtype=np.float64)
    if counts.size == 0:
        return 0.0
    return float(entropy(counts / counts.sum(), base))


@dataclass
class TextMetrics:
    """A model's scores on one text, from its total negative log-likelihood (nats)."""

    tokens: int  # tokens whose probabilities make up `nll`
    bytes: int
    chars: int
    nll: float
    cross_entropy: float  # nats per token
    perplexity: float
    bits_per_byte: float
    bits_per_char: float

    @classmethod
    def from_nll(cls, nll: float, tokens: int, n_bytes: int, n_chars: int) -> TextMetrics:
        """cross-entropy = ℓ/N, perplexity = e^(ℓ/N), bits per byte = ℓ/(B ln 2), per char
        = ℓ/(C ln 2)."""
        ce = nll / tokens
        return cls(tokens, n_bytes, n_chars, nll, ce, math.exp(ce),
                   nll / (math.log(2) * n_bytes), nll / (math.log(2) * n_chars))

    def to_dict(self) -> dict:
        return asdict(self)
