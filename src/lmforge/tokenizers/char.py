"""Character-level tokenizer: one id per Unicode code point seen in a training text.

The vocabulary is the special tokens (ids 0..k-1, in the order given) followed by the text's
distinct characters, sorted by code point, so the same text always gives the same ids.

    >>> tok = CharTokenizer.from_text("hello", eos="<|eos|>")
    >>> tok.encode("hole<|eos|>")
    [2, 4, 3, 1, 0]

A character outside the vocabulary becomes the unk token if there is one, else an error.
Saved as `char_tokenizer.json` ({"format": "lmforge-char/1", ...}, the file lmforge loads),
plus a WordLevel `tokenizer.json` that the `tokenizers` library reads with the same ids, and
`tokenizer_config.json`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.io import atomic_write_text
from lmforge.tokenizers import hf_files
from lmforge.tokenizers.added import AddedToken, AddedVocab
from lmforge.tokenizers.base import ListVocab, SpecialTokens, Tokenizer

FORMAT = "lmforge-char/1"
FILENAME = "char_tokenizer.json"
_ROLES = ("bos", "eos", "pad", "unk")


class CharTokenizer(ListVocab, Tokenizer):
    def __init__(self, chars: Sequence[str], specials: Sequence[str] = (), *,
                 roles: dict[str, str] | None = None, add_bos: bool = False,
                 chat_template: str | None = None):
        """`specials` take ids 0..k-1, then `chars`; `roles` maps bos/eos/pad/unk to specials."""
        roles = {r: t for r, t in (roles or {}).items() if t is not None}
        bad = [c for c in chars if len(c) != 1] + [t for t in roles.values() if t not in specials]
        if bad or len(set(chars)) != len(chars) or len(set(specials)) != len(specials):
            raise LmforgeError(f"a character tokenizer needs distinct single characters and "
                               f"roles among its special tokens; check {bad[:3] or 'duplicates'}")
        self.tokens = [*specials, *chars]
        self._ids = {t: i for i, t in enumerate(self.tokens)}
        self._n_special = len(specials)
        special = SpecialTokens(**{r: self._ids[t] for r, t in roles.items()}, add_bos=add_bos)
        added = AddedVocab(AddedToken(t, i) for i, t in enumerate(specials))
        super().__init__(special, added, chat_template)

    @classmethod
    def from_text(cls, text: str, *, bos: str | None = None, eos: str | None = None,
                  pad: str | None = None, unk: str | None = None,
                  extra_special: Iterable[str] = (), chat_template: str | None = None
                  ) -> CharTokenizer:
        """The tokenizer of `text`'s characters; role tokens first, then `extra_special`."""
        roles = {"bos": bos, "eos": eos, "pad": pad, "unk": unk}
        specials = list(dict.fromkeys(t for t in [*roles.values(), *extra_special] if t))
        return cls(sorted(set(text)), specials, roles=roles, chat_template=chat_template)

    def _encode_ordinary(self, text: str) -> list[int]:
        ids = [self._ids.get(c, self.special.unk) for c in text]
        if None in ids:
            c = text[ids.index(None)]
            raise LmforgeError(f"character {c!r} (U+{ord(c):04X}) is not in this character "
                               "tokenizer's vocabulary and it has no unk token; build it from "
                               "text that contains the character, or with unk=...")
        return ids  # type: ignore[return-value]

    def decode_bytes(self, ids: Iterable[int], *, skip_special: bool = False) -> bytes:
        skip = self.added.special_ids if skip_special else frozenset()
        return "".join(self.id_to_token(i) for i in ids if i not in skip).encode("utf-8")

    # -- saving and loading -----------------------------------------------------------------

    def _roles(self) -> dict[str, str]:
        return {r: self.tokens[i] for r in _ROLES if (i := getattr(self.special, r)) is not None}

    def to_tokenizer_json(self) -> dict:
        """A WordLevel `tokenizer.json`: each character is its own pre-token."""
        return {
            "version": "1.0", "truncation": None, "padding": None,
            "added_tokens": hf_files.added_tokens_json(self.added),
            "normalizer": None,
            "pre_tokenizer": {"type": "Split", "pattern": {"Regex": r"[\s\S]"},
                              "behavior": "Isolated", "invert": False},
            "post_processor": hf_files.post_processor_json(self, byte_level=False),
            "decoder": {"type": "Fuse"},  # join tokens without the default spaces
            # WordLevel always names an unk token; one not in the vocabulary makes an unknown
            # character an error there too
            "model": {"type": "WordLevel", "vocab": self._ids,
                      "unk_token": self._roles().get("unk", "<unk>")},
        }

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        own = {"format": FORMAT, "special_tokens": self.tokens[:self._n_special],
               "chars": self.tokens[self._n_special:], "roles": self._roles(),
               "add_bos": self.special.add_bos, "chat_template": self.chat_template}
        atomic_write_text(d / FILENAME, json.dumps(own, ensure_ascii=False, indent=1) + "\n")
        hf_files.write_dir(d, self.to_tokenizer_json(), hf_files.config_json(self))

    @classmethod
    def load(cls, directory: str | Path) -> CharTokenizer:
        own = hf_files.read_json(Path(directory) / FILENAME)
        if own.get("format") != FORMAT:
            raise LmforgeError(f"{Path(directory) / FILENAME} has format {own.get('format')!r}; "
                               f"this lmforge reads {FORMAT!r}")
        return cls(own["chars"], own["special_tokens"], roles=own["roles"],
                   add_bos=own["add_bos"], chat_template=own["chat_template"])
