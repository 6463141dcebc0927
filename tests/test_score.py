"""`lmforge.score`: log-likelihoods of SmolLM2 equal transformers' on the same GGUF; on tiny
random models of every family, the cached continuation path equals one uncached pass,
batched equals alone, top-k is sorted and holds the argmax, the encoder's PLL equals a
mask-one-at-a-time loop; perplexity equals a direct cross-entropy computation."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED_DATA
from hypothesis import given, settings
from hypothesis import strategies as st
from test_families import FAMILIES, make

from lmforge.errors import LmforgeError
from lmforge.eval.perplexity import evaluate
from lmforge.score import loglikelihood, loglikelihood_requests, token_logprobs

MASK_ID = 63  # the tiny encoder's [MASK]: any id of its vocabulary of 64
TOL = 1e-4


def rand_ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, 64, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def parity_pairs(tokenizer) -> list[tuple[list[int], list[list[int]]]]:
    """(context, continuations) of real text: two HellaSwag items with their four endings
    and two LAMBADA passages with their last word."""
    pairs = []
    with open(SHARED_DATA / "hellaswag" / "hellaswag_val.jsonl", encoding="utf-8") as f:
        for _, line in zip(range(2), f, strict=False):
            item = json.loads(line)
            pairs.append((tokenizer.encode(item["query"]),
                          [tokenizer.encode(" " + e) for e in item["endings"]]))
    with open(SHARED_DATA / "lambada" / "lambada_test.jsonl", encoding="utf-8") as f:
        for _, line in zip(range(2), f, strict=False):
            context, word = json.loads(line)["text"].rsplit(" ", 1)
            pairs.append((tokenizer.encode(context), [tokenizer.encode(" " + word)]))
    return pairs


@torch.inference_mode()
def reference_loglikelihood(hf, context: list[int], cont: list[int]) -> tuple[float, bool]:
    """transformers: Σ log-softmax over the continuation's tokens from one full forward
    (its fp32 logits normalised in float64, as lmforge.score does: torch's fp32
    log_softmax over 49,152 logits is itself off by up to 1e-5 per token)."""
    logits = hf(torch.tensor([context + cont])).logits[0].double()
    z = logits[len(context) - 1: -1]  # output t − 1 predicts token t
    target = torch.tensor(cont)
    logprob = z.log_softmax(-1).gather(-1, target[:, None]).sum().item()
    return logprob, bool((z.argmax(-1) == target).all())


@torch.inference_mode()
def greedy_continuation(hf, context: list[int], n: int) -> list[int]:
    """transformers' argmax continuation of `context`, n tokens."""
    cont: list[int] = []
    for _ in range(n):
        cont.append(hf(torch.tensor([context + cont])).logits[0, -1].argmax().item())
    return cont


def test_loglikelihood_matches_transformers(smollm2, hf_smollm2):
    model = smollm2.model
    pairs = parity_pairs(smollm2.tokenizer)
    pairs[0][1].append(greedy_continuation(hf_smollm2, pairs[0][0], 4))  # is_greedy: True
    n, worst, greedy = 0, 0.0, 0
    for context, conts in pairs:
        ours = loglikelihood(model, context, conts)
        for c, scored in zip(conts, ours, strict=True):
            ref, ref_greedy = reference_loglikelihood(hf_smollm2, context, c)
            single = token_logprobs(model, context + c, prefix=len(context))
            worst = max(worst, abs(scored.logprob - ref), abs(single.total() - ref))
            assert scored.is_greedy == ref_greedy == bool(single.greedy[len(context):].all())
            assert len(scored.token_logprobs) == len(c)
            n, greedy = n + 1, greedy + scored.is_greedy
    assert n == 11 and greedy >= 1 and worst <= TOL, worst


def full_forward_logprobs(model, context: list[int], cont: list[int]) -> torch.Tensor:
    """log p of each continuation token by hand, from one uncached pass of the model (an
    encoder: one pass per masked copy)."""
    family = model.config.family
    ids = torch.tensor(context + cont)
    if family == "encoder":
        out = []
        for t in range(len(context), len(ids)):
            masked = ids.clone()
            masked[t] = MASK_ID
            out.append(model(masked[None])[0, t].log_softmax(-1)[ids[t]])
        return torch.stack(out)
    if family == "encoder_decoder":
        memory = model.encode(torch.tensor([context]))
        dec = torch.tensor([[model.config.decoder_start_id, *cont[:-1]]])
        return model(dec, memory=memory)[0].log_softmax(-1).gather(
            -1, torch.tensor(cont)[:, None])[:, 0]
    kw = {"prefix": torch.tensor([len(context)])} if family == "prefix" else {}
    z = model(ids[None], **kw)[0, len(context) - 1: -1].log_softmax(-1)
    return z.gather(-1, torch.tensor(cont)[:, None])[:, 0]


