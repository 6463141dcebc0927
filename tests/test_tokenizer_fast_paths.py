"""The fast paths of Unigram encoding and WordPiece training against plain reference
versions: the same ids and the same vocabulary, exact float ties included."""

from __future__ import annotations

import math
import random
import unicodedata
from collections import Counter

import pytest
from conftest import SHARED_DATA

from lmforge.tokenizers.unigram import _WIDE, _WORD, UnigramTokenizer, nfkc_normalize, train_unigram
from lmforge.tokenizers.unigram_viterbi import SHORT_WORD, _Memo, margin, runs, viterbi
from lmforge.tokenizers.wordpiece_train import PREFIX, learn_vocab

ZH = SHARED_DATA / "zh-corpus"
PTB = SHARED_DATA / "ptb"
SPECIAL = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0)]


def lines(path, n_chars: int) -> list[str]:
    return [t for t in path.read_text(encoding="utf-8")[:n_chars].splitlines() if t.strip()]


# -- Unigram: the textbook Viterbi ---------------------------------------------------------

def reference_path(word: str, tok: UnigramTokenizer) -> list[tuple[int, int]]:
    """best(j) = max over i < j of best(i) + s(word[i:j]) from best(0) = 0, ascending i so
    the earliest start keeps a tie; a character without a one-character piece is unknown."""
    n, table = len(word), tok._table
    best, back = [0.0] + [-math.inf] * n, [(0, -1)] * (n + 1)
    for j in range(1, n + 1):
        for i in range(max(0, j - tok._max_len), j):
            hit = table.get(word[i:j])
            if hit is None and j == i + 1:
                hit = (-1, tok._unk_score)
            if hit is not None and best[i] + hit[1] > best[j]:
                best[j], back[j] = best[i] + hit[1], (i, hit[0])
    path, j = [], n
    while j > 0:
        path.append(back[j])
        j = back[j][0]
    return path[::-1]


def reference_encode(tok: UnigramTokenizer, text: str) -> list[int]:
    return [i for word in _WORD.findall(tok._normalize(text))
            for i in tok._finish(word, reference_path(word, tok))]


@pytest.fixture(scope="module")
def zh_tok() -> UnigramTokenizer:
    return train_unigram(lines(ZH / "train.txt", 200_000), 3000, progress=False,
                         character_coverage=0.98)


def test_fast_encoding_equals_reference_on_chinese_and_english(zh_tok):
    texts = lines(ZH / "val.txt", 40_000) + lines(PTB / "ptb.test.txt", 20_000) + \
        ["東東東東東東", "。。。。", "naïve 🙂 x", "  a  b  "]
    assert [zh_tok.encode(t, parse_special=False) for t in texts] == \
        [reference_encode(zh_tok, t) for t in texts]
    assert len(zh_tok._cache.parts) > len(zh_tok._cache.parts.base)  # runs were cached


def tie_tokenizer(**options) -> UnigramTokenizer:
    """"aaa" = a + aa = aa + a exactly; in float64, from 0 the first sum is not smaller, but
    after "b" (−7.7) the second is larger, so a run solved on its own would be wrong."""
    return UnigramTokenizer(SPECIAL + [("b", -7.7), ("a", -2.8), ("aa", -1.156)], nfkc=False,
                            add_dummy_prefix=False, **options)


def test_an_exact_tie_is_solved_inside_its_word():
    tok = tie_tokenizer()
    b, a, aa = 3, 4, 5
    enc = tok._cache
    path, best = viterbi("aaa", enc.trie, tok._unk_score)
    assert margin("aaa", path, best, enc.pieces, enc.max_len, tok._unk_score) == 0.0  # a tie
    path, best = viterbi("baa", enc.trie, tok._unk_score)
    assert margin("baa", path, best, enc.pieces, enc.max_len, tok._unk_score) == \
        pytest.approx(-1.156 - 2 * -2.8)  # aa beat a + a at node 3
    assert reference_encode(tok, "aaa") == [a, aa]
    long = "baaa" + "b" * SHORT_WORD  # long enough to be cut into parts: b, aaa, b, b, ...
    assert tok.encode(long) == reference_encode(tok, long) == [b, aa, a] + [b] * SHORT_WORD
    assert "aaa" in tok._cache.tied
    assert tok.encode("aaa") == [a, aa]
    long = "b" * SHORT_WORD + "aab"  # no tie: the run "aa" is solved once and kept
    assert tok.encode(long) == reference_encode(tok, long) == [b] * SHORT_WORD + [aa, b]
    assert tok._cache.parts["aa"] == (aa,)


