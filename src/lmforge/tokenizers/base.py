"""The tokenizer interface every lmforge tokenizer implements.

A tokenizer maps text to ids and back, knows its special tokens, renders chat messages
through a template, and saves itself as a tokenizer directory:
`tokenizer.json` (the Hugging Face format, so other tools read it) plus
`tokenizer_config.json` (special tokens, chat template).

Special-token parsing: a raw prompt (`parse_special=True`) turns the text "<|im_end|>" into
that special token's id; chat message content is encoded with `parse_special=False`, so the
same text is ordinary characters and can never open or close a turn.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path


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
    """Text ↔ ids. Subclasses implement `_encode_ordinary`, `decode_bytes`, `vocab_size`."""

    special: SpecialTokens
    chat_template: str | None = None

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def encode(self, text: str, *, parse_special: bool = True, add_bos: bool | None = None
               ) -> list[int]:
        """Ids of `text`. `add_bos=None` follows `special.add_bos`."""

    @abstractmethod
    def decode(self, ids: list[int], *, skip_special: bool = False) -> str:
        """Text of `ids`; invalid UTF-8 at the end (a partial character) becomes U+FFFD."""

    @abstractmethod
    def id_to_token(self, i: int) -> str: ...

    @abstractmethod
    def token_to_id(self, token: str) -> int | None: ...

    @abstractmethod
    def save(self, directory: str | Path) -> None:
        """Write a tokenizer directory (tokenizer.json + tokenizer_config.json)."""

    @property
    def stop_token_ids(self) -> list[int]:
        """Tokens that end a generation: EOS plus the template's end-of-turn tokens."""
        ids = [] if self.special.eos is None else [self.special.eos]
        return ids + [i for i in self.special.extra_stop if i not in ids]

    def apply_chat_template(self, messages: list[dict], *, add_generation_prompt: bool = True
                            ) -> list[int]:
        """Ids of a chat: the template inserts the real special tokens, content is plain text."""
        from lmforge.tokenizers.chat import encode_chat

        return encode_chat(self, messages, add_generation_prompt=add_generation_prompt)