@pytest.mark.parametrize("family", list(FAMILIES))
@torch.inference_mode()
def test_cached_loglikelihood_equals_one_full_forward(family):
    model = make(family)
    context = rand_ids(7, 1)
    conts = [rand_ids(n, 10 + n) for n in (1, 4, 9, 2)]
    ours = loglikelihood(model, context, conts, mask_id=MASK_ID)
    for c, scored in zip(conts, ours, strict=True):
        ref = full_forward_logprobs(model, context, c)
        assert torch.allclose(torch.tensor(scored.token_logprobs), ref, atol=TOL)
        assert abs(scored.logprob - ref.sum().item()) <= TOL
        kw = {"source": context} if family == "encoder_decoder" else {"prefix": len(context)}
        seq = c if family == "encoder_decoder" else context + c
        single = token_logprobs(model, seq, mask_id=MASK_ID, **kw)
        assert abs(single.total() - scored.logprob) <= TOL
        assert scored.is_greedy == bool(single.greedy[single.scored].all())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_continuations_together_equal_alone(family):
    model = make(family)
    context = rand_ids(5, 2)
    conts = [rand_ids(n, 20 + n) for n in (3, 1, 6, 2, 5)]
    together = loglikelihood(model, context, conts, mask_id=MASK_ID)
    small_batches = loglikelihood(model, context, conts, batch=2, mask_id=MASK_ID)
    for i, c in enumerate(conts):
        alone = loglikelihood(model, context, [c], mask_id=MASK_ID)[0]
        for other in (together[i], small_batches[i]):
            assert abs(other.logprob - alone.logprob) <= TOL
            assert other.is_greedy == alone.is_greedy


@pytest.mark.parametrize("family", list(FAMILIES))
def test_requests_together_equal_one_by_one(family):
    """Several (context, continuations) requests of ragged lengths, one without
    continuations: a decoder prefills the contexts in one padded pass and mixes their
    continuations in the scoring passes; every result equals its own `loglikelihood`."""
    model = make(family)
    requests = [(rand_ids(n, 40 + n), [rand_ids(m, 50 + n + m) for m in conts])
                for n, conts in ((9, (3, 1)), (2, (5,)), (5, ()), (6, (2, 4, 1)))]
    together = loglikelihood_requests(model, requests, batch=3, mask_id=MASK_ID)
    assert [len(r) for r in together] == [2, 1, 0, 3]
    for (ctx, conts), results in zip(requests, together, strict=True):
        for c, got in zip(conts, results, strict=True):
            (alone,) = loglikelihood(model, ctx, [c], mask_id=MASK_ID)
            assert abs(got.logprob - alone.logprob) <= TOL
            assert got.is_greedy == alone.is_greedy


@pytest.mark.parametrize("family", list(FAMILIES))
def test_truncate_drops_the_oldest_context_tokens(family):
    """With truncate=True a context too long for the window (64) is cut on the left, as
    lm-evaluation-harness does: the result equals scoring the cut context by hand; a request
    that fits is unchanged; a continuation that alone overflows is still refused."""
    model = make(family)
    context, conts = rand_ids(70, 3), [rand_ids(5, 4), rand_ids(2, 5)]
    keep = 64 if family == "encoder_decoder" else 64 - 5
    cut = loglikelihood(model, context, conts, mask_id=MASK_ID, truncate=True)
    by_hand = loglikelihood(model, context[-keep:], conts, mask_id=MASK_ID)
    for a, b in zip(cut, by_hand, strict=True):
        assert abs(a.logprob - b.logprob) <= TOL
    short = loglikelihood(model, context[:20], conts, mask_id=MASK_ID, truncate=True)
    plain = loglikelihood(model, context[:20], conts, mask_id=MASK_ID)
    assert [a.logprob for a in short] == [b.logprob for b in plain]
    with pytest.raises(LmforgeError, match="does not fit this model.s context window of 64"):
        loglikelihood(model, context, [rand_ids(70, 6)], mask_id=MASK_ID, truncate=True)


def test_greedy_continuation_is_greedy():
    """The argmax continuation, built token by token, is greedy; changing its last token
    to another one is not."""
    model = make("decoder")
    context, cont = rand_ids(6, 3), []
    with torch.inference_mode():
        for _ in range(4):
            cont.append(model(torch.tensor([context + cont]))[0, -1].argmax().item())
    wrong = cont[:-1] + [(cont[-1] + 1) % 64]
    greedy, other = loglikelihood(model, context, [cont, wrong])
    assert greedy.is_greedy and not other.is_greedy
    assert greedy.logprob > other.logprob


@pytest.mark.parametrize("family", list(FAMILIES))
def test_top_k_is_sorted_and_holds_the_argmax(family):
    model = make(family)
    ids = rand_ids(10, 4)
    kw = {"source": rand_ids(6, 5)} if family == "encoder_decoder" else {"prefix": 3}
    scores = token_logprobs(model, ids, top=5, mask_id=MASK_ID, **kw)
    s = scores.scored
    top, top_ids = scores.top_logprobs[s], scores.top_ids[s]
    assert top.shape == (int(s.sum()), 5)
    assert (top[:, :-1] >= top[:, 1:]).all()
    assert (top[:, 0] >= scores.logprobs[s] - 1e-6).all()
    assert torch.equal(scores.greedy[s], top_ids[:, 0] == scores.ids[s])
    hit = top_ids == scores.ids[s][:, None]  # where the actual token is among the top 5
    assert torch.allclose(top[hit], scores.logprobs[s][hit.any(-1)], atol=1e-6)
    assert (top.exp().sum(-1) <= 1 + 1e-5).all()
    assert (scores.top_ids[~s] == -1).all() and scores.top_logprobs[~s].isnan().all()