def test_unknown_characters_fuse_across_parts_and_become_bytes_with_fallback():
    tok, pad = tie_tokenizer(), "b" * SHORT_WORD
    assert tok.encode(pad + "xyb") == reference_encode(tok, pad + "xyb") == \
        [3] * SHORT_WORD + [0, 3]
    assert tok.encode(pad + "axbya") == reference_encode(tok, pad + "axbya") == \
        [3] * SHORT_WORD + [4, 0, 3, 0, 4]
    byte_pieces = [(f"<0x{i:02X}>", 0.0) for i in range(256)]
    tok = UnigramTokenizer(SPECIAL + byte_pieces + [("b", -7.7), ("a", -2.8)], nfkc=False,
                           add_dummy_prefix=False, byte_fallback=True)
    text = "bé東b" + "b" * SHORT_WORD
    assert tok.encode(text) == reference_encode(tok, text) == \
        [259, 3 + 0xC3, 3 + 0xA9, 3 + 0xE6, 3 + 0x9D, 3 + 0xB1] + [259] * 25


def test_nfkc_shortcut_equals_unicodedata():
    rng = random.Random(0)
    tricky = [w for w, _ in _WIDE] + list("aé\u0301\u0323\u1100\u1161\u11a8가ｶﾞ東…①ﬁ") + \
        [chr(rng.randrange(0x30000)) for _ in range(300)]
    texts = lines(ZH / "val.txt", 30_000) + lines(SHARED_DATA / "wikitext-2" / "test.txt", 30_000)
    texts += ["".join(rng.choice(tricky) for _ in range(rng.randint(1, 12))) for _ in range(5000)]
    assert [nfkc_normalize(t) for t in texts] == [unicodedata.normalize("NFKC", t) for t in texts]


def test_runs_and_the_cache_limit():
    assert runs([1, 2, 5]) == [(0, 3), (4, 6)]
    assert runs([3]) == [(2, 4)]
    memo = _Memo(str.upper, 3, {"x": "kept"})
    for key in "abcd":
        memo[key]
    assert dict(memo) == {"x": "kept", "c": "C", "d": "D"}  # reset to the base at 3


# -- WordPiece: recount and rescore everything at each merge -------------------------------

def reference_vocab(counts: dict[str, int], n_tokens: int) -> list[str]:
    """The trainer's rule with no incremental state: score every pair from fresh counts,
    take the best (smallest ids on ties), merge it everywhere, repeat."""
    tokens = sorted({c for w in counts for c in w})
    tokens += [PREFIX + c for c in sorted({c for w in counts for c in w[1:]})]
    ids = {t: i for i, t in enumerate(tokens)}
    words = [[ids[w[0]], *(ids[PREFIX + c] for c in w[1:])] for w in counts]
    freqs = list(counts.values())
    while len(tokens) < n_tokens:
        pair_count, token_count = Counter(), Counter()
        for word, f in zip(words, freqs, strict=True):
            for t in word:
                token_count[t] += f
            for pair in zip(word, word[1:], strict=False):
                pair_count[pair] += f
        if not pair_count:
            break
        total = sum(token_count.values())
        a, b = max(pair_count, key=lambda p: (
            pair_count[p] * math.log(pair_count[p] * total
                                     / (token_count[p[0]] * token_count[p[1]])), -p[0], -p[1]))
        text = tokens[a] + tokens[b][len(PREFIX):]
        if text not in ids:
            ids[text] = len(tokens)
            tokens.append(text)
        words = [merge(w, a, b, ids[text]) for w in words]
    return tokens


def merge(word: list[int], a: int, b: int, new: int) -> list[int]:
    out, i = [], 0
    while i < len(word):
        if word[i:i + 2] == [a, b]:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


@pytest.mark.parametrize("counts", [
    {"aaaa": 3, "abab": 2, "ba": 2, "bb": 1, "aab": 1, "abba": 1},  # overlaps and ties
    Counter(w for t in lines(PTB / "ptb.valid.txt", 60_000) for w in t.split()),
])
def test_wordpiece_vocab_equals_reference(counts):
    n_tokens = len({c for w in counts for c in w}) * 2 + 120
    assert learn_vocab(counts, n_tokens, progress=False) == reference_vocab(counts, n_tokens)
