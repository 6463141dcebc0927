"""A chat or completion request on the event-loop side: sequences in, OpenAI responses out.

`generate` checks the prompts against the context window, turns the request into one
`Sequence` per answer (n per prompt; choice index = prompt · n + answer, the seed of a
sampled answer = seed + its index, as `Engine` does), submits them to the model's scheduler
and either streams server-sent events in OpenAI's chunk format, ending with
`data: [DONE]`, or waits for whole answers (`reply.py` writes the response objects). Events
come from the scheduler thread through `loop.call_soon_threadsafe` into an asyncio queue. A
client that goes away (a failed send, or a disconnect seen while waiting) cancels its
sequences, which leave the batch at the next step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from fastapi import Request
from fastapi.responses import StreamingResponse

from lmforge.errors import LmforgeError
from lmforge.generate import context
from lmforge.generate.config import GenerationConfig
from lmforge.serve.metrics import Metrics
from lmforge.serve.reply import Reply
from lmforge.serve.scheduler import Event, Sequence
from lmforge.serve.schemas import APIError, GenerationRequest, bad

if TYPE_CHECKING:
    from lmforge.serve.app import Served

POLL_S = 0.5  # how often a waiting request checks that its client is still there


class EventStream(StreamingResponse):
    """Server-sent events whose generator is closed as soon as the stream ends or fails
    (a disconnected client), so its `finally` cancels the sequences at once."""

    media_type = "text/event-stream"

    async def stream_response(self, send) -> None:
        try:
            await super().stream_response(send)
        finally:
            await self.body_iterator.aclose()


def fit_context(ids: list[int], req: GenerationRequest, ctx: int, what: str,
                encoder_decoder: bool = False) -> GenerationConfig:
    """The request's config for this prompt under the one rule of `generate.context`: the
    API's default answer (max_tokens not given) fills the room the window leaves; what does
    not fit is a 400 `context_length_exceeded`."""
    if not ids:
        raise bad(f"the {what} is empty: give at least one token", what)
    config = req.config
    if not req.max_tokens_given:
        config = dataclasses.replace(config, max_tokens=max(ctx, config.min_tokens))
    try:
        return context.fit_context(len(ids), config, req.max_tokens_given, ctx,
                                   encoder_decoder, what)
    except LmforgeError as exc:
        raise bad(str(exc), what, "context_length_exceeded") from None


def make_sequences(prompts: list[list[int]], configs: list[GenerationConfig],
                   req: GenerationRequest, emit, tokenizer=None) -> list[Sequence]:
    """One sequence per answer; with active tools each gets its own call constraint."""
    config = configs[0]
    base = config.seed if config.seed is not None else random.randrange(2**62)
    seqs = []
    scored = req.echo and req.logprobs is not None  # the prompt's log-probabilities too
    for p, (ids, cfg) in enumerate(zip(prompts, configs, strict=True)):
        answers = 1 if cfg.num_beams > 1 else cfg.n  # beam search gives the n answers itself
        for j in range(answers):
            index = p * cfg.n + j
            constrained = req.tools is not None and req.tools.active
            seqs.append(Sequence(index, ids, cfg, emit, seed=base + index,
                                 logprobs=req.logprobs, echo=scored,
                                 score_only=req.score_only,
                                 processors=[req.tools.processor(tokenizer)] if constrained
                                 else []))
    return seqs


async def generate(request: Request, served: Served, req: GenerationRequest,
                   prompts: list[list[int]], metrics: Metrics):
    scheduler = served.scheduler
    what = "messages" if req.messages is not None else "prompt"
    try:
        req.config.check_vocab(served.lm.config.vocab_size)
    except LmforgeError as exc:
        raise bad(str(exc), "logit_bias") from None
    encoder_decoder = served.lm.config.family == "encoder_decoder"
    configs = [fit_context(ids, req, scheduler.ctx, what, encoder_decoder) for ids in prompts]
    n_choices = len(prompts) * req.config.n
    if req.logprobs is not None and req.config.num_beams > 1:
        raise bad("logprobs are not given for beam search; leave out num_beams or logprobs",
                  "logprobs")
    if req.tools is not None and req.tools.active and req.config.num_beams > 1:
        raise bad("tool calls are not constrained under beam search; leave out num_beams or "
                  "set tool_choice to \"none\"", "num_beams")
    if n_choices > scheduler.max_queue:
        raise bad(f"{len(prompts)} prompt(s) × n={req.config.n} = {n_choices} answers, more "
                  f"than this server queues ({scheduler.max_queue}); ask for fewer", "n")
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Event] = asyncio.Queue()

    def emit(event: Event) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, event)
        except RuntimeError:  # the loop has closed: the server is shutting down
            pass

    seqs = make_sequences(prompts, configs, req, emit, served.lm.tokenizer)
    scheduler.submit(seqs)
    events = watch(request, queue, n_choices, scheduler, seqs)
    reply = Reply(served.id, req, prompts, n_choices, served.token_text)
    if req.stream:
        return EventStream(reply.sse(events))
    return await reply.whole(events)


async def watch(request: Request, queue: asyncio.Queue, n_choices: int, scheduler,
                seqs: list[Sequence]) -> AsyncIterator[Event]:
    """The events of the request until every choice has finished; cancels its sequences if
    the consumer stops early or the client disconnects."""
    done = 0
    try:
        while done < n_choices:
            try:
                event = await asyncio.wait_for(queue.get(), POLL_S)
            except TimeoutError:
                if await request.is_disconnected():
                    return
                continue
            if event.error is not None:
                raise APIError(500, f"generation failed: {event.error}", kind="server_error")
            done += event.finish_reason is not None
            yield event
    finally:
        if done < n_choices:
            scheduler.cancel(seqs)
