"""Constrained decoding of tool calls: only tokens that keep the text a valid call prefix.

    proc = tool_call_processor(tokenizer, [calc.spec()], mode="required")
    engine.stream([ids], config, processors=[proc])

What a valid prefix is (the `<tool_call>` layout, the schema subset, the modes and bounds) is
the character-level automaton of schema_automaton.py; this module lifts it to tokens: a
logits processor whose rows follow their generated tokens through the automaton.

Design choices:
- A token's move is the automaton fed the token's text; moves are memoised per
  (state, token), the states being immutable and hashable.
- Per step the candidates are checked lazily in descending logit order (Willard & Louf, 2023,
  index the whole vocabulary instead): the `top_n` best are kept where valid, and when none of
  them is, the first valid token further down; everything else is masked. Greedy decoding then
  picks the best valid token; sampling draws among the valid ones of the top `top_n`. Outside a
  block only tokens holding `<` or `>` can break the format, so only those are checked there
  (once per state, cached). Token texts are decoded once per tokenizer; a token that is not
  whole UTF-8 on its own (a piece of a multi-byte character) is allowed only in free text.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import torch

from lmforge.agent.schema_automaton import Stack, can_end, feed, is_free, start
from lmforge.generate.processors import NEG_INF, DecodeState, Processor
from lmforge.tokenizers.base import Tokenizer


class TokenTexts:
    """Each token's text once per tokenizer: None for special tokens and for pieces of a
    multi-byte character; `angle`: ids whose text holds `<` or `>` (the only ones that can
    open or close a block)."""

    def __init__(self, tok: Tokenizer) -> None:
        special = tok.added.special_ids
        self.texts: list[str | None] = [None if i in special else _utf8(tok.decode_bytes([i]))
                                        for i in range(tok.vocab_size)]
        self.angle = [i for i, t in enumerate(self.texts) if t and ("<" in t or ">" in t)]
        self.stop_ids = frozenset(tok.stop_token_ids)


def _utf8(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8") or None
    except UnicodeDecodeError:
        return None


@lru_cache(maxsize=4)
def token_texts(tok: Tokenizer) -> TokenTexts:
    return TokenTexts(tok)


class ToolCallProcessor:
    """The logits processor: each row's state follows its generated tokens; see the module
    docstring for the lazy candidate check."""

    def __init__(self, texts: TokenTexts, stack: Stack, top_n: int = 16) -> None:
        self.texts, self.start, self.top_n = texts, stack, top_n
        self.rows: dict[int, tuple[list[int], Stack | None]] = {}
        self.moves: dict[tuple[Stack, int], Stack | None] = {}
        self.free_bans: dict[Stack, list[int]] = {}

    def __call__(self, logits: torch.Tensor, state: DecodeState) -> torch.Tensor:
        for row in range(logits.shape[0]):
            stack = self.state_of(row, state.sequences[row][state.n_prompt[row]:])
            if stack is None:  # the row left the format (a token forced from outside)
                continue
            if is_free(stack):
                logits[row, self._free_bans(stack)] = NEG_INF
            else:
                keep = self._valid_best(logits[row], stack)
                if keep:
                    kept = logits[row, keep]
                    logits[row] = NEG_INF
                    logits[row, keep] = kept if torch.isfinite(kept).any() else 0.0
        return logits

    def state_of(self, row: int, generated: list[int]) -> Stack | None:
        """The stack after the row's generated tokens (incremental when they only grew)."""
        done, stack = self.rows.get(row, ([], self.start))
        if generated[:len(done)] != done:
            done, stack = [], self.start
        for t in generated[len(done):]:
            stack = None if stack is None else self.advance(stack, t)
        self.rows[row] = (list(generated), stack)
        return stack

    def advance(self, stack: Stack, token: int) -> Stack | None:
        key = (stack, token)
        if key not in self.moves:
            if len(self.moves) > 500_000:
                self.moves.clear()
            self.moves[key] = self._move(stack, token)
        return self.moves[key]

    def _move(self, stack: Stack, token: int) -> Stack | None:
        if token in self.texts.stop_ids:
            return stack if can_end(stack) else None
        text = self.texts.texts[token] if token < len(self.texts.texts) else None
        if text is None:  # special or partial-character tokens: free text only
            return (dataclasses.replace(stack[0], matched=0),) if is_free(stack) else None
        return feed(stack, text)

    def _free_bans(self, stack: Stack) -> list[int]:
        if stack not in self.free_bans:
            self.free_bans[stack] = [t for t in self.texts.angle
                                     if self.advance(stack, t) is None]
        return self.free_bans[stack]

    def _valid_best(self, logits: torch.Tensor, stack: Stack) -> list[int]:
        """The valid tokens among the `top_n` best, else the best valid token below them."""
        top = torch.topk(logits, min(self.top_n, logits.shape[0])).indices.tolist()
        keep = [t for t in top if self.advance(stack, t) is not None]
        if keep:
            return keep
        first_ok: dict[str, bool] = {}  # most tokens fail on their first character
        for t in torch.argsort(logits, descending=True).tolist()[len(top):]:
            text = self.texts.texts[t] if t < len(self.texts.texts) else None
            if text and first_ok.setdefault(text[0], feed(stack, text[0]) is not None) is False:
                continue
            if self.advance(stack, t) is not None:
                return [t]
        return []


def tool_call_processor(tokenizer: Tokenizer, tools: list[dict], mode: str = "auto",
                        parallel: bool = True, top_n: int = 16) -> Processor:
    """A processor constraining tool calls to `tools` (OpenAI specs). `mode`: "auto" (free
    text, calls when the model opens a block), "required" (only calls) or a tool's name
    (only calls of that tool); `parallel=False`: at most one call, then the turn ends. Make
    one per generation: it keeps the state of the rows it saw."""
    stack = start(tools, mode, None if parallel else 1)
    return ToolCallProcessor(token_texts(tokenizer), stack, top_n)
