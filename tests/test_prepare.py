"""`lmforge prepare`: token shards on real corpora, with the character and SmolLM2 tokenizers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SHARED_DATA

from lmforge.cli import main
from lmforge.data.prepare import load_tokens, prepare
from lmforge.errors import LmforgeError
from lmforge.tokenizers import load_tokenizer

SHAKESPEARE = SHARED_DATA / "tinyshakespeare"


def test_char_shards_keep_nanogpt_split(tmp_path, capsys):
    out = tmp_path / "char"
    code = main(["prepare", "--tokenizer", "char", "--input", str(SHAKESPEARE / "train.txt"),
                 "--val", str(SHAKESPEARE / "val.txt"), "--out", str(out)])
    assert code == 0 and "train" in capsys.readouterr().out
    train_text = (SHAKESPEARE / "train.txt").read_text(encoding="utf-8")
    val_text = (SHAKESPEARE / "val.txt").read_text(encoding="utf-8")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["vocab_size"] == 65 and meta["dtype"] == "uint16"
    assert meta["tokens"] == {"train": len(train_text), "val": len(val_text)}
    tok = load_tokenizer(out / "tokenizer")
    train = load_tokens(out, "train")
    assert tok.decode(train[:2000].tolist()) == train_text[:2000]
    assert tok.decode(load_tokens(out, "val")[-500:].tolist()) == val_text[-500:]
    assert not list(out.glob(".*.tmp"))


def test_bpe_shards_equal_encoding_each_file(tmp_path, smollm2):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    text_a = (SHARED_DATA / "ptb" / "ptb.valid.txt").read_text(encoding="utf-8")[:20000]
    a.write_text(text_a, encoding="utf-8")
    b.write_text("second document, 1234\n", encoding="utf-8")
    meta = prepare("smollm2", [str(a), str(b)], tmp_path / "bpe", val_fraction=0.1,
                   progress=False)
    tok = smollm2.tokenizer
    expected = tok.encode(text_a, parse_special=False) + [tok.special.eos] + tok.encode(
        "second document, 1234\n", parse_special=False)
    got = np.concatenate([load_tokens(tmp_path / "bpe", "train"),
                          load_tokens(tmp_path / "bpe", "val")])
    assert got.tolist() == expected
    assert meta["tokens"]["val"] == round(len(expected) * 0.1)


def test_bad_arguments_are_clear(tmp_path):
    with pytest.raises(LmforgeError, match="no such file"):
        prepare("char", [str(tmp_path / "missing.txt")], tmp_path / "o", progress=False)
    (tmp_path / "x.txt").write_text("abc")
    with pytest.raises(LmforgeError, match="not both"):
        prepare("char", [str(tmp_path / "x.txt")], tmp_path / "o", val="x", val_fraction=0.1)
    with pytest.raises(LmforgeError, match="empty split"):
        prepare("char", [str(tmp_path / "x.txt")], tmp_path / "o", val_fraction=0.01,
                progress=False)
    with pytest.raises(LmforgeError, match="no meta.json"):
        load_tokens(tmp_path, "train")