def test_first_token_rule():
    """A decoder's token 0 has no log-probability (None, as OpenAI's API gives null); an
    encoder-decoder's target token 0 has one (the decoder starts from decoder_start_id)."""
    dec = token_logprobs(make("decoder"), rand_ids(5, 6))
    assert dec.tolist()[0] is None and None not in dec.tolist()[1:]
    assert int(dec.scored.sum()) == 4
    encdec = token_logprobs(make("encoder_decoder"), rand_ids(5, 6), source=rand_ids(3, 7))
    assert None not in encdec.tolist()
    with pytest.raises(LmforgeError, match="context is empty"):
        loglikelihood(make("decoder"), [], [[1, 2]])
    assert loglikelihood(make("encoder"), [], [[1, 2]], mask_id=MASK_ID)[0].logprob < 0


@torch.inference_mode()
def test_encoder_pll_equals_a_masking_loop():
    """Salazar et al. (2020): PLL(x) = Σ_t log p(x_t | x_\\t), one masked copy per token."""
    model = make("encoder")
    ids = rand_ids(8, 8)
    loop = 0.0
    for t in range(len(ids)):
        masked = list(ids)
        masked[t] = MASK_ID
        loop += model(torch.tensor([masked]))[0, t].log_softmax(-1)[ids[t]].item()
    scores = token_logprobs(model, ids, mask_id=MASK_ID)
    assert bool(scores.scored.all())
    assert abs(scores.total() - loop) <= TOL


def test_prefix_changes_what_a_prefix_decoder_reads():
    """The prefix is read both ways: the scores after it differ from a causal reading."""
    model = make("prefix")
    ids = rand_ids(10, 9)
    with_prefix = token_logprobs(model, ids, prefix=4).logprobs[4:]
    causal = token_logprobs(model, ids).logprobs[4:]
    assert not torch.allclose(with_prefix, causal, atol=1e-3)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(0, 63), min_size=1, max_size=12),
       st.lists(st.integers(0, 63), min_size=1, max_size=12))
def test_loglikelihood_property(context, cont):
    """For any ids: the cached sum equals the uncached sum, and it is a log-probability."""
    model = _decoder()
    scored = loglikelihood(model, context, [cont])[0]
    assert abs(scored.logprob - token_logprobs(model, context + cont,
                                               prefix=len(context)).total()) <= TOL
    assert scored.logprob <= 0 and all(lp <= 0 for lp in scored.token_logprobs)


@functools.cache
def _decoder():
    """One tiny decoder shared by the hypothesis examples (built once)."""
    return make("decoder")


@pytest.mark.parametrize("call,match", [
    (lambda m: loglikelihood(m, [1, 2], [[3], []]), "continuation 1 is empty"),
    (lambda m: loglikelihood(m, [1] * 60, [[2] * 5]), "context window is 64"),
    (lambda m: loglikelihood(m, [1, 2], [[3, 99]]), "token id 99"),
    (lambda m: token_logprobs(m, []), "empty"),
    (lambda m: token_logprobs(m, [1, 2], prefix=3), "prefix=3"),
    (lambda m: token_logprobs(m, [1] * 65), "context window is 64"),
    (lambda m: token_logprobs(make("encoder"), [1, 2]), "pass mask_id"),
    (lambda m: token_logprobs(make("encoder_decoder"), [1, 2]), "non-empty source"),
])
def test_clear_errors(call, match):
    with pytest.raises(LmforgeError, match=match):
        call(make("decoder"))


@pytest.mark.parametrize("ctx", [2, 7, 16, 64])
def test_perplexity_equals_direct_cross_entropy(ctx):
    model = make("decoder")
    ids = rand_ids(50, 11)
    result = evaluate(model, ids, n_bytes=120, ctx=ctx)
    nll, n = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(ids), ctx):
            window = torch.tensor(ids[start: start + ctx])
            if len(window) > 1:
                nll += F.cross_entropy(model(window[None])[0, :-1], window[1:],
                                       reduction="sum").item()
                n += len(window) - 1
    assert result.scored == n and result.tokens == 50
    assert math.isclose(result.nll, nll, rel_tol=1e-5)
    assert math.isclose(result.perplexity, math.exp(nll / n), rel_tol=1e-5)
    assert math.isclose(result.bits_per_byte, nll / (math.log(2) * 120), rel_tol=1e-5)


@pytest.mark.parametrize("family", ["encoder", "encoder_decoder"])
def test_perplexity_needs_a_decoder(family):
    with pytest.raises(LmforgeError, match="perplexity"):
        evaluate(make(family), rand_ids(20, 12), n_bytes=40, ctx=8)
