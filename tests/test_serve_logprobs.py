"""Log-probabilities over the API, with the official `openai` client on SmolLM2: the values
equal `lmforge.score`'s, streamed and whole, in OpenAI's completions and chat formats, and an
evaluation tool's request (token ids, echo, logprobs, max_tokens 0) scores a context and a
continuation as `score.loglikelihood` does."""

from __future__ import annotations

import math

import pytest
from serve_helpers import KEY, start_server

from lmforge import score
from lmforge.generate.config import GenerationConfig

TOL = 2e-4  # a cached, chunked prefill against one full forward (batched kernels round)


@pytest.fixture(scope="module")
def server(smollm2):
    info, srv = start_server([smollm2], ctx=512, max_batch=4, max_queue=16, kv_cache_gb=0.2)
    yield info
    srv.should_exit = True


@pytest.fixture
def client(server):
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY)


def close(a: list, b: list) -> bool:
    return len(a) == len(b) and all((x is None and y is None) or abs(x - y) <= TOL
                                    for x, y in zip(a, b, strict=True))


def test_echoed_prompt_scored_only_equals_token_logprobs(smollm2, client):
    ids = smollm2.tokenizer.encode("The quick brown fox jumps over the lazy dog.")
    out = client.completions.create(model="smollm2", prompt=ids, max_tokens=0, echo=True,
                                    logprobs=3)
    choice = out.choices[0]
    ref = score.token_logprobs(smollm2.model, ids, top=3)
    assert choice.text == smollm2.tokenizer.decode(ids)
    assert choice.logprobs.token_logprobs[0] is None and choice.logprobs.top_logprobs[0] is None
    assert close(choice.logprobs.token_logprobs, ref.tolist())
    assert choice.logprobs.tokens == [smollm2.tokenizer.decode([t]) for t in ids]
    for t in range(1, len(ids)):
        want = {smollm2.tokenizer.decode([i]): v for i, v in zip(
            ref.top_ids[t].tolist(), ref.top_logprobs[t].tolist(), strict=True)}
        got = choice.logprobs.top_logprobs[t]
        assert got.keys() == want.keys() and all(abs(got[k] - want[k]) <= TOL for k in got)
    offsets = choice.logprobs.text_offset
    assert offsets[0] == 0 and all(b >= a for a, b in zip(offsets, offsets[1:], strict=False))
    assert out.usage.completion_tokens == 0 and out.usage.prompt_tokens == len(ids)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_generated_tokens_logprobs_equal_the_scoring_layer(smollm2, client, stream):
    prompt = "The capital of France is"
    ids = smollm2.tokenizer.encode(prompt)
    kw = dict(model="smollm2", prompt=prompt, max_tokens=6, temperature=0, logprobs=2)
    if stream:
        chunks = [c for c in client.completions.create(**kw, stream=True) if c.choices]
        text = "".join(c.choices[0].text for c in chunks)
        lps = [c.choices[0].logprobs for c in chunks if c.choices[0].logprobs]
        tokens = [t for lp in lps for t in lp.tokens]
        values = [v for lp in lps for v in lp.token_logprobs]
        tops = [d for lp in lps for d in lp.top_logprobs]
    else:
        choice = client.completions.create(**kw).choices[0]
        text, tokens = choice.text, choice.logprobs.tokens
        values, tops = choice.logprobs.token_logprobs, choice.logprobs.top_logprobs
    answer = smollm2.tokenizer.encode(text, parse_special=False)
    assert "".join(tokens) == text and len(values) == 6
    ref = score.token_logprobs(smollm2.model, ids + answer)
    assert close(values, ref.tolist()[len(ids):len(ids) + len(values)])
    for tok, top in zip(tokens, tops, strict=True):  # greedy: each token is its top choice
        assert max(top, key=top.get) == tok and len(top) == 2


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_chat_logprobs_in_openais_format(smollm2, client, stream):
    kw = dict(model="smollm2", messages=[{"role": "user", "content": "Say hello."}],
              max_tokens=5, temperature=0, logprobs=True, top_logprobs=3)
    if stream:
        chunks = [c for c in client.chat.completions.create(**kw, stream=True) if c.choices]
        content = [e for c in chunks if c.choices[0].logprobs
                   for e in c.choices[0].logprobs.content]
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
    else:
        choice = client.chat.completions.create(**kw).choices[0]
        content, text = choice.logprobs.content, choice.message.content
    ids = smollm2.tokenizer.apply_chat_template(kw["messages"])
    answer = smollm2.engine.generate([ids], GenerationConfig(max_tokens=5, temperature=0))[0]
    answer = answer.token_ids
    assert [smollm2.tokenizer.decode([t]) for t in answer] == [e.token for e in content]
    assert len(content) == 5 and "".join(e.token for e in content).startswith(text)
    ref = score.token_logprobs(smollm2.model, ids + answer, top=3)
    assert close([e.logprob for e in content], ref.tolist()[len(ids):])
    for e in content:
        assert bytes(e.bytes).decode() == e.token and len(e.top_logprobs) == 3
        assert e.top_logprobs[0].token == e.token  # greedy


def test_an_evaluation_tools_request_scores_a_continuation(smollm2, client):
    """What lm-evaluation-harness's local-completions backend sends for a loglikelihood
    request: context + continuation as token ids, echo, logprobs 1, max_tokens 0; it sums
    the continuation's log-probabilities and checks each against the top alternative."""
    tok = smollm2.tokenizer
    context = tok.encode("Question: What is the capital of Italy?\nAnswer:")
    for text in (" Rome", " Paris is"):
        cont = tok.encode(text, parse_special=False)
        out = client.completions.create(model="smollm2", prompt=[context + cont], max_tokens=0,
                                        echo=True, logprobs=1, temperature=0)
        lp = out.choices[0].logprobs
        n = len(context)
        total = sum(lp.token_logprobs[n:])
        greedy = all(max(top, key=top.get) == t
                     for t, top in zip(lp.tokens[n:], lp.top_logprobs[n:], strict=True))
        ref = score.loglikelihood(smollm2.model, context, [cont])[0]
        assert math.isclose(total, ref.logprob, abs_tol=TOL * len(cont))
        assert greedy == ref.is_greedy
