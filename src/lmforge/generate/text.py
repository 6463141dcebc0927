"""From token ids to streamed text, with stop strings.

Each step decodes the whole answer so far (cheap next to a forward pass) and emits only the
part that is decided: text that could still become a stop string, and a trailing partial
UTF-8 character (U+FFFD), wait for the next token. A stop string ends the answer and is
not part of it (the OpenAI convention).
"""

from __future__ import annotations

from lmforge.tokenizers.base import Tokenizer


class TextStream:
    def __init__(self, tokenizer: Tokenizer, stop: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0

    def push(self, token: int | None) -> tuple[str, bool]:
        """Add a token (None: a stop token, which adds no text); return (new text, stopped)."""
        if token is not None:
            self.ids.append(token)
            self.text = self.tokenizer.decode(self.ids, skip_special=True)
        cut = self._stop_at()
        if cut is not None:
            self.text = self.text[:cut]
            return self.close(), True
        safe = len(self.text.rstrip("\ufffd")) - self._held_back()
        return self._emit(max(safe, self.emitted)), False

    def close(self) -> str:
        """The rest of the text; the stream ends."""
        return self._emit(len(self.text))

    def _emit(self, upto: int) -> str:
        delta = self.text[self.emitted: upto]
        self.emitted = max(self.emitted, upto)
        return delta

    def _stop_at(self) -> int | None:
        # search from a little before the emitted text: a stop string may straddle it
        start = max(0, self.emitted - max((len(s) for s in self.stop), default=0))
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _held_back(self) -> int:
        """Length of the longest end of the text that begins some stop string."""
        tail = self.text.rstrip("\ufffd")
        return max((k for s in self.stop for k in range(1, len(s))
                    if tail.endswith(s[:k])), default=0)
