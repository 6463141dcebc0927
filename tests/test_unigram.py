"""The Unigram LM tokenizer and trainer against sentencepiece, `tokenizers` and brute force."""

from __future__ import annotations

import itertools
import math
import re
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
from conftest import SHARED_DATA
from tokenizers import Tokenizer as HFTokenizer

from lmforge.errors import LmforgeError
from lmforge.tokenizers import UnigramTokenizer, load_tokenizer
from lmforge.tokenizers.lattice import Lattice, PieceTable
from lmforge.tokenizers.unigram import train_unigram
from lmforge.tokenizers.unigram_seed import repeated_substrings
from lmforge.tokenizers.unigram_train import digamma

SHAKESPEARE = SHARED_DATA / "tinyshakespeare"
WIKITEXT = SHARED_DATA / "wikitext-2" / "test.txt"
ODD_LINES = ["naïve café – 東京 🙂 x", "  several   spaces  ", "tab\tinside", "", "∑∑∑ 𝔘𝔫𝔦"]


def lines(path: Path, n: int | None = None) -> list[str]:
    out = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return out[:n]


def bytes_per_token(encode, texts: list[str]) -> float:
    return sum(len(t.encode("utf-8")) for t in texts) / sum(len(encode(t)) for t in texts)


def train_sp(tmp: Path, text_file: Path, vocab_size: int, **options) -> spm.SentencePieceProcessor:
    spm.SentencePieceTrainer.train(input=str(text_file), model_prefix=str(tmp / "sp"),
                                   vocab_size=vocab_size, model_type="unigram", num_threads=1,
                                   minloglevel=2, **options)
    return spm.SentencePieceProcessor(model_file=str(tmp / "sp.model"))


def from_sp(sp: spm.SentencePieceProcessor, **options) -> UnigramTokenizer:
    pieces = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    return UnigramTokenizer(pieces, **options)


@pytest.fixture(scope="module")
def sp_identity(tmp_path_factory):
    """A 1,000-piece sentencepiece model of Shakespeare without NFKC (exact parity)."""
    tmp = tmp_path_factory.mktemp("sp")
    return train_sp(tmp, SHAKESPEARE / "train.txt", 1000, normalization_rule_name="identity")


@pytest.fixture(scope="module")
def held_out() -> list[str]:
    """Wikitext: other words, and characters Shakespeare never used."""
    return lines(WIKITEXT, 600) + ODD_LINES


@pytest.fixture(scope="module")
def ours_small() -> UnigramTokenizer:
    return train_unigram(lines(SHAKESPEARE / "train.txt"), 2000, progress=False)


# -- encoding with sentencepiece's own pieces -------------------------------------------------

def test_viterbi_equals_sentencepiece(sp_identity, held_out):
    tok = from_sp(sp_identity, nfkc=False)  # sentencepiece reads "<unk>" in text as text
    assert [tok.encode(t, parse_special=False) for t in held_out] == \
        sp_identity.encode(held_out)


def test_byte_fallback_equals_sentencepiece(tmp_path, held_out):
    sp = train_sp(tmp_path, SHAKESPEARE / "val.txt", 600, normalization_rule_name="identity",
                  byte_fallback=True)
    tok = from_sp(sp, nfkc=False, byte_fallback=True)
    assert [tok.encode(t, parse_special=False) for t in held_out] == sp.encode(held_out)
    assert tok.decode(tok.encode(ODD_LINES[0])) == sp.decode(sp.encode(ODD_LINES[0]))


def test_decode_is_sentencepiece_decode(sp_identity):
    tok = from_sp(sp_identity, nfkc=False)
    text = lines(SHAKESPEARE / "val.txt", 50)
    assert [tok.decode(tok.encode(t)) for t in text] == [sp_identity.decode(sp_identity.encode(t))
                                                        for t in text]


# -- training ---------------------------------------------------------------------------------

def test_trained_vocabulary_compresses_like_sentencepiece(tmp_path, ours_small):
    """Bytes per token on held-out text within 2% of sentencepiece trained alike."""
    sp = train_sp(tmp_path, SHAKESPEARE / "train.txt", 2000)
    held = lines(SHAKESPEARE / "val.txt")
    ours = bytes_per_token(lambda t: ours_small.encode(t, parse_special=False), held)
    theirs = bytes_per_token(sp.encode, held)
    assert ours == pytest.approx(theirs, rel=0.02)
    assert ours_small.vocab_size == 2000
    shared = set(ours_small.tokens) & {sp.id_to_piece(i) for i in range(sp.get_piece_size())}
    assert len(shared) > 0.8 * 2000


