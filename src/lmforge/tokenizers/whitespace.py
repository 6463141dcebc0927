"""Whitespace (word-level) tokenizer: the simplest baseline beside the character tokenizer.

Text is cut into words and punctuation runs by the regex `\\w+|[^\\w\\s]+` (the `tokenizers`
library's `Whitespace` pre-tokenizer), and each piece is looked up whole in the vocabulary;
a piece that is not there becomes the unknown token. Training keeps the `vocab_size`
most frequent pieces (special tokens included; ties go to the smaller string).

    >>> tok = WhitespaceTokenizer.train(["the cat, the hat"], 5, progress=False)
    >>> tok.tokens
    ['<unk>', 'the', ',', 'cat', 'hat']
    >>> tok.encode("the bat!")
    [1, 0, 0]

Decoding joins the tokens with single spaces (as `tokenizers` decodes a WordLevel model
with no decoder), so spacing is lost: "cat, hat" comes back as "cat , hat". Saved as a
WordLevel `tokenizer.json` with the Whitespace pre-tokenizer, which `tokenizers` reads with
the same ids, plus `tokenizer_config.json`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import regex

from lmforge.errors import LmforgeError
from lmforge.tokenizers import hf_files
from lmforge.tokenizers.added import AddedToken, AddedVocab
from lmforge.tokenizers.base import ListVocab, SpecialTokens, Tokenizer
from lmforge.tokenizers.training import check_special, count_words

PATTERN = regex.compile(r"\w+|[^\w\s]+")


class WhitespaceTokenizer(ListVocab, Tokenizer):
    def __init__(self, tokens: Sequence[str], *, unk_token: str = "<unk>",
                 eos_token: str | None = None, added: Iterable[AddedToken] | None = None,
                 chat_template: str | None = None):
        """`tokens` by id; `unk_token` (and `eos_token`, if given) must be among them.
        Without `added`, the unknown token is the only special token."""
        self.tokens = list(tokens)
        self._ids = {t: i for i, t in enumerate(self.tokens)}
        roles = [t for t in (unk_token, eos_token) if t is not None]
        if any(t not in self._ids for t in roles) or len(self._ids) != len(self.tokens):
            raise LmforgeError(f"a whitespace vocabulary needs distinct tokens including "
                               f"{roles}; check the vocabulary file")
        unk = self._ids[unk_token]
        added = [AddedToken(unk_token, unk)] if added is None else added
        eos = None if eos_token is None else self._ids[eos_token]
        super().__init__(SpecialTokens(unk=unk, eos=eos), AddedVocab(added), chat_template)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, *, special: Sequence[str] = (),
              unk_token: str = "<unk>", eos: str | None = None, progress: bool = True
              ) -> WhitespaceTokenizer:
        """The `vocab_size` tokens: `unk_token`, `special` (and `eos`), then the most
        frequent pieces."""
        special = check_special([unk_token, *special, *([eos] if eos else [])], vocab_size, 0)
        counts = count_words(texts, PATTERN.findall, special=special, progress=progress)
        words = sorted(counts, key=lambda w: (-counts[w], w))[:vocab_size - len(special)]
        return cls([*special, *words], unk_token=unk_token, eos_token=eos,
                   added=[AddedToken(t, i) for i, t in enumerate(special)])

    def _encode_ordinary(self, text: str) -> list[int]:
        ids, unk = self._ids, self.special.unk
        return [ids.get(w, unk) for w in PATTERN.findall(text)]  # type: ignore[misc]

    def decode_bytes(self, ids: Iterable[int], *, skip_special: bool = False) -> bytes:
        skip = self.added.special_ids if skip_special else frozenset()
        return " ".join(self.id_to_token(i) for i in ids if i not in skip).encode("utf-8")

    # -- saving and loading -----------------------------------------------------------------

    def to_tokenizer_json(self) -> dict:
        return {
            "version": "1.0", "truncation": None, "padding": None,
            "added_tokens": hf_files.added_tokens_json(self.added),
            "normalizer": None, "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": None, "decoder": None,
            "model": {"type": "WordLevel", "vocab": self._ids,
                      "unk_token": self.tokens[self.special.unk]},  # type: ignore[index]
        }

    def save(self, directory: str | Path) -> None:
        hf_files.write_dir(directory, self.to_tokenizer_json(), hf_files.config_json(self))

    @classmethod
    def from_tokenizer_json(cls, obj: dict, config: dict | None = None) -> WhitespaceTokenizer:
        """Build from a parsed WordLevel `tokenizer.json` with the Whitespace pre-tokenizer."""
        model, pre = obj.get("model", {}), obj.get("pre_tokenizer") or {}
        if model.get("type") != "WordLevel" or pre.get("type") != "Whitespace" or \
                obj.get("normalizer") is not None:
            raise LmforgeError(f"tokenizer.json holds a {model.get('type')!r} model with "
                               f"pre-tokenizer {pre.get('type')!r}; lmforge reads a WordLevel "
                               "model only with the Whitespace pre-tokenizer and no normalizer")
        added = hf_files.read_added_tokens(obj)
        return cls(hf_files.id_list(model.get("vocab") or {}, added),
                   unk_token=model.get("unk_token", "<unk>"), added=added,
                   eos_token=(config or {}).get("eos_token"),
                   chat_template=hf_files.read_chat_template(config or {}))
