"""Information-theory measures: hand computations, identities (hypothesis), numpy = torch,
and the metrics of models on texts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.metrics import (
    TextMetrics,
    cross_entropy,
    entropy,
    kl_divergence,
    perplexity,
    unigram_entropy,
)


def test_hand_computed_values():
    assert entropy(np.array([0.5, 0.5])) == pytest.approx(1.0)
    assert entropy(np.array([1.0, 0.0, 0.0])) == 0.0  # 0 log 0 = 0
    assert entropy(np.full(8, 1 / 8)) == pytest.approx(3.0)
    assert entropy(np.array([0.5, 0.5]), base=math.e) == pytest.approx(math.log(2))
    p, q = np.array([0.5, 0.5]), np.array([0.9, 0.1])
    # −½ log2 0.9 − ½ log2 0.1
    assert cross_entropy(p, q) == pytest.approx(-0.5 * math.log2(0.9) - 0.5 * math.log2(0.1))
    assert perplexity(np.full(8, 1 / 8)) == pytest.approx(8.0)
    assert perplexity(p, q) == pytest.approx(2 ** cross_entropy(p, q))
    assert cross_entropy(np.array([0.5, 0.5]), np.array([1.0, 0.0])) == math.inf


def test_kl_is_asymmetric():
    p, q = np.array([0.5, 0.5]), np.array([0.9, 0.1])
    assert kl_divergence(p, q) == pytest.approx(0.7370, abs=1e-4)
    assert kl_divergence(q, p) == pytest.approx(0.5310, abs=1e-4)
    # q may not put zero mass where p has some; the other way round is fine
    r = np.array([1.0, 0.0])
    assert kl_divergence(r, p) == pytest.approx(1.0) and kl_divergence(p, r) == math.inf


distributions = st.integers(2, 12).flatmap(
    lambda n: st.tuples(*[st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n)] * 2))


def normalise(x: list[float]) -> np.ndarray:
    a = np.asarray(x) + 1e-3
    return a / a.sum()


@settings(max_examples=200, deadline=None)
@given(distributions)
def test_identities(pair):
    p, q = normalise(pair[0]), normalise(pair[1])
    assert cross_entropy(p, q) == pytest.approx(entropy(p) + kl_divergence(p, q), abs=1e-9)
    assert kl_divergence(p, q) >= -1e-12
    assert kl_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    assert 0 <= entropy(p) <= math.log2(len(p)) + 1e-12
    assert cross_entropy(p, q) >= entropy(p) - 1e-12  # Gibbs' inequality


def test_torch_equals_numpy_and_batches():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(10), size=4)
    q = rng.dirichlet(np.ones(10), size=4)
    for f in (entropy, perplexity):
        np.testing.assert_allclose(f(torch.tensor(p)).numpy(), f(p), rtol=1e-12)
    for f in (cross_entropy, kl_divergence):
        out = f(torch.tensor(p), torch.tensor(q))
        assert out.shape == (4,)
        np.testing.assert_allclose(out.numpy(), f(p, q), rtol=1e-12)
    logits = torch.randn(3, 7)
    ours = cross_entropy(torch.eye(7)[[1, 4, 6]], logits.softmax(-1), base=math.e)
    ref = torch.nn.functional.cross_entropy(logits, torch.tensor([1, 4, 6]), reduction="none")
    torch.testing.assert_close(ours, ref)


def test_unigram_entropy_and_text_metrics():
    assert unigram_entropy("a b a b".split()) == pytest.approx(1.0)
    assert unigram_entropy("a a a".split()) == 0.0 and unigram_entropy([]) == 0.0
    assert unigram_entropy("a b c d".split()) == pytest.approx(2.0)
    # a text of 10 tokens, 40 bytes, 20 characters, each token with probability 1/4
    m = TextMetrics.from_nll(10 * math.log(4), tokens=10, n_bytes=40, n_chars=20)
    assert m.cross_entropy == pytest.approx(math.log(4)) and m.perplexity == pytest.approx(4)
    assert m.bits_per_byte == pytest.approx(0.5) and m.bits_per_char == pytest.approx(1.0)
    assert m.to_dict()["tokens"] == 10
