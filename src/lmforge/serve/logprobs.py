"""Log-probabilities in OpenAI's two response formats.

Completions (`logprobs: k`, 0–5): parallel lists over the tokens of the choice's text,
    {"tokens": [...], "token_logprobs": [...], "top_logprobs": [{token: logprob}, ...],
     "text_offset": [...]}
where the first token of an echoed prompt has no context: its log-probability and its
alternatives are null. A token that is not whole UTF-8 is written "bytes:\\xNN…", as OpenAI
does. `text_offset` is each token's character offset in the choice's text, the running sum
of the tokens' lengths (as vLLM computes it).

Chat (`logprobs: true`, `top_logprobs: k`, 0–20):
    {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob",
     "bytes"}]}], "refusal": null}

The values are those of the model, log softmax of its logits before any sampling setting
(`generate/row.py`), equal to `lmforge.score`'s.
"""

from __future__ import annotations

from lmforge.generate.row import TokenLogprob
from lmforge.tokenizers.base import Tokenizer


class TokenText:
    """A tokenizer's tokens as text and bytes, memoised (a vocabulary is revisited often)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._bytes: dict[int, bytes] = {}

    def bytes(self, token: int) -> bytes:
        b = self._bytes.get(token)
        if b is None:
            b = self._bytes[token] = self.tokenizer.decode_bytes([token])
        return b

    def text(self, token: int) -> str:
        """The token's text, or "bytes:\\xNN…" when its bytes are not whole UTF-8."""
        b = self.bytes(token)
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{c:02x}" for c in b)


def completion_logprobs(tt: TokenText, tokens: list[int], lps: list[TokenLogprob | None],
                        start: int = 0) -> dict:
    """OpenAI's completions `logprobs` object for `tokens`, the first at character `start`."""
    texts = [tt.text(t) for t in tokens]
    offsets, at = [], start
    for s in texts:
        offsets.append(at)
        at += len(s)
    return {"tokens": texts,
            "token_logprobs": [None if lp is None else lp.logprob for lp in lps],
            "top_logprobs": [None if lp is None else {tt.text(t): v for t, v in lp.top}
                             for lp in lps],
            "text_offset": offsets}


def merge_completion(a: dict | None, b: dict) -> dict:
    """Two completions `logprobs` objects one after the other (streamed pieces, echo)."""
    if a is None:
        return b
    return {k: a[k] + b[k] for k in a}


def chat_logprobs(tt: TokenText, lps: list[TokenLogprob]) -> dict:
    """OpenAI's chat `logprobs` object for these tokens."""
    def entry(token: int, logprob: float) -> dict:
        return {"token": tt.text(token), "logprob": logprob, "bytes": list(tt.bytes(token))}

    return {"content": [{**entry(lp.token, lp.logprob),
                         "top_logprobs": [entry(t, v) for t, v in lp.top]} for lp in lps],
            "refusal": None}
