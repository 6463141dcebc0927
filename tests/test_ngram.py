"""N-gram models: modified Kneser-Ney equal to KenLM's lmplz, scores equal to the kenlm
module, ARPA round trips, normalisation, vocabularies, the CLI, and PTB perplexity."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import kenlm
import numpy as np
import pytest
from conftest import SHARED_DATA
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.ngram import read_arpa, train, write_arpa
from lmforge.ngram.arpa import read_entries
from lmforge.ngram.counts import Corpus, count_ngrams, word_rows
from lmforge.ngram.kneser_ney import adjusted_counts
from lmforge.ngram.vocab import read_lines, tokenize

FIXTURES = Path(__file__).parent / "fixtures" / "kenlm"
SHAKESPEARE = SHARED_DATA / "tinyshakespeare"


def nonblank(path, n: int) -> list[str]:
    return [line for line in read_lines(path) if line.strip()][:n]


@pytest.fixture(scope="module")
def corpus() -> list[list[str]]:
    # the lines tools/make_kenlm_fixtures.sh gave lmplz
    return tokenize(nonblank(SHAKESPEARE / "train.txt", 3000))


@pytest.fixture(scope="module")
def test_lines() -> list[str]:
    return nonblank(SHAKESPEARE / "val.txt", 400)


@pytest.mark.parametrize("order", [2, 3, 4, 5])
def test_modified_kneser_ney_equals_lmplz(tmp_path, corpus, order):
    ours = tmp_path / "ours.arpa"
    write_arpa(train(corpus, order), ours)
    theirs = read_entries(FIXTURES / f"shakespeare3000.o{order}.arpa.gz")
    mine = read_entries(ours)
    assert [len(x) for x in mine] == [len(x) for x in theirs]
    for n, (a, b) in enumerate(zip(mine, theirs, strict=True), start=1):
        assert a.keys() == b.keys(), f"{n}-grams differ"
        p = np.array([[a[g][0], b[g][0]] for g in a])
        bo = np.array([[a[g][1], b[g][1]] for g in a])
        # the issue asks for 1e-4; we hold 1e-5 (lmplz's float32 leaves a few 1e-6), which
        # also catches off-by-one vocabulary sizes in the uniform term (9e-5 here)
        assert np.abs(p[:, 0] - p[:, 1]).max() < 1e-5, f"{n}-gram log10 p"
        assert np.abs(bo[:, 0] - bo[:, 1]).max() < 1e-5, f"{n}-gram back-off"


@pytest.mark.parametrize(("smoothing", "order"), [("mkn", 5), ("kn", 4), ("addk", 3)])
def test_kenlm_scores_our_arpa_like_we_do(tmp_path, corpus, test_lines, smoothing, order):
    model = train(corpus, order, smoothing, k=0.5)
    path = tmp_path / "m.arpa"
    write_arpa(model, path)
    reference = kenlm.Model(str(path))
    score = model.score_corpus(tokenize(test_lines))
    ends = np.cumsum([len(line.split()) + 1 for line in test_lines])
    ours = np.add.reduceat(score.log10p, np.r_[0, ends[:-1]])
    theirs = [reference.score(line, bos=True, eos=True) for line in test_lines]
    assert score.oovs > 0  # unseen words of the validation text go through <unk>
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    kenlm_ppl = 10 ** (-sum(theirs) / ends[-1])  # KenLM counts OOVs
    assert score.perplexity(include_oov=True) == pytest.approx(kenlm_ppl, rel=1e-5)
    assert score.perplexity() != pytest.approx(kenlm_ppl, rel=1e-3)
    assert model.score(test_lines[0]) == pytest.approx(theirs[0], abs=1e-4)


@pytest.mark.parametrize("smoothing", ["mkn", "kn", "addk"])
def test_arpa_round_trip_and_normalisation(tmp_path, corpus, test_lines, smoothing):
    model = train(corpus[:1500], 3, smoothing)
    path = tmp_path / "m.arpa.gz"
    write_arpa(model, path)
    back = read_arpa(path)
    sentences = tokenize(test_lines[:100])
    np.testing.assert_allclose(back.score_corpus(sentences).log10p,
                               model.score_corpus(sentences).log10p, atol=1e-6)
    ids = model.vocab.ids
    for context in [[], ["First"], ["First", "Citizen:"], ["the", "zzz-unseen"]]:
        ctx = [1] + model.vocab.encode(context)
        dist = model.distribution(ctx)
        assert dist.sum() == pytest.approx(1.0, abs=1e-6)
        line = " ".join(context + ["the"])
        total = model.score_corpus([line.split()]).log10p
        assert math.log10(dist[ids["the"]]) == pytest.approx(total[len(context)], abs=1e-6)


def brute_adjusted_counts(sentences: list[list[int]], order: int) -> list[dict]:
    """lmplz's adjusted counts straight from their definition, with dictionaries."""
    raw = defaultdict(int)
    for s in sentences:
        seq = [1, *s, 2]
        for n in range(1, order + 1):
            for i in range(len(seq) - n + 1):
                raw[tuple(seq[i:i + n])] += 1
    left = defaultdict(set)
    for g in raw:
        if len(g) > 1:
            left[g[1:]].add(g[0])
    out = [dict() for _ in range(order)]
    for g, c in raw.items():
        top_or_bos = len(g) == order or g[0] == 1
        out[len(g) - 1][g] = 0 if g == (1,) else c if top_or_bos else len(left[g])
    return out


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(3, 7), max_size=8), min_size=1, max_size=6),
       st.integers(1, 4))