@pytest.mark.slow
def test_8k_vocabulary_on_ptb_compresses_like_sentencepiece(tmp_path):
    ptb = SHARED_DATA / "ptb"
    sp = train_sp(tmp_path, ptb / "ptb.train.txt", 8000)
    ours = train_unigram(lines(ptb / "ptb.train.txt"), 8000, progress=False)
    held = lines(ptb / "ptb.test.txt")
    assert bytes_per_token(lambda t: ours.encode(t, parse_special=False), held) == \
        pytest.approx(bytes_per_token(sp.encode, held), rel=0.02)


def test_required_characters_and_specials_are_kept(ours_small):
    """The most frequent characters that cover 99.95% of the text are all tokens."""
    text = (SHAKESPEARE / "train.txt").read_text(encoding="utf-8")
    counts = Counter(text.replace(" ", "\u2581").replace("\n", ""))
    covered, required = 0, []
    for c, n in counts.most_common():
        if covered >= 0.9995 * counts.total():
            break
        covered += n
        required.append(c)
    assert set(required) <= set(ours_small.tokens)
    assert ours_small.tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert ours_small.special.unk == 0 and ours_small.special.eos == 2


def test_byte_fallback_training_round_trips_any_text():
    tok = train_unigram(lines(SHAKESPEARE / "val.txt"), 600, progress=False, byte_fallback=True)
    assert tok.vocab_size == 600 and tok.token_to_id("<0xF0>") is not None
    for text in ODD_LINES:
        normalized = unicodedata.normalize("NFKC", re.sub(" +", " ", text.strip(" ")))
        assert tok.decode(tok.encode(text)) == normalized
        assert tok.special.unk not in tok.encode(text)


def test_training_options_are_checked():
    with pytest.raises(LmforgeError, match="unknown Unigram training option"):
        train_unigram(["a b"], 100, progress=False, seed_sise=10)
    with pytest.raises(LmforgeError, match="shrinking_factor"):
        train_unigram(["a b"], 100, progress=False, shrinking_factor=0.1)
    with pytest.raises(LmforgeError, match="too small"):
        train_unigram(["abcdefg hij"], 8, progress=False)


# -- sampling ---------------------------------------------------------------------------------

def test_samples_are_segmentations_that_vary_with_the_seed(ours_small):
    text = "The quick brown fox jumps over the lazy dog, my lord."
    samples = [ours_small.encode(text, sample_alpha=0.1, seed=s) for s in range(20)]
    assert all(ours_small.decode(ids) == text for ids in samples)
    assert len({tuple(ids) for ids in samples}) > 10
    assert samples[3] == ours_small.encode(text, sample_alpha=0.1, seed=3)
    with pytest.raises(LmforgeError, match="sample_alpha"):
        ours_small.encode(text, sample_alpha=0)


def test_sampling_follows_p_to_the_alpha():
    """Each segmentation of a word is drawn with probability ∝ P(x)^θ."""
    pieces = {"▁": -2.0, "a": -1.5, "b": -1.7, "▁a": -2.5, "ab": -2.2, "▁ab": -3.9, "bab": -3}
    tok = UnigramTokenizer([("<unk>", 0.0), *pieces.items()], bos=None, eos=None)
    theta = 0.5
    weight = {tuple(s): math.exp(theta * sum(pieces[p] for p in s))
              for s in _segmentations("▁abab", pieces)}
    z = sum(weight.values())
    draws = Counter(tuple(tok.id_to_token(i) for i in tok.encode("abab", sample_alpha=theta,
                                                                  seed=k)) for k in range(3000))
    for seg, w in weight.items():
        assert draws[seg] / 3000 == pytest.approx(w / z, abs=0.03)


# -- files ------------------------------------------------------------------------------------

def test_save_load_round_trip(tmp_path, ours_small, held_out):
    ours_small.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, UnigramTokenizer)
    assert loaded.tokens == ours_small.tokens and loaded.scores == ours_small.scores
    assert [loaded.encode(t) for t in held_out] == [ours_small.encode(t) for t in held_out]


