"""Context/continuation tokenisation as lm-evaluation-harness does it
(`TemplateLM._encode_pair`, `lm_eval/api/model.py`).

Trailing spaces of the context move to the continuation ("Answer: " + "x" is read as
"Answer:" + " x"); the continuation's ids are the ids of context + continuation after the
context's own ids, even where a token would straddle the boundary (as the harness does).
"""

from __future__ import annotations

from collections.abc import Sequence

from lmforge.tokenizers.base import Tokenizer


def _plain(tok: Tokenizer, text: str) -> list[int]:
    return tok.encode_spans([(text, False)])


def encode_choices(tok: Tokenizer, context: str, continuations: Sequence[str]
                   ) -> tuple[list[int], list[list[int]]]:
    """(context ids, [continuation ids]): the context is encoded once, each context +
    continuation once (the harness encodes the context again for every choice)."""
    n_spaces = len(context) - len(context.rstrip())
    context, spaces = (context[:-n_spaces], context[-n_spaces:]) if n_spaces else (context, "")
    ctx = _plain(tok, context)
    return ctx, [_plain(tok, context + spaces + c)[len(ctx):] for c in continuations]


def encode_pair(tok: Tokenizer, context: str, continuation: str
                ) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) of one pair."""
    ctx, (cont,) = encode_choices(tok, context, [continuation])
    return ctx, cont
