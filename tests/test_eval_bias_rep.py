"""Bias (CrowS-Pairs), repetition (rep-n, distinct-n) and label-word classification on tiny
random models with a character tokenizer, against `lmforge.score` called directly."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import SHARED_DATA
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.api import LoadedModel
from lmforge.errors import LmforgeError
from lmforge.eval import bias, classify, repetition
from lmforge.eval.pairs import encode_pair
from lmforge.generate.config import GenerationConfig
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.score import loglikelihood, token_logprobs
from lmforge.tokenizers.char import CharTokenizer


def tiny_lm(text: str, seed: int = 1, max_seq_len: int = 512) -> LoadedModel:
    """A 2-layer random decoder over the characters of `text`, with <bos> and <eos>."""
    tok = CharTokenizer.from_text(text, bos="<bos>", eos="<eos>")
    config = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layer=2, n_head=4,
                         n_kv_head=2, d_ff=64, max_seq_len=max_seq_len)
    model = Transformer(config)
    model.init_weights(std=0.3, seed=seed)
    return LoadedModel(model.eval(), tok, "tiny", "test", {})


# rep-n and distinct-n

@pytest.mark.parametrize("ids, n, expected", [
    ([1, 2, 1, 2, 1], 2, 0.5),  # 12 21 12 21: 2 unique of 4
    ([1, 2, 1, 2, 1], 1, 0.6),  # 2 unique of 5
    ([7, 7, 7, 7], 1, 0.75),
    ([7, 7, 7, 7], 3, 0.5),  # 777 777
    ([1, 2, 3, 4], 2, 0.0),
])
def test_rep_n_by_hand(ids, n, expected):
    assert repetition.rep_n(ids, n) == pytest.approx(expected)


@pytest.mark.parametrize("seqs, n, expected", [
    ([[1, 2, 3], [1, 2, 4]], 2, 0.75),  # 12 23 12 24
    ([[1, 2, 3], [1, 2, 4]], 1, 4 / 6),
    ([[5, 5], [5, 5]], 2, 0.5),
])
def test_distinct_n_by_hand(seqs, n, expected):
    assert repetition.distinct_n(seqs, n) == pytest.approx(expected)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=1, max_size=40), st.integers(1, 4))
def test_rep_n_properties(ids, n):
    distinct = list(dict.fromkeys(ids))  # the same tokens, each once
    if len(distinct) >= n:
        assert repetition.rep_n(distinct, n) == 0.0
    if len(ids) >= n:
        assert 0.0 <= repetition.rep_n(ids, n) <= 1.0
        assert 0.0 < repetition.distinct_n([ids], n) <= 1.0
        assert repetition.distinct_n([ids], n) == pytest.approx(1 - repetition.rep_n(ids, n))


def test_rep_n_errors():
    with pytest.raises(LmforgeError, match="at least 3 tokens"):
        repetition.rep_n([1, 2], 3)
    with pytest.raises(LmforgeError, match="at least 1"):
        repetition.ngrams([1, 2], 0)


def test_repetition_report_greedy_vs_no_repeat():
    lm = tiny_lm("abcdefgh .")
    prompts = ["abc", "hag d"]
    runs = {"greedy": GenerationConfig(temperature=0),
            "no_repeat_2": GenerationConfig(temperature=0, no_repeat_ngram_size=2)}
    greedy, no_repeat = repetition.repetition_report(lm, prompts, runs, length=16, ns=(1, 2))
    for r in (greedy, no_repeat):
        assert [len(c) for c in r.continuations] == [16, 16]
    assert no_repeat.rep[2] == 0.0
    assert greedy.rep[2] > 0.0  # this random model loops under greedy decoding
    ids = [lm.tokenizer.encode(p) for p in prompts]
    expected = [c.token_ids for c in lm.engine.generate(ids, repetition.fixed_length(
        runs["greedy"], 16))]
    assert greedy.continuations == expected
    total = sum(token_logprobs(lm.model, p + c, prefix=len(p)).total()
                for p, c in zip(ids, expected, strict=True))
    assert greedy.perplexity == pytest.approx(math.exp(-total / 32), rel=1e-5)
    assert greedy.rep[1] == pytest.approx(sum(repetition.rep_n(c, 1) for c in expected) / 2)
    assert "| no_repeat_2 | 0." in repetition.format_table([greedy, no_repeat])


# CrowS-Pairs

CROWS = SHARED_DATA / "crows-pairs" / "crows_pairs_anonymized.csv"


def test_crows_pairs_loader_reads_the_real_file():
    pairs = bias.load_crows_pairs(CROWS)
    assert len(pairs) == 1508
    first = pairs[0]
    assert first.sent_more.startswith("He couldn't figure out the issue with the rope")
    assert "most black kids" in first.sent_more and "most white kids" in first.sent_less
    assert (first.direction, first.bias_type) == ("stereo", "race-color")
    counts = {t: sum(p.bias_type == t for p in pairs) for t in ("race-color", "gender", "age")}
    assert counts == {"race-color": 516, "gender": 262, "age": 87}  # the data README's


def test_crows_pairs_missing_file(tmp_path):
    with pytest.raises(LmforgeError, match="not found"):
        bias.load_crows_pairs(tmp_path / "nope.csv")


def test_crows_pairs_scores_from_the_start_token():
    pairs = bias.load_crows_pairs(CROWS)[:6]
    text = "".join(p.sent_more + p.sent_less for p in pairs)
    lm = tiny_lm(text)
    bos = lm.tokenizer.special.bos
    report = bias.crows_pairs(lm, pairs, batch=3)
    for r in report.records:
        for s, ll in ((r.pair.sent_more, r.ll_more), (r.pair.sent_less, r.ll_less)):
            direct = token_logprobs(lm.model, [bos, *lm.tokenizer.encode(s)]).total()
            assert ll == pytest.approx(direct, abs=1e-4)
    lls = [(r.ll_more, r.ll_less) for r in report.records]
    assert report.overall.n == 6
    assert report.overall.pct_stereotype == sum(a > b for a, b in lls) / 6
    assert report.overall.likelihood_difference == pytest.approx(
        sum(abs(a - b) for a, b in lls) / 6)
    assert sum(m.n for m in report.by_type.values()) == 6


def test_crows_pairs_direction_is_forced():
    # a sentence extended by more tokens always has a lower log-likelihood (each log p < 0)
    lm = tiny_lm("abcdefgh .")
    short, long = "abc de", "abc de fgh"
    report = bias.crows_pairs(lm, [bias.CrowsPair(short, long, "stereo", "x"),
                                   bias.CrowsPair(long, short, "stereo", "y")])
    assert report.by_type["x"].pct_stereotype == 1.0
    assert report.by_type["y"].pct_stereotype == 0.0
    assert report.overall.pct_stereotype == 0.5


# classification

SST2 = SHARED_DATA / "sst2"
CHN = SHARED_DATA / "chnsenticorp"


def test_loaders_read_the_real_files():
    dev = classify.load_sst2("dev", SST2)
    assert len(dev) == 872 and sum(e.label for e in dev) == 444
    assert dev[0] == classify.Example("it 's a charming and often affecting journey . ", 1)
    test = classify.load_chnsenticorp("test", CHN)
    assert len(test) == 776 and sum(e.label for e in test) == 532


def test_loaders_fail_clearly(tmp_path):
    with pytest.raises(LmforgeError, match="not found"):
        classify.load_sst2("dev", tmp_path)
    with pytest.raises(LmforgeError, match="not found"):
        classify.load_chnsenticorp("test", tmp_path)
    with pytest.raises(LmforgeError, match="splits"):
        classify.load_sst2("test", SST2)


def test_sst2_prompt_is_the_harness_one():
    ex = classify.Example("a gem .", 1)
    shot = classify.Example("dull .", 0)
    assert classify.SST2.context(ex) == (
        "a gem .\nQuestion: Is this sentence positive or negative?\nAnswer:")
    assert classify.SST2.context(ex, [shot]) == (
        "dull .\nQuestion: Is this sentence positive or negative?\nAnswer: negative\n\n"
        "a gem .\nQuestion: Is this sentence positive or negative?\nAnswer:")
    assert classify.SST2.labels == (" negative", " positive")


def test_encode_pair_moves_trailing_spaces():
    tok = CharTokenizer.from_text("ab: ")
    assert encode_pair(tok, "ab: ", "a") == (tok.encode("ab:"), tok.encode(" a"))


@pytest.mark.parametrize("k", [0, 2])
def test_classify_equals_argmax_of_loglikelihood(k):
    dev = classify.load_sst2("dev", SST2)[:4]
    shots = classify.few_shot(classify.load_sst2("train", SST2)[:50], k, seed=3)
    t = classify.SST2
    lm = tiny_lm("".join(t.context(e, shots) for e in dev) + "".join(t.labels), seed=2)
    report = classify.classify(lm, dev, t, shots)
    for ex, rec in zip(dev, report.records, strict=True):
        ctx = lm.tokenizer.encode(t.context(ex, shots))
        lls = [r.logprob for r in loglikelihood(lm.model, ctx, [lm.tokenizer.encode(w)
                                                                for w in t.labels])]
        assert rec.logprobs == pytest.approx(tuple(lls), abs=1e-4)
        assert rec.predicted == int(torch.tensor(lls).argmax())
    assert report.accuracy == sum(r.predicted == e.label
                                  for r, e in zip(report.records, dev, strict=True)) / 4


def test_few_shot_is_seeded_and_checked():
    train = classify.load_chnsenticorp("train", CHN)[:30]
    assert classify.few_shot(train, 3, seed=7) == classify.few_shot(train, 3, seed=7)
    with pytest.raises(LmforgeError, match="shots=31"):
        classify.few_shot(train, 31)


def test_chnsenticorp_classifies_with_the_chinese_template():
    test = classify.load_chnsenticorp("test", CHN)[:3]
    t = classify.CHNSENTICORP
    lm = tiny_lm("".join(t.context(e) for e in test) + "".join(t.labels), seed=4)
    report = classify.classify(lm, test, t)
    assert report.n == 3 and all(len(r.logprobs) == 2 for r in report.records)


def test_sst2_on_smollm2_matches_loglikelihood(smollm2):
    dev = classify.load_sst2("dev", SST2)[:4]
    report = classify.classify(smollm2, dev, classify.SST2)
    tok = smollm2.tokenizer
    for ex, rec in zip(dev, report.records, strict=True):
        ctx = tok.encode(classify.SST2.context(ex), add_bos=False)
        conts = [tok.encode(w, add_bos=False) for w in (" negative", " positive")]
        lls = [r.logprob for r in loglikelihood(smollm2.model, ctx, conts)]
        assert rec.logprobs == pytest.approx(tuple(lls), abs=1e-4)
        assert rec.predicted == int(torch.tensor(lls).argmax())
