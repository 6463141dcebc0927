"""The tokenizer interface every lmforge tokenizer implements.

A tokenizer maps text to ids and back, knows its special tokens, renders chat messages
through a template, and saves itself as a tokenizer directory:
`tokenizer.json` (the Hugging Face format, so other tools read it) plus
`tokenizer_config.json` (special tokens, chat template).

Special-token parsing: a raw prompt (`parse_special=True`) turns the text "<|im_end|>" into
that special token's id; chat message content is encoded with `parse_special=False`, so the
same text is ordinary characters and can never open or close a turn.

Encoding is two stages shared by every subclass:
1. `AddedVocab.split` cuts the text at added-token strings (special ones only when parsing);
2. the ordinary text between them goes through the subclass's `_encode_ordinary`
   (pre-tokenization + the subword algorithm).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.tokenizers.added import AddedVocab


@dataclass
class SpecialTokens:
    """Ids of the tokens with a role; None where the tokenizer has no such token."""

    bos: int | None = None
    eos: int | None = None
    pad: int | None = None
    unk: int | None = None
    add_bos: bool = False  # prepend BOS to a raw prompt (the model's metadata says so)
    add_eos: bool = False
    extra_stop: list[int] = field(default_factory=list)  # e.g. <|im_end|>, <|eot_id|>


class Tokenizer(ABC):
    """Text ↔ ids. Subclasses implement `_encode_ordinary`, `decode_bytes`, `vocab_size`,
    `id_to_token`, `token_to_id` and `save`."""

    def __init__(self, special: SpecialTokens, added: AddedVocab, chat_template: str | None):
        """Called last by subclasses: finding the template's end-of-turn token encodes text."""
        from lmforge.tokenizers.chat import end_of_turn_ids

        self.special = special
        self.added = added
        self.chat_template = chat_template
        if not special.extra_stop:
            special.extra_stop = end_of_turn_ids(self)

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def _encode_ordinary(self, text: str) -> list[int]:
        """Ids of text that holds no added token (the subword algorithm alone)."""

    @abstractmethod
    def decode_bytes(self, ids: Iterable[int], *, skip_special: bool = False) -> bytes:
        """The bytes `ids` stand for; a streaming decoder feeds these to an incremental UTF-8
        decoder so a character split across two tokens is printed once it is whole."""

    @abstractmethod
    def id_to_token(self, i: int) -> str: ...

    @abstractmethod
    def token_to_id(self, token: str) -> int | None: ...

    @abstractmethod
    def save(self, directory: str | Path) -> None:
        """Write a tokenizer directory (tokenizer.json + tokenizer_config.json)."""

    def encode(self, text: str, *, parse_special: bool = True, add_bos: bool | None = None
               ) -> list[int]:
        """Ids of `text`. `add_bos=None` follows `special.add_bos`; EOS `special.add_eos`."""
        ids = self.encode_spans([(text, parse_special)])
        if self.special.add_bos if add_bos is None else add_bos:
            ids.insert(0, self._required("bos"))
        if self.special.add_eos:
            ids.append(self._required("eos"))
        return ids

    def encode_spans(self, spans: Iterable[tuple[str, bool]]) -> list[int]:
        """Ids of the concatenated texts of `(text, parse_special)` spans, without BOS/EOS.

        Special-token strings are looked for inside each span on its own, as its flag says;
        the ordinary text between special tokens is joined across spans before it is encoded,
        so pre-tokenization sees exactly the string a single `encode` of the whole text would.
        This is how a chat is encoded: template text parsed, message content not.
        """
        ids: list[int] = []
        pending: list[str] = []
        for text, parse_special in spans:
            for piece, token_id in self.added.split(text, parse_special=parse_special):
                if token_id is None:
                    pending.append(piece)
                    continue
                if pending:
                    ids += self._encode_ordinary("".join(pending))
                    pending.clear()
                ids.append(token_id)
        if pending:
            ids += self._encode_ordinary("".join(pending))
        return ids

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """Text of `ids`; invalid UTF-8 (e.g. a partial character at the end) becomes U+FFFD."""
        return self.decode_bytes(ids, skip_special=skip_special).decode("utf-8", errors="replace")

    @property
    def stop_token_ids(self) -> list[int]:
        """Tokens that end a generation: EOS plus the template's end-of-turn tokens."""
        ids = [] if self.special.eos is None else [self.special.eos]
        return ids + [i for i in self.special.extra_stop if i not in ids]

    def apply_chat_template(self, messages: list[dict], *, add_generation_prompt: bool = True,
                            tools: list[dict] | None = None) -> list[int]:
        """Ids of a chat: the template inserts the real special tokens, content is plain text;
        `tools` (OpenAI function specs) go to templates that render them."""
        from lmforge.tokenizers.chat import encode_chat

        return encode_chat(self, messages, add_generation_prompt=add_generation_prompt,
                           tools=tools)

    def _required(self, role: str) -> int:
        token_id = getattr(self.special, role)
        if token_id is None:
            raise LmforgeError(f"this tokenizer is set to add a {role.upper()} token but has "
                               f"none; set special.{role} or turn off special.add_{role}")
        return token_id


class ListVocab:
    """`vocab_size`, `id_to_token` and `token_to_id` for a tokenizer that keeps `tokens`
    (id → string) and `_ids` (string → id); listed before `Tokenizer` in the bases."""

    tokens: list[str]
    _ids: dict[str, int]

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def id_to_token(self, i: int) -> str:
        if not 0 <= i < len(self.tokens):
            raise LmforgeError(f"token id {i} is out of range for a vocabulary of "
                               f"{len(self.tokens)} tokens")
        return self.tokens[i]

    def token_to_id(self, token: str) -> int | None:
        return self._ids.get(token)
