"""Tokenizers: text ↔ ids, special tokens, chat templates.

- `base.py`       the `Tokenizer` interface and `SpecialTokens`; encoding = split at added
                  tokens (`added.py`), then the subword algorithm on the text between
- `bpe.py`        byte-level BPE (GPT-2 style), from GGUF metadata or a `tokenizer.json`
- `pretokenize.py` the regex pre-tokenizers, keyed by GGUF `tokenizer.ggml.pre`
- `wordpiece.py`  BERT's WordPiece, from a `vocab.txt` or a `tokenizer.json`
- `char.py`       a character-level tokenizer with its own versioned save file
- `whitespace.py` a word-level tokenizer (Whitespace pre-tokenizer + WordLevel), trainable
- `bpe_train.py`, `wordpiece_train.py`, `training.py`  the BPE and WordPiece trainers
- `commands.py`   `lmforge tokenizer train` and `lmforge tokenize`
- `unigram.py`    the Unigram LM tokenizer (sentencepiece's); training in `unigram_train.py`
- `chat.py`       chat templates (jinja2) with content that can never become a special token
- `hf_files.py`   the Hugging Face `tokenizer.json` / `tokenizer_config.json` files
"""

from __future__ import annotations

from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.tokenizers import char, hf_files
from lmforge.tokenizers.base import SpecialTokens, Tokenizer
from lmforge.tokenizers.bpe import BPETokenizer
from lmforge.tokenizers.char import CharTokenizer
from lmforge.tokenizers.chat import encode_chat, render_chat
from lmforge.tokenizers.unigram import UnigramTokenizer
from lmforge.tokenizers.whitespace import WhitespaceTokenizer
from lmforge.tokenizers.wordpiece import WordPieceTokenizer

__all__ = ["BPETokenizer", "CharTokenizer", "SpecialTokens", "Tokenizer", "UnigramTokenizer",
           "WhitespaceTokenizer", "WordPieceTokenizer",
           "encode_chat", "load_tokenizer", "render_chat"]


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """The tokenizer saved in `directory`: lmforge's own file if present, else tokenizer.json
    (its model type picks the class), else a WordPiece vocab.txt."""
    d = Path(directory)
    if (d / char.FILENAME).is_file():
        return CharTokenizer.load(d)
    if (d / "tokenizer.json").is_file():
        obj, config = hf_files.read_dir(d)
        kind = obj.get("model", {}).get("type")
        if kind == "WordPiece":
            return WordPieceTokenizer.from_tokenizer_json(obj, config)
        if kind == "WordLevel":
            return WhitespaceTokenizer.from_tokenizer_json(obj, config)
        if kind == "Unigram":
            return UnigramTokenizer.from_tokenizer_json(obj, config)
        return BPETokenizer.from_tokenizer_json(obj, config)
    if (d / "vocab.txt").is_file():
        return WordPieceTokenizer.from_vocab_dir(d)
    raise LmforgeError(f"{d} holds no tokenizer (none of {char.FILENAME}, tokenizer.json, "
                       "vocab.txt); point to a tokenizer or checkpoint directory")
