"""/v1/completions for the masked objectives, as `lmforge generate` answers them: an
encoder fills each [MASK] with its most likely token (`generate.fill.fill_masks`, one
bidirectional pass), and an encoder-decoder trained with span corruption fills each T5
sentinel `<extra_id_k>` of a prompt that holds them (`fill_spans`, greedy). The answer is
the whole filled text, streamed as one piece when asked; sampling settings do not apply,
and settings that cannot mean anything here are a 400.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from lmforge.generate.config import GenerationConfig
from lmforge.generate.fill import (
    MASK,
    SENTINEL,
    fill_masks,
    fill_spans,
    mask_input,
    span_input,
)
from lmforge.serve.reply import Reply
from lmforge.serve.scheduler import Event
from lmforge.serve.schemas import GenerationRequest, bad

if TYPE_CHECKING:
    from lmforge.serve.app import Served

SPAN_TOKENS = GenerationConfig().max_tokens  # the spans' budget when not given (the CLI's)


def wants_fill(served: Served, req: GenerationRequest) -> bool:
    """An encoder's completion, or an encoder-decoder's prompt with sentinels to fill."""
    return served.scheduler is None or (
        served.lm.config.family == "encoder_decoder"
        and any(isinstance(p, str) and SENTINEL.search(p) for p in req.prompts))


def check_fill(req: GenerationRequest) -> None:
    """A 400 for fields a greedy fill cannot honour."""
    if any(isinstance(p, list) for p in req.prompts):
        raise bad("a fill reads [MASK] or <extra_id_k> in text: send the prompt as text, not "
                  "token ids", "prompt")
    if req.config.n != 1 or req.config.num_beams != 1:
        raise bad("a fill has one answer (the most likely tokens in each blank); leave out n "
                  "and num_beams", "n")
    if req.logprobs is not None or req.echo:
        raise bad("logprobs and echo are not given for a fill; leave them out", "logprobs")


async def fill_completion(served: Served, req: GenerationRequest):
    """The completion object (or event stream) of an encoder's [MASK] fill."""
    from lmforge.serve.generation import EventStream

    check_fill(req)
    texts = [p for p in req.prompts if isinstance(p, str)]
    spans = served.lm.config.family == "encoder_decoder"
    read = span_input if spans else mask_input
    prompts = [read(served.lm.tokenizer, t) for t in texts]
    max_tokens = req.config.max_tokens if req.max_tokens_given else SPAN_TOKENS
    async with served.lock:  # one fill at a time per model
        filled = await asyncio.to_thread(_fill_all, served.lm, texts, max_tokens)
    reply = Reply(served.id, req, prompts, len(texts), served.token_text)
    events = _events(filled)
    return EventStream(reply.sse(events)) if req.stream else await reply.whole(events)


def _fill_all(lm, texts: list[str], max_tokens: int) -> list[tuple[str, int]]:
    """(filled text, number of tokens filled in) per prompt, in order."""
    if lm.config.family == "encoder":
        return [(fill_masks(lm.model, lm.tokenizer, t), t.count(MASK)) for t in texts]
    out = []
    for t in texts:
        filled, spans = fill_spans(lm.model, lm.tokenizer, t, max_tokens)
        out.append((filled, sum(len(lm.tokenizer.encode(s, parse_special=False))
                                for s in spans)))
    return out


async def _events(filled: list[tuple[str, int]]) -> AsyncIterator[Event]:
    for i, (text, n) in enumerate(filled):
        yield Event(i, text, [], "stop", generated=n)