def test_adjusted_counts_match_their_definition(sentences, order):
    counts = count_ngrams(Corpus.from_ids(sentences), order, 8)
    expected = brute_adjusted_counts(sentences, order)
    for n, (rows, a) in enumerate(zip(word_rows(counts.keys, 8), adjusted_counts(counts),
                                      strict=True), start=1):
        got = {tuple(r): int(x) for r, x in zip(rows.tolist(), a, strict=True)}
        unseen = {g: x for g, x in got.items() if g not in expected[n - 1]}
        assert set(unseen.values()) <= {0}  # the unigram table lists every vocabulary id
        assert {g: x for g, x in got.items() if g in expected[n - 1]} == expected[n - 1]


def test_vocabularies(corpus):
    rare = train(corpus, 2, min_count=3)
    full = train(corpus, 2)
    assert len(rare.vocab) < len(full.vocab)
    assert rare.logp[0][0] > full.logp[0][0]  # <unk> now holds every rare word's mass
    with pytest.raises(LmforgeError, match="--closed-vocab"):
        train([["a", "<unk>", "b"]] * 50, 2)
    closed = train([["a", "<unk>", "b"], ["a", "c"]] * 30, 2, "addk", closed=True)
    assert "<unk>" in closed.vocab and closed.score_corpus([["<unk>"]]).oovs == 0
    with pytest.raises(LmforgeError, match="<s>"):
        train([["a", "<s>"]], 2, closed=True)
    with pytest.raises(LmforgeError, match="discount"):
        train([["a", "b"]], 3)


def test_sampling_is_seeded(corpus):
    model = train(corpus[:1000], 3)
    a = model.sample(np.random.default_rng(7), 30)
    b = model.sample(np.random.default_rng(7), 30)
    assert a == b and 0 < len(a) <= 30
    assert all(w in model.vocab and w not in {"<s>", "</s>"} for w in a)


def test_bad_arpa_files(tmp_path):
    bad = tmp_path / "bad.arpa"
    bad.write_text("\\data\\\nngram 1=2\n\n\\1-grams:\n-1\ta\n\n\\end\\\n")
    with pytest.raises(LmforgeError, match="announces"):
        read_arpa(bad)
    bad.write_text("hello")
    with pytest.raises(LmforgeError, match="not an ARPA"):
        read_arpa(bad)
    with pytest.raises(LmforgeError, match="no such"):
        read_arpa(tmp_path / "missing.arpa")


def test_cli_train_eval_compare_and_sample(tmp_path, capsys, corpus, test_lines):
    text, test = tmp_path / "train.txt", tmp_path / "test.txt"
    text.write_text("\n".join(" ".join(s) for s in corpus[:2000]) + "\n")
    test.write_text("\n".join(test_lines[:200]) + "\n")
    for order, smoothing in [(3, "mkn"), (2, "addk")]:
        out = tmp_path / f"{smoothing}.arpa"
        assert main(["ngram", "train", "--order", str(order), "--input", str(text), "--out",
                     str(out), "--smoothing", smoothing]) == 0
        assert "wrote" in capsys.readouterr().out
    assert main(["eval", "--model", str(tmp_path / "mkn.arpa"), "--input", str(test)]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "OOVs" in out and "bits per byte" in out
    assert main(["eval", "--model", str(tmp_path / "mkn.arpa"), str(tmp_path / "addk.arpa"),
                 "--input", str(test), "--json"]) == 0
    mkn, addk = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert mkn["kind"] == "3-gram" and addk["kind"] == "2-gram"
    assert mkn["perplexity"] < addk["perplexity"] and mkn["oovs"] == addk["oovs"] > 0
    assert mkn["bits_per_byte"] == pytest.approx(
        mkn["nll"] / (math.log(2) * mkn["bytes"]))
    assert main(["eval", "--model", str(tmp_path / "mkn.arpa"), str(tmp_path / "addk.arpa"),
                 "--input", str(test)]) == 0
    assert "bits/byte" in capsys.readouterr().out
    assert main(["ngram", "sample", "--model", str(tmp_path / "mkn.arpa"), "--n", "2",
                 "--seed", "1"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    assert main(["ngram", "train", "--input", str(tmp_path / "none"), "--out", "x"]) == 2


@pytest.mark.slow
def test_ptb_kneser_ney_5gram_perplexity():
    ptb = SHARED_DATA / "ptb"
    model = train(tokenize(read_lines(ptb / "ptb.train.txt")), 5, closed=True)
    score = model.score_corpus(tokenize(read_lines(ptb / "ptb.test.txt")))
    assert score.oovs == 0 and score.tokens == 82430
    assert score.perplexity() == pytest.approx(141.2, rel=0.03)  # Mikolov et al. 2011, KN5


@pytest.mark.slow
def test_eval_compares_an_ngram_and_a_neural_model(tmp_path, capsys, corpus):
    text = SHARED_DATA / "wikitext-2" / "test.txt"
    arpa = tmp_path / "wiki.arpa"
    write_arpa(train(tokenize(read_lines(SHARED_DATA / "wikitext-2" / "valid.txt")), 3,
                     closed=True), arpa)
    assert main(["eval", "--model", str(arpa), "smollm2", "--input", str(text), "--chars",
                 "5000", "--json"]) == 0
    ngram, neural = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert ngram["kind"] == "3-gram" and neural["kind"] == "neural"
    assert ngram["bytes"] == neural["bytes"] and ngram["chars"] == neural["chars"]
    assert neural["bits_per_byte"] < ngram["bits_per_byte"] < 4