@pytest.mark.parametrize("byte_fallback", [False, True])
def test_hf_tokenizers_gives_the_same_ids(tmp_path, held_out, byte_fallback):
    tok = train_unigram(lines(SHAKESPEARE / "val.txt"), 600, progress=False,
                        byte_fallback=byte_fallback)
    tok.save(tmp_path)
    hf = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert [hf.encode(t, add_special_tokens=False).ids for t in held_out] == \
        [tok.encode(t) for t in held_out]
    ids = tok.encode(held_out[1])
    assert hf.decode(ids) == tok.decode(ids, skip_special=True)


def test_unsupported_tokenizer_json_is_refused(tmp_path, ours_small):
    obj = ours_small.to_tokenizer_json()
    obj["pre_tokenizer"] = {"type": "Whitespace"}
    with pytest.raises(LmforgeError, match="Metaspace"):
        UnigramTokenizer.from_tokenizer_json(obj)


# -- the numpy lattice, the seed and ψ against brute force -----------------------------------

def _segmentations(word: str, pieces: dict[str, float]) -> list[list[str]]:
    """Every way to cut `word` into pieces of the vocabulary."""
    n, out = len(word), []
    for k in range(n):
        for cut in itertools.combinations(range(1, n), k):
            split = [word[a:b] for a, b in zip((0, *cut), (*cut, n), strict=True)]
            if all(p in pieces for p in split):
                out.append(split)
    return out


def test_lattice_expectations_and_viterbi_match_enumeration():
    pieces = {"▁": -2.0, "a": -1.5, "b": -1.7, "c": -2.9, "▁a": -2.5, "ab": -2.2, "bc": -2.4,
              "▁ab": -3.9, "abc": -3.3}
    words, counts = ["▁abc", "▁ab", "cab", "ba"], np.array([3.0, 2.0, 1.0, 5.0])
    names = list(pieces)
    scores = np.array([pieces[p] for p in names])
    lat = Lattice(words, counts, PieceTable.build(names))
    expected, _ = lat.expected_counts(scores, -100.0)
    brute = Counter()
    for word, count in zip(words, counts, strict=True):
        segs = _segmentations(word, pieces)
        z = sum(math.exp(sum(pieces[p] for p in s)) for s in segs)
        for s in segs:
            for p in s:
                brute[p] += count * math.exp(sum(pieces[q] for q in s)) / z
    assert expected == pytest.approx([brute[p] for p in names])
    w, p, best = lat.viterbi(scores, -100.0)
    for i, word in enumerate(words):
        top = max(_segmentations(word, pieces), key=lambda s: sum(pieces[q] for q in s))
        assert sorted(names[k] for k in p[w == i]) == sorted(top)
        assert best[i] == pytest.approx(sum(pieces[q] for q in top))


def test_seed_substrings_match_brute_force():
    rng = np.random.default_rng(0)
    vocab = ["ab", "abc", "bca", "ca", "a", "b", "ab.c", "x.ab"]
    sentences = ["▁" + "▁".join(rng.choice(vocab, rng.integers(1, 6))) for _ in range(40)]
    contexts = Counter()
    for s in sentences:
        words = ["▁" + w for w in s.split("▁")[1:]]
        contexts.update(w + ("▁" if k + 1 < len(words) else "\0") for k, w in enumerate(words))
    text, off, length, freq = repeated_substrings(dict(contexts), 16, True)
    got = {text[o:o + n]: f for o, n, f in zip(off, length, freq, strict=True)}
    corpus = "\0".join(sentences) + "\0"  # sentencepiece's suffix array input
    count, follow = Counter(), {}
    for i in range(len(corpus)):
        for n in range(2, min(16, len(corpus) - i) + 1):
            s = corpus[i:i + n]
            count[s] += 1
            follow.setdefault(s, set()).add(corpus[i + n] if i + n < len(corpus) else None)
    scripts = [{"." if c == "." else "L" for c in s if c != "▁"} for s in count]
    want = {s: c for (s, c), sc in zip(count.items(), scripts, strict=True)
            if c >= 2 and len(follow[s]) >= 2 and "\0" not in s and "▁" not in s[1:]
            and len(sc) <= 1}
    assert got == want


def test_digamma():
    assert digamma(np.array([1.0, 0.5, 10.0])) == pytest.approx(
        [-0.5772156649015329, -1.9635100260214235, 2.251752589066721], rel=1e-9)
    x = np.array([3.3, 1234.5])
    assert digamma(x + 1) == pytest.approx(digamma(x) + 1 / x, rel=1e-12)  # ψ(x+1) = ψ(x) + 1/x
