"""Pre-tokenizers and tokenizer.json reading, against the `tokenizers` library itself: every
known pre-tokenizer type splits text as its tokenizer.json form does, and small BPE
tokenizers trained by `tokenizers` (Llama 3 / Qwen2 splits, NFC, ignore_merges, BOS added
by the post-processor, an added token past the model's vocabulary) encode identically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers

from lmforge.errors import LmforgeError
from lmforge.tokenizers import BPETokenizer, load_tokenizer
from lmforge.tokenizers.pretokenize import (
    PRE_TOKENIZERS,
    from_hf_json,
    get_pre_tokenizer,
    to_hf_json,
)

DATA = Path(__file__).parents[1] / ".." / "shared" / "data"
TEXTS = ["I'M sure   they'll 12345 你好 x²\n\n  y  \t7 é", "don't\r\n\r\nSTOP!!! 3.14 ١٢٣",
         "e\u0301 café ﬁ"]


def library_pre_tokenizer(obj: dict) -> pre_tokenizers.PreTokenizer:
    """The `tokenizers` pre-tokenizer of a tokenizer.json pre_tokenizer object."""
    doc = {"version": "1.0", "added_tokens": [], "normalizer": None, "pre_tokenizer": obj,
           "post_processor": None, "decoder": None,
           "model": {"type": "WordLevel", "vocab": {"x": 0}, "unk_token": "x"}}
    return tokenizers.Tokenizer.from_str(json.dumps(doc)).pre_tokenizer


@pytest.fixture(scope="module")
def library_splitters() -> dict:
    return {name: library_pre_tokenizer(to_hf_json(get_pre_tokenizer(name)))
            for name in PRE_TOKENIZERS}


# The `regex` module knows a newer Unicode than the `tokenizers` library's regex engine: they
# disagree on ~17,000 code points that Python's own tables (Unicode 14) list as unassigned
# (U+0558 is a letter to one, not to the other). Real text does not hold them; leave them out.
ASSIGNED = st.characters(exclude_categories=["Cs", "Cn"])


@settings(max_examples=100, deadline=None)
@given(text=st.text(ASSIGNED))
@pytest.mark.parametrize("name", sorted(PRE_TOKENIZERS))
def test_pre_tokenizers_split_like_the_library(library_splitters, name, text):
    pieces = library_splitters[name].pre_tokenize_str(text)
    assert get_pre_tokenizer(name).split(text) == [text[s:e] for _, (s, e) in pieces]


@pytest.mark.parametrize("name", sorted(PRE_TOKENIZERS))
def test_pre_tokenizer_json_round_trip(name):
    pre = get_pre_tokenizer(name)
    assert from_hf_json(to_hf_json(pre)).patterns == pre.patterns


def test_unsupported_pre_tokenizer_steps_are_refused():
    with pytest.raises(LmforgeError, match="unsupported pre-tokenizer step.*Metaspace"):
        from_hf_json({"type": "Metaspace", "replacement": "▁"})
    with pytest.raises(LmforgeError, match="not a byte-level BPE"):
        from_hf_json({"type": "Digits", "individual_digits": True})


def train(split: str, *, nfc: bool, ignore_merges: bool) -> tokenizers.Tokenizer:
    """A 600-token byte-level BPE trained on wikitext, with BOS added and an added token."""
    text = (DATA / "wikitext-2" / "valid.txt").read_text(encoding="utf-8")[:100_000]
    tok = tokenizers.Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tok.normalizer = normalizers.NFC() if nfc else None
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text], trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<s>", "</s>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens(["<|im_end|>"])  # lands past the model's vocabulary
    tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                       special_tokens=[("<s>", 0)])
    return tok


@pytest.mark.parametrize("pre, nfc, ignore_merges", [("llama3", False, True),
                                                     ("qwen2", True, False)])
def test_trained_tokenizer_json_encodes_identically(tmp_path, pre, nfc, ignore_merges):
    ref = train(PRE_TOKENIZERS[pre][0], nfc=nfc, ignore_merges=ignore_merges)
    ref.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, BPETokenizer) and tok.pre.patterns == PRE_TOKENIZERS[pre]
    assert tok.special.add_bos and tok.special.bos == 0
    for text in [*TEXTS, "x<|im_end|>y", " the quick brown fox " * 20]:
        assert tok.encode(text) == ref.encode(text).ids
    tok.save(tmp_path / "again")
    again = tokenizers.Tokenizer.from_file(str(tmp_path / "again" / "tokenizer.json"))
    for text in TEXTS:
        assert again.encode(text).ids == tok.encode(text)
