"""Generation on tiny random models with a character tokenizer: processors, sampling,
beam search, stop strings, streaming, batching and seeds."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.data.lines import N_SENTINELS, specials_for
from lmforge.errors import LmforgeError
from lmforge.generate import processors as P
from lmforge.generate.beam import beam_search
from lmforge.generate.cache import KVCache
from lmforge.generate.config import GenerationConfig
from lmforge.generate.engine import Engine, Rows, Timing, generate_ids
from lmforge.generate.fill import _split_spans, fill_spans, greedy_target
from lmforge.generate.text import TextStream
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.tokenizers.char import CharTokenizer

TOK = CharTokenizer.from_text("abcdefgh .", eos="<eos>")


@pytest.fixture(scope="module")
def engine() -> Engine:
    config = ModelConfig(vocab_size=TOK.vocab_size, d_model=32, n_layer=2, n_head=4,
                         n_kv_head=2, d_ff=64, max_seq_len=96)
    model = Transformer(config)
    model.init_weights(std=0.3, seed=1)
    return Engine(model, TOK)


def state(rows: list[list[int]], vocab: int = 8) -> P.DecodeState:
    return P.DecodeState.start(rows, vocab)


def test_top_k_top_p_min_p_keep_the_right_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1]]))
    s = state([[0]], 4)
    finite = lambda x: torch.isfinite(x)[0].tolist()  # noqa: E731
    assert finite(P.top_k(2)(logits.clone(), s)) == [True, True, False, False]
    assert finite(P.top_p(0.7)(logits.clone(), s)) == [True, True, False, False]
    assert finite(P.top_p(0.75)(logits.clone(), s)) == [True, True, False, False]
    assert finite(P.top_p(0.76)(logits.clone(), s)) == [True, True, True, False]
    assert finite(P.top_p(0.01)(logits.clone(), s)) == [True, False, False, False]
    assert finite(P.min_p(0.3)(logits.clone(), s)) == [True, True, True, False]


def test_penalties_follow_their_formulas():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    s = state([[0, 1]], 4)
    s.append([0])
    s.append([0])
    out = P.repetition_penalty(2.0)(logits.clone(), s)
    assert out.tolist() == [[1.0, -4.0, 1.0, 0.5]]
    out = P.presence_frequency_penalty(0.5, 0.25)(logits.clone(), s)
    assert out.tolist() == [[2.0 - 0.5 - 0.5, -2.0, 1.0, 0.5]]
    out = P.logit_bias({3: -100.0}, 4)(logits.clone(), s)
    assert out[0, 3] == -99.5


def test_no_repeat_ngram_bans_completions():
    s = state([[1, 2, 3, 1, 2]], 5)
    out = P.no_repeat_ngram(3)(torch.zeros(1, 5), s)
    assert torch.isinf(out[0, 3]) and torch.isfinite(out[0, [0, 1, 2, 4]]).all()


def test_temperature_zero_is_argmax_and_config_validates():
    assert P.sample(torch.tensor([[0.1, 3.0, 0.2]]), None) == [1]
    with pytest.raises(LmforgeError, match="top_p"):
        GenerationConfig(top_p=0)
    with pytest.raises(LmforgeError, match="max_tokens"):
        GenerationConfig(max_tokens=0)
    with pytest.raises(LmforgeError, match="max_token"):
        GenerationConfig.from_dict({"max_token": 3})


def test_text_stream_holds_back_possible_stop_strings():
    stream = TextStream(TOK, ["cde"])
    out = [stream.push(i) for i in TOK.encode("abcdcde", parse_special=False)]
    assert "".join(d for d, _ in out) == "abcd"
    assert [s for _, s in out] == [False] * 6 + [True]
    assert [d for d, _ in out][:3] == ["a", "b", ""]  # "c" waits: it may start "cde"


@settings(max_examples=30, deadline=None)
@given(st.text(alphabet="abcdefgh .", max_size=20), st.lists(
    st.text(alphabet="abc", min_size=1, max_size=3), max_size=2))
def test_text_stream_equals_cutting_the_whole_text(text, stops):
    stream = TextStream(TOK, stops)
    emitted, stopped = "", False
    for i in TOK.encode(text, parse_special=False):
        delta, stopped = stream.push(i)
        emitted += delta
        if stopped:
            break
    if not stopped:
        emitted += stream.close()
    # the answer ends at the first prefix holding a stop string, cut where that string starts
    cut = len(text)
    for end in range(1, len(text) + 1):
        hits = [i for s in stops if (i := text[:end].find(s)) >= 0]
        if hits:
            cut = min(hits)
            break
    assert emitted == text[:cut]


def test_greedy_batch_equals_single_rows(engine):
    prompts = [TOK.encode("abc"), TOK.encode("hg fed"), TOK.encode("a")]
    config = GenerationConfig(max_tokens=12, temperature=0)
    batched = engine.generate(prompts, config)
    for p, b in zip(prompts, batched, strict=True):
        assert engine.generate([p], config)[0] == b


def test_seeded_sampling_is_reproducible_and_batch_independent(engine):
    config = GenerationConfig(max_tokens=16, temperature=1.2, top_k=5, seed=7)
    a = engine.generate([TOK.encode("abc")], config)
    b = engine.generate([TOK.encode("abc"), TOK.encode("dd")], config)
    assert a[0] == engine.generate([TOK.encode("abc")], config)[0] == b[0]
    other = engine.generate([TOK.encode("abc")], GenerationConfig(**{**config.to_dict(),
                                                                     "seed": 8}))
    assert other[0].token_ids != a[0].token_ids


def test_n_answers_share_one_prefill(engine):
    config = GenerationConfig(max_tokens=10, temperature=1.0, n=3, seed=3)
    out = engine.generate([TOK.encode("ab")], config)
    assert len(out) == 3 and len({tuple(o.token_ids) for o in out}) > 1
    assert engine.timing.prompt_tokens == 2


def test_stop_tokens_min_tokens_and_finish_reasons(engine):
    eos = TOK.special.eos
    always_eos = GenerationConfig(max_tokens=5, temperature=0, logit_bias={eos: 100})
    out = engine.generate([TOK.encode("ab")], always_eos)[0]
    assert out.token_ids == [eos] and out.text == "" and out.finish_reason == "stop"
    forced = GenerationConfig(**{**always_eos.to_dict(), "min_tokens": 3})
    out = engine.generate([TOK.encode("ab")], forced)[0]
    assert len(out.token_ids) == 4 and out.token_ids[-1] == eos
    out = engine.generate([TOK.encode("ab")], GenerationConfig(max_tokens=4, temperature=0,
                                                               logit_bias={eos: -100}))[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 4


def test_stream_deltas_join_to_the_answer(engine):
    config = GenerationConfig(max_tokens=20, temperature=0.9, seed=1, stop=["e"])
    deltas = list(engine.stream([TOK.encode("ab")], config))
    whole = engine.generate([TOK.encode("ab")], config)[0]
    assert "".join(d.text for d in deltas) == whole.text and "e" not in whole.text
    assert deltas[-1].finish_reason == whole.finish_reason
    assert all(d.finish_reason is None for d in deltas[:-1])


def test_beam_search_finds_the_best_sequence_exhaustively(engine):
    """With as many beams as sequences, beam search is exhaustive search."""
    prompt = TOK.encode("abc")
    config = GenerationConfig(max_tokens=2, num_beams=64, length_penalty=0.0, temperature=0)
    best = beam_search(engine.model, prompt, config, [], Timing())[0]
    model = engine.model
    scores = {}
    with torch.inference_mode():
        first = model(torch.tensor([prompt]))[0, -1].log_softmax(-1)
        for a, b in itertools.product(range(TOK.vocab_size), repeat=2):
            second = model(torch.tensor([prompt + [a]]))[0, -1].log_softmax(-1)
            scores[(a, b)] = (first[a] + second[b]).item()
    top = max(scores, key=scores.get)
    assert tuple(best.tokens) == top and math.isclose(best.score, scores[top], abs_tol=1e-4)


def test_beam_search_through_the_engine(engine):
    out = engine.generate([TOK.encode("ab")], GenerationConfig(max_tokens=8, num_beams=4, n=2))
    assert len(out) == 2 and all(o.finish_reason in ("stop", "length") for o in out)


@pytest.fixture(scope="module")
def t5() -> Transformer:
    """A random encoder-decoder whose vocabulary holds TOK's ids, then [PAD] [CLS] [SEP]
    [MASK] and the 100 sentinels (the ids `specials_for(TOK)` reserves)."""
    config = ModelConfig(vocab_size=TOK.vocab_size + 4 + N_SENTINELS, d_model=32, n_layer=2,
                         n_head=4, n_kv_head=2, d_ff=64, max_seq_len=96,
                         family="encoder_decoder", position="relative", n_encoder_layer=2)
    model = Transformer(config)
    model.init_weights(std=0.3, seed=0)
    return model.eval()


@torch.inference_mode()
def uncached_greedy(model: Transformer, source: list[int], stop_id: int, max_tokens: int
                    ) -> list[int]:
    """The reference: every token from a full pass over the whole decoder prefix."""
    memory = model.cross_memory(model.encode(torch.tensor([source])))
    dec = [model.config.decoder_start_id]
    for _ in range(max_tokens):
        nxt = int(model(torch.tensor([dec]), memory=memory)[0, -1].argmax())
        if nxt == stop_id:
            break
        dec.append(nxt)
    return dec[1:]


def test_greedy_target_through_the_cache_equals_the_uncached_loop(t5):
    never = t5.config.vocab_size
    for source in ([15, 1, 2, 16, 3, 4], [0, 15, 5, 6, 7, 16, 8, 9]):
        free = uncached_greedy(t5, source, never, 30)
        assert greedy_target(t5, source, never, 30) == free and len(free) == 30
        stop = free[7]
        cut = uncached_greedy(t5, source, stop, 30)
        assert greedy_target(t5, source, stop, 30) == cut == free[: free.index(stop)]


def test_fill_spans_decodes_one_token_per_step_like_the_uncached_loop(t5, monkeypatch):
    text = "".join(f"{c}<extra_id_{k}>" for k, c in enumerate("abcdefgh . ab"))
    sp = specials_for(TOK)
    sentinels = list(sp.sentinels[:13])
    source = [i for c, s in zip("abcdefgh . ab", sentinels, strict=True)
              for i in (*TOK.encode(c, parse_special=False), s)]
    spans = _split_spans(uncached_greedy(t5, source, sp.sep, 40), sentinels, TOK)
    widths = []
    forward = Transformer.forward

    def record(self, ids, *args, **kw):
        widths.append(ids.shape[1])
        return forward(self, ids, *args, **kw)

    monkeypatch.setattr(Transformer, "forward", record)
    filled, got = fill_spans(t5, TOK, text, max_tokens=40)
    assert got == spans and any(spans)
    assert filled == "".join(c + s for c, s in zip("abcdefgh . ab", spans, strict=True))
    assert widths and set(widths) == {1}  # the decoder never re-reads its prefix


def answers(model: Transformer, prompts: list[list[int]], config: GenerationConfig,
            stop_ids: list[int]) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in prompts]
    for step in generate_ids(model, prompts, config, stop_ids, Rows([None] * len(prompts))):
        for row, tok in step:
            out[row].append(tok)
    return out


def test_ragged_encoder_decoder_batch_reads_memory_views_only_when_rows_finish(
        t5, monkeypatch):
    """Each slot keeps its encoder output in the cache; a batch's view of them is built
    again only when its set of rows changes, not at every decode step."""
    stop = TOK.special.eos
    prompts = [TOK.encode(p) for p in ("abc", "hg fed", "a", "ddd. ab", "gg", "h.h.")]
    config = GenerationConfig(max_tokens=16, temperature=0, logit_bias={stop: 3.0})
    singles = [answers(t5, [p], config, [stop])[0] for p in prompts]
    views = []
    cross = KVCache.cross

    def counted(self, slots):
        before = self._cross_view
        memory = cross(self, slots)
        if self._cross_view is not before:
            views.append(tuple(slots))
        return memory

    monkeypatch.setattr(KVCache, "cross", counted)
    batched = answers(t5, prompts, config, [stop])
    assert batched == singles
    lengths = sorted({len(a) for a in batched})
    assert len(lengths) >= 3  # ragged: rows end at different steps
    # each prompt's own slot while it prefills; then one view per set of running rows: the
    # rows that have not ended by step k are those of length >= k (step 1 is the prefill's)
    n = len(prompts)
    assert views[:n] == [(r,) for r in range(n)]
    assert views[n:] == [tuple(r for r in range(n) if len(batched[r]) >= k)
                         for k in lengths if k >= 2]

def test_text_stream_decodes_a_bounded_window_per_token():
    """Streaming costs the same per token at any answer length: each push decodes only the
    ids since the last complete character, never the whole answer."""
    widths = []

    class Counting(CharTokenizer):
        def decode(self, ids, skip_special=False):
            widths.append(len(ids))
            return super().decode(ids, skip_special=skip_special)

    tok = Counting.from_text("abcdefgh .", eos="<eos>")
    stream = TextStream(tok, ["zz"])
    text = "abc defgh." * 100
    out = "".join(stream.push(i)[0] for i in tok.encode(text, parse_special=False))
    assert out + stream.close() == text
    assert max(widths) <= 2


def test_ids_the_tokenizer_cannot_decode_are_never_chosen(t5):
    """The span model's sentinels lie past the character vocabulary: a prompt without
    sentinels must still give text, so they are masked out of the choice."""
    engine = Engine(t5, TOK)
    bias = {TOK.vocab_size + k: 100.0 for k in range(4)}  # push the sentinels to the top
    for config in (GenerationConfig(max_tokens=6, temperature=0, logit_bias=bias),
                   GenerationConfig(max_tokens=6, temperature=1.0, seed=0, logit_bias=bias),
                   GenerationConfig(max_tokens=6, temperature=0, num_beams=2,
                                    logit_bias=bias)):
        out = engine.generate([TOK.encode("abc")], config)[0]
        assert all(t < TOK.vocab_size for t in out.token_ids)
        assert out.text == TOK.decode(out.token_ids, skip_special=True)
