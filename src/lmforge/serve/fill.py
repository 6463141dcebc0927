"""/v1/completions for an encoder: each prompt's [MASK] tokens filled with the model's most
likely tokens (`generate.fill.fill_masks`, one bidirectional pass, as `lmforge generate`
does for an encoder). The answer is the whole filled text, streamed as one piece when
asked; sampling settings do not apply (an encoder does not generate left to right), and
settings that cannot mean anything here are a 400.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from lmforge.generate.fill import MASK, fill_masks, mask_input
from lmforge.serve.reply import Reply
from lmforge.serve.scheduler import Event
from lmforge.serve.schemas import GenerationRequest, bad

if TYPE_CHECKING:
    from lmforge.serve.app import Served


def check_fill(req: GenerationRequest) -> None:
    """A 400 for fields an encoder's one-pass fill cannot honour."""
    if any(isinstance(p, list) for p in req.prompts):
        raise bad("an encoder fills [MASK] in text: send the prompt as text, not token ids",
                  "prompt")
    if req.config.n != 1 or req.config.num_beams != 1:
        raise bad("an encoder's fill has one answer (the most likely token at each [MASK]); "
                  "leave out n and num_beams", "n")
    if req.logprobs is not None or req.echo:
        raise bad("logprobs and echo are not given for an encoder's [MASK] fill; leave them "
                  "out", "logprobs")


async def fill_completion(served: Served, req: GenerationRequest):
    """The completion object (or event stream) of an encoder's [MASK] fill."""
    from lmforge.serve.generation import EventStream

    check_fill(req)
    texts = [p for p in req.prompts if isinstance(p, str)]
    prompts = [mask_input(served.lm.tokenizer, t) for t in texts]
    async with served.lock:  # one pass at a time per model
        filled = await asyncio.to_thread(_fill_all, served.lm, texts)
    reply = Reply(served.id, req, prompts, len(texts), served.token_text)
    events = _events(filled)
    return EventStream(reply.sse(events)) if req.stream else await reply.whole(events)


def _fill_all(lm, texts: list[str]) -> list[tuple[str, int]]:
    """(filled text, number of tokens filled in) per prompt, in order."""
    return [(fill_masks(lm.model, lm.tokenizer, t), t.count(MASK)) for t in texts]


async def _events(filled: list[tuple[str, int]]) -> AsyncIterator[Event]:
    for i, (text, n) in enumerate(filled):
        yield Event(i, text, [], "stop", generated=n)

