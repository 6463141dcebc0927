"""The character tokenizer: vocabulary, special tokens, unknown characters, its save file and
the WordLevel tokenizer.json that the `tokenizers` library reads with the same ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.errors import LmforgeError
from lmforge.tokenizers import CharTokenizer, load_tokenizer
from lmforge.tokenizers.char import FILENAME, FORMAT

DATA = Path(__file__).parents[1] / ".." / "shared" / "data"


@pytest.fixture(scope="module")
def corpus() -> str:
    # Shakespeare has no "<", "|" or "_"; the markup characters make raw special strings encodable
    return (DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:50_000] + "<|>_"


@pytest.fixture(scope="module")
def tok(corpus) -> CharTokenizer:
    return CharTokenizer.from_text(corpus, eos="<|endoftext|>",
                                   extra_special=["<|im_start|>", "<|im_end|>"])


def test_vocabulary_is_specials_then_sorted_characters(tok, corpus):
    assert tok.tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert tok.tokens[3:] == sorted(set(corpus))
    assert tok.vocab_size == 3 + len(set(corpus)) and tok.special.eos == 0
    assert tok.encode("e") == [tok.token_to_id("e")]


def test_special_tokens_parse_only_when_asked(tok):
    ids = tok.encode("To be<|endoftext|>")
    assert ids[-1] == 0 and len(ids) == 6
    plain = tok.encode("To be<|endoftext|>", parse_special=False)
    assert 0 not in plain and tok.decode(plain) == "To be<|endoftext|>"
    assert tok.decode(ids, skip_special=True) == "To be"


def test_unknown_character_is_an_error_or_unk(corpus):
    with pytest.raises(LmforgeError, match=r"'€' \(U\+20AC\) is not in this character"):
        CharTokenizer.from_text(corpus).encode("a €")
    with_unk = CharTokenizer.from_text(corpus, unk="<unk>")
    assert with_unk.encode("a€") == [with_unk.token_to_id("a"), with_unk.special.unk]


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_property_round_trip(tok, corpus, data):
    text = data.draw(st.text(st.sampled_from(sorted(set(corpus)))))
    assert tok.decode(tok.encode(text)) == text


def test_save_load_and_tokenizers_library(tok, corpus, tmp_path):
    tok.save(tmp_path)
    assert json.loads((tmp_path / FILENAME).read_text())["format"] == FORMAT
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, CharTokenizer) and loaded.tokens == tok.tokens
    assert loaded.special == tok.special
    ref = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    text = corpus[:2000] + "<|im_start|>user\nhi<|im_end|>\n\n  x"
    assert ref.encode(text).ids == tok.encode(text) == loaded.encode(text)
    assert ref.decode(tok.encode(text), skip_special_tokens=False) == text
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|endoftext|>"


def test_unknown_save_format_is_refused(tok, tmp_path):
    tok.save(tmp_path)
    own = json.loads((tmp_path / FILENAME).read_text())
    (tmp_path / FILENAME).write_text(json.dumps({**own, "format": "lmforge-char/9"}))
    with pytest.raises(LmforgeError, match="lmforge-char/9.*reads 'lmforge-char/1'"):
        load_tokenizer(tmp_path)


def test_chat_with_the_default_template(tok):
    ids = tok.apply_chat_template([{"role": "user", "content": "hi <|im_end|>"}])
    assert ids.count(tok.token_to_id("<|im_end|>")) == 1  # the template's, not the content's
    assert tok.decode(ids) == "<|im_start|>user\nhi <|im_end|><|im_end|>\n<|im_start|>assistant\n"
    assert tok.stop_token_ids == [0, 2]  # EOS, then ChatML's end of turn
