"""From token ids to streamed text, with stop strings, at a constant cost per token.

Incremental detokenization (as vLLM's `detokenize_incrementally` and transformers'
`TextStreamer`): each step decodes only the ids since the last complete character, twice,

    prev = decode(ids[p:r])        new = decode(ids[p:])        delta = new[len(prev):]

where r is where the last emitted piece ended and p the token before it, so both decodings
start from the same context (SentencePiece drops a leading space at the start of a decoding:
starting one token back keeps the diff right). A trailing partial UTF-8 character (U+FFFD)
waits for the next token. The decoded text then waits in `pending` while it could still
become a stop string; only `pending` is searched, so the cost per token does not grow with
the answer. A stop string ends the answer and is not part of it (the OpenAI convention).
"""

from __future__ import annotations

from lmforge.tokenizers.base import Tokenizer

REPLACEMENT = "\ufffd"


class TextStream:
    def __init__(self, tokenizer: Tokenizer, stop: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.ids: list[int] = []
        self.prefix_offset = 0  # decodings start here (one token before read_offset)
        self.read_offset = 0  # ids before this are in `pending` or emitted
        self.pending = ""  # decoded text not emitted yet (it may start a stop string)

    def push(self, token: int | None) -> tuple[str, bool]:
        """Add a token (None: a stop token, which adds no text); return (new text, stopped)."""
        if token is not None:
            self.ids.append(token)
            self.pending += self._decoded(final=False)
        cut = self._stop_at()
        if cut is not None:
            delta, self.pending = self.pending[:cut], ""
            return delta, True
        return self._emit(len(self.pending) - self._held_back()), False

    def close(self) -> str:
        """The rest of the text, a trailing partial character included; the stream ends."""
        self.pending += self._decoded(final=True)
        return self._emit(len(self.pending))

    def _decoded(self, final: bool) -> str:
        """Text of the ids since `read_offset`, or '' while it ends in a partial character."""
        decode = self.tokenizer.decode
        new = decode(self.ids[self.prefix_offset:], skip_special=True)
        if not final and new.endswith(REPLACEMENT):
            return ""
        prev = decode(self.ids[self.prefix_offset: self.read_offset], skip_special=True)
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return new[len(prev):]

    def _emit(self, upto: int) -> str:
        delta, self.pending = self.pending[:upto], self.pending[upto:]
        return delta

    def _stop_at(self) -> int | None:
        hits = [i for i in (self.pending.find(s) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _held_back(self) -> int:
        """Length of the longest end of `pending` that begins some stop string."""
        return max((k for s in self.stop for k in range(1, len(s))
                    if self.pending.endswith(s[:k])), default=0)
