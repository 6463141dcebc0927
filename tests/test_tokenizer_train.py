"""Tokenizer training: BPE merges equal to the `tokenizers` trainer's, WordPiece compression
within 2% of it, the whitespace and char baselines, and the `tokenizer train` / `tokenize` /
`prepare --tokenizer DIR` commands."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import tokenizers
from conftest import SHARED_DATA
from tokenizers import models, normalizers, pre_tokenizers, trainers

from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.tokenizers import (
    BPETokenizer,
    WhitespaceTokenizer,
    WordPieceTokenizer,
    load_tokenizer,
)
from lmforge.tokenizers.bpe_train import train_bpe
from lmforge.tokenizers.commands import show_piece
from lmforge.tokenizers.wordpiece_train import train_wordpiece

EOT = "<|endoftext|>"


def lines_of(name: str, chars: int) -> list[str]:
    text = (SHARED_DATA / name).read_text(encoding="utf-8")[:chars]
    return text.splitlines(keepends=True)


def hf_bpe(lines: list[str], vocab_size: int, special: list[str]) -> dict:
    """The `tokenizers` BpeTrainer's model with GPT-2's byte-level pre-tokenizer."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.train_from_iterator(lines, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(tok.to_str())["model"]
    model["merges"] = [tuple(m) for m in model["merges"]]
    return model


@pytest.mark.parametrize("name,chars,vocab_size", [
    ("wikitext-2/valid.txt", 300_000, 2000),  # English with " @-@ " markup
    ("zh-corpus/train.txt", 150_000, 1500),  # three-byte characters, long pre-tokens
])
def test_bpe_merges_and_vocab_equal_tokenizers_trainer(name, chars, vocab_size):
    lines = lines_of(name, chars)
    ours = train_bpe(lines, vocab_size, special=[EOT], progress=False)
    ref = hf_bpe(lines, vocab_size, [EOT])
    assert ours.merges == ref["merges"]  # same pairs in the same order: the tie rule matches
    assert ours.token_to_id(EOT) == 0 and ours.vocab_size == vocab_size
    assert dict(sorted(ours._ids.items(), key=lambda kv: kv[1])) == ref["vocab"]


def test_bpe_overlapping_pairs_and_ties_equal_tokenizers_trainer():
    # "aaaa" holds (a, a) three times and merges to "aa aa"; every count below ties
    lines = ["aaaa aaa ab ba abab", "xyz zyx aaaaa bbbb"] * 3
    ours = train_bpe(lines, 256 + 12, progress=False)
    assert ours.merges == hf_bpe(lines, 256 + 12, [])["merges"]
    assert ours.merges[0] == ("a", "a")


def test_trained_bpe_ids_equal_tokenizers_on_held_out_text(tmp_path):
    tok = train_bpe(lines_of("wikitext-2/valid.txt", 300_000), 2000, special=[EOT], eos=EOT,
                    progress=False)
    tok.save(tmp_path)
    ref = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    held = (SHARED_DATA / "wikitext-2" / "test.txt").read_text(encoding="utf-8")[:30_000]
    for text in (held, f"Hello{EOT} 中文 \U0001f600  tabs\t\n", "   "):
        assert tok.encode(text) == ref.encode(text).ids
        assert tok.decode(tok.encode(text)) == text
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, BPETokenizer) and loaded.encode(held) == tok.encode(held)
    assert loaded.special.eos == 0 and loaded.encode(EOT) == [0]


def test_bpe_trainer_refuses_bad_sizes():
    with pytest.raises(LmforgeError, match="too small"):
        train_bpe(["abc"], 200, progress=False)
    with pytest.raises(LmforgeError, match="empty"):
        train_bpe([], 300, progress=False)


