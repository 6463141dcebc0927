"""Added tokens: strings matched whole in the text before the subword algorithm sees it.

Two kinds, as in Hugging Face `tokenizers` and llama.cpp:
- special (GGUF token type 3, "control"): `<|im_start|>`, `<|endoftext|>`. Matched only when
  parsing special tokens, dropped by `decode(skip_special=True)`.
- plain added (GGUF token type 4, "user-defined"): matched always, even in chat content,
  and kept when decoding.

Matching is leftmost-longest: at the first position where any token matches, the longest one
wins ("<|im_start|>x" never matches a shorter "<|im" token). A regex alternation with the
longest strings first gives exactly that.

    >>> vocab = AddedVocab([AddedToken("<|a|>", 5, special=True)])
    >>> list(vocab.split("x<|a|>y", parse_special=True))
    [('x', None), ('<|a|>', 5), ('y', None)]
    >>> list(vocab.split("x<|a|>y", parse_special=False))
    [('x<|a|>y', None)]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import regex


@dataclass(frozen=True)
class AddedToken:
    content: str
    id: int
    special: bool = True


def _alternation(tokens: list[AddedToken]) -> regex.Pattern | None:
    if not tokens:
        return None
    contents = sorted({t.content for t in tokens}, key=len, reverse=True)
    return regex.compile("|".join(regex.escape(c) for c in contents))


class AddedVocab:
    """The added tokens of one tokenizer and the two patterns that find them."""

    def __init__(self, tokens: Iterable[AddedToken] = ()):
        self.tokens = sorted(tokens, key=lambda t: t.id)
        self.by_content = {t.content: t for t in self.tokens}
        self.special_ids = frozenset(t.id for t in self.tokens if t.special)
        self._all = _alternation(self.tokens)
        self._plain = _alternation([t for t in self.tokens if not t.special])

    def contains_special(self, text: str) -> bool:
        """Whether `text` holds a special token's string (which `split` would match)."""
        return any(i in self.special_ids for _, i in self.split(text, parse_special=True))

    def split(self, text: str, *, parse_special: bool) -> Iterator[tuple[str, int | None]]:
        """`(piece, id)` for each added token found, `(piece, None)` for the text between."""
        pattern = self._all if parse_special else self._plain
        if pattern is None:
            if text:
                yield text, None
            return
        pos = 0
        for m in pattern.finditer(text):
            if m.start() > pos:
                yield text[pos:m.start()], None
            yield m.group(), self.by_content[m.group()].id
            pos = m.end()
        if pos < len(text):
            yield text[pos:], None