def hf_wordpiece(lines: list[str], vocab_size: int) -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(lines, trainers.WordPieceTrainer(
        vocab_size=vocab_size, show_progress=False,
        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    return tok


@pytest.fixture(scope="module")
def wordpiece_pair():
    lines = lines_of("wikitext-2/valid.txt", 2_000_000)  # the whole file, 1.1 MB
    return train_wordpiece(lines, 2000, progress=False), hf_wordpiece(lines, 2000)


def test_wordpiece_bytes_per_token_within_2_percent_of_tokenizers(wordpiece_pair):
    ours, ref = wordpiece_pair
    held = (SHARED_DATA / "wikitext-2" / "test.txt").read_text(encoding="utf-8")[:300_000]
    n_ours, n_ref = len(ours.encode(held)), len(ref.encode(held).ids)
    assert ours.vocab_size == ref.get_vocab_size() == 2000
    assert n_ours <= n_ref * 1.02, (n_ours, n_ref)


def test_wordpiece_saves_bert_vocab_that_loads_everywhere(wordpiece_pair, tmp_path):
    ours, _ = wordpiece_pair
    ours.save(tmp_path)
    vocab = (tmp_path / "vocab.txt").read_text(encoding="utf-8").split("\n")
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert any(t.startswith("##") and len(t) > 3 for t in vocab)
    text = "The Unaffable tower's height, in 1998: 324 m!"
    from_vocab = WordPieceTokenizer.from_vocab_dir(tmp_path)
    assert from_vocab.encode(text) == load_tokenizer(tmp_path).encode(text) == ours.encode(text)
    ref = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert ref.encode(text).ids == [2, *ours.encode(text), 3]  # [CLS] … [SEP]
    assert ours.encode_pair("a b")[0] == [2, *ours.encode("a b"), 3]


def test_whitespace_tokenizer_trains_saves_and_matches_tokenizers(tmp_path):
    tok = WhitespaceTokenizer.train(["the cat sat; the cat ran.", "a dog!"], 6,
                                    special=[EOT], progress=False)
    assert tok.tokens == ["<unk>", EOT, "cat", "the", "!", "."]  # ties: smaller string
    tok.save(tmp_path)
    ref = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    text = f"the dog sat, the cat!{EOT}ran"
    assert tok.encode(text) == ref.encode(text).ids == [3, 0, 0, 0, 3, 2, 4, 1, 0]
    assert tok.decode(tok.encode("the cat!")) == ref.decode(ref.encode("the cat!").ids)
    assert load_tokenizer(tmp_path).encode(text) == tok.encode(text)


# -- commands -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "train.txt"
    path.write_text((SHARED_DATA / "wikitext-2" / "valid.txt").read_text(encoding="utf-8")
                    [:100_000], encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "whitespace", "char"])
def test_train_command_output_plugs_into_prepare(kind, corpus, tmp_path, capsys):
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--type", kind, "--vocab-size", "600", "--input",
                 str(corpus), "--out", str(out), "--eos", EOT]) == 0
    tok = load_tokenizer(out)
    assert tok.vocab_size <= 600 and tok.special.eos is not None
    assert main(["prepare", "--tokenizer", str(out), "--input", str(corpus), str(corpus),
                 "--out", str(tmp_path / "data")]) == 0
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    ids = np.fromfile(tmp_path / "data" / "train.bin", dtype=meta["dtype"]).tolist()
    one = tok.encode(corpus.read_text(encoding="utf-8"), parse_special=False)
    assert ids == one + [tok.special.eos] + one  # EOS between the two documents
    assert meta["vocab_size"] == tok.vocab_size
    assert "wrote" in capsys.readouterr().out


def test_tokenize_command_prints_pieces_ids_and_json(corpus, tmp_path, capsys):
    main(["tokenizer", "train", "--type", "bpe", "--vocab-size", "400", "--input", str(corpus),
          "--out", str(tmp_path), "--special", EOT])
    capsys.readouterr()
    tok = load_tokenizer(tmp_path)
    assert main(["tokenize", "--tokenizer", str(tmp_path), "--json", f"the\n{EOT}中"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["ids"] == tok.encode(f"the\n{EOT}中")
    # a newline is escaped, a part of a character shows its bytes ("中" is e4 b8 ad)
    assert "".join(record["pieces"]) == f"the\\n{EOT}\\xe4\\xb8\\xad"
    assert record["pieces"][-3:] == ["\\xe4", "\\xb8", "\\xad"] and EOT in record["pieces"]
    assert main(["tokenize", "--tokenizer", str(tmp_path), "a\tworld"]) == 0  # not a tty
    pieces = [show_piece(tok.decode_bytes([i])) for i in tok.encode("a\tworld")]
    assert capsys.readouterr().out == "".join(
        f"{p}({i})" for p, i in zip(pieces, tok.encode("a\tworld"), strict=True)) + "\n"
    assert pieces[:2] == ["a", "\\t"]


def test_tokenize_command_reads_a_builtin_model(capsys):
    assert main(["tokenize", "--tokenizer", "smollm2", "--json", "Hello world"]) == 0
    assert json.loads(capsys.readouterr().out) == {"ids": [19556, 905],
                                                   "pieces": ["Hello", " world"]}


def test_unigram_type_calls_the_unigram_trainer(corpus, tmp_path, monkeypatch):
    calls = []

    def train_unigram(texts, vocab_size, *, progress=True, **options):
        calls.append((len(list(texts)), vocab_size, progress, options))
        return WhitespaceTokenizer.train(["a b"], 3, progress=False)

    monkeypatch.setitem(sys.modules, "lmforge.tokenizers.unigram",
                        types.SimpleNamespace(train_unigram=train_unigram))
    assert main(["tokenizer", "train", "--type", "unigram", "--vocab-size", "500", "--input",
                 str(corpus), "--out", str(tmp_path), "--eos", "</eos>"]) == 0
    n_lines = len(corpus.read_text(encoding="utf-8").splitlines())
    assert calls == [(n_lines, 500, True, {"eos": "</eos>"})]
    assert (tmp_path / "tokenizer.json").is_file()


def test_train_command_errors_are_clear(corpus, tmp_path, capsys):
    cases = [(["--type", "bpe", "--vocab-size", "100", "--input", str(corpus)], "too small"),
             (["--type", "bpe", "--vocab-size", "500", "--input", str(tmp_path / "no.txt")],
              "no such file"),
             (["--type", "unigram", "--vocab-size", "500", "--input", str(corpus),
               "--special", "<x>"], "fixed special tokens")]
    for argv, message in cases:
        assert main(["tokenizer", "train", *argv, "--out", str(tmp_path / "t")]) == 2
        assert message in capsys.readouterr().err
