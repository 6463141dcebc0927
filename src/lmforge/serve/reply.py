"""OpenAI response objects of one request: a whole answer, or server-sent event chunks.

A completion choice with `echo` starts with its prompt's text, and with `logprobs` its
prompt tokens' log-probabilities (the first null) come before the answer's
(`serve/logprobs.py` writes both formats). Streamed, a chunk goes out for every token that
completes text or carries log-probabilities; usage comes last when asked for. With tools,
a chat answer's calls become `tool_calls` (`serve/tools.py`), whole or as call deltas.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

from lmforge.serve.logprobs import (
    TokenText,
    chat_logprobs,
    completion_logprobs,
    merge_completion,
)
from lmforge.serve.scheduler import Event
from lmforge.serve.schemas import APIError, GenerationRequest
from lmforge.serve.tools import CallStream


class Reply:
    """The response of one chat or text-completion request with `n` choices."""

    def __init__(self, model: str, req: GenerationRequest, prompts: list[list[int]], n: int,
                 tokens: TokenText) -> None:
        self.chat = req.messages is not None
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.model, self.req, self.n, self.tt = model, req, n, tokens
        self.prompts = prompts
        self.per_prompt = max(1, n // len(prompts))
        self.offsets = [0] * n  # characters of each choice's text so far (text_offset)
        tools = req.tools if req.tools is not None and req.tools.active else None
        self.tools = tools
        self.calls = [CallStream(tools.parallel) for _ in range(n)] if tools else None
        prompt_tokens = sum(map(len, prompts))
        self.usage = {"prompt_tokens": prompt_tokens, "completion_tokens": 0,
                      "total_tokens": prompt_tokens}

    def _count(self, event: Event) -> None:
        self.usage["completion_tokens"] += event.n_tokens
        self.usage["total_tokens"] += event.n_tokens

    def _object(self, kind: str, choices: list[dict], usage: bool) -> dict:
        out = {"id": self.id, "object": kind, "created": self.created, "model": self.model,
               "system_fingerprint": None, "choices": choices}
        if usage:
            out["usage"] = dict(self.usage)
        return out

    def _piece(self, ev: Event) -> tuple[str, dict | None]:
        """The text and the `logprobs` object an event adds to its choice (the echoed
        prompt first, on a completion's first event)."""
        text, lps = ev.text, None
        if self.chat:
            return text, chat_logprobs(self.tt, ev.logprobs) if ev.logprobs else None
        if self.req.echo and self._first[ev.index]:
            prompt = self.prompts[ev.index // self.per_prompt]
            text = self.tt.tokenizer.decode(prompt) + text
            if ev.prompt_logprobs is not None:
                lps = self._completion(ev.index, prompt, ev.prompt_logprobs)
        if ev.logprobs:
            lps = merge_completion(lps, self._completion(ev.index, ev.tokens, ev.logprobs))
        self._first[ev.index] = False
        return text, lps

    def _completion(self, index: int, tokens: list[int], lps: list) -> dict:
        out = completion_logprobs(self.tt, tokens, lps, self.offsets[index])
        self.offsets[index] += sum(len(t) for t in out["tokens"])
        return out

    async def whole(self, events: AsyncIterator[Event]) -> dict:
        self._first = [True] * self.n
        texts, reasons = [""] * self.n, [None] * self.n
        logprobs: list[dict | None] = [None] * self.n
        async for ev in events:
            self._count(ev)
            text, lps = self._piece(ev)
            texts[ev.index] += text
            reasons[ev.index] = ev.finish_reason or reasons[ev.index]
            if lps is not None:
                logprobs[ev.index] = (lps if logprobs[ev.index] is None else self._merged(
                    logprobs[ev.index], lps))
        wanted = self.req.logprobs is not None
        if self.chat:
            choices = [{"index": i, "message": self._message(t),
                        "logprobs": (lp or {"content": [], "refusal": None}) if wanted else None,
                        "finish_reason": r}
                       for i, (t, r, lp) in enumerate(zip(texts, reasons, logprobs, strict=True))]
            for c in choices:
                if c["message"].get("tool_calls") and c["finish_reason"] == "stop":
                    c["finish_reason"] = "tool_calls"
            return self._object("chat.completion", choices, True)
        choices = [{"index": i, "text": t, "logprobs": lp if wanted else None, "finish_reason": r}
                   for i, (t, r, lp) in enumerate(zip(texts, reasons, logprobs, strict=True))]
        return self._object("text_completion", choices, True)

    def _message(self, text: str) -> dict:
        if self.tools is None:
            return {"role": "assistant", "content": text}
        content, calls = self.tools.split(text)
        return {"role": "assistant", "content": content,
                **({"tool_calls": calls} if calls else {})}

    def _merged(self, a: dict, b: dict) -> dict:
        if self.chat:
            return {"content": a["content"] + b["content"], "refusal": None}
        return merge_completion(a, b)

    def _chunk(self, index: int, text: str | None, reason: str | None,
               logprobs: dict | None = None) -> str:
        if self.chat:
            delta = {} if text is None else ({"role": "assistant", "content": ""}
                                             if text == "" and reason is None
                                             and logprobs is None else {"content": text})
            return self._delta(index, delta, reason, logprobs)
        choice = {"index": index, "text": text or "", "logprobs": logprobs,
                  "finish_reason": reason}
        return sse(self._object("text_completion", [choice], False))

    def _delta(self, index: int, delta: dict, reason: str | None = None,
               logprobs: dict | None = None) -> str:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
        return sse(self._object("chat.completion.chunk", [choice], False))

    def _call_chunks(self, index: int, k: int, call) -> list[str]:
        """Call `k` of choice `index` as OpenAI streams it: its header, then its arguments."""
        head = call.to_openai()
        arguments = head["function"]["arguments"]
        head = {"index": k, **head, "function": {"name": call.name, "arguments": ""}}
        return [self._delta(index, {"tool_calls": [head]}),
                self._delta(index, {"tool_calls": [{"index": k,
                                                    "function": {"arguments": arguments}}]})]

    def _streamed(self, ev: Event, text: str, lps: dict | None) -> list[str]:
        """The chunks of one event of a chat with tools: content, then any closed calls,
        then the finish (tool_calls when the choice made calls and stopped)."""
        stream = self.calls[ev.index]
        before = stream.n_calls
        content, calls = stream.feed(text, final=ev.finish_reason is not None)
        out = [self._chunk(ev.index, content, None, lps)] if content or lps is not None else []
        for k, call in enumerate(calls, before):
            out += self._call_chunks(ev.index, k, call)
        if ev.finish_reason is not None:
            reason = "tool_calls" if stream.n_calls and ev.finish_reason == "stop" \
                else ev.finish_reason
            out.append(self._chunk(ev.index, None, reason))
        return out

    async def sse(self, events: AsyncIterator[Event]) -> AsyncIterator[str]:
        self._first = [True] * self.n
        try:
            if self.chat:  # OpenAI opens each choice with its role
                for i in range(self.n):
                    yield self._chunk(i, "", None)
            async for ev in events:
                self._count(ev)
                text, lps = self._piece(ev)
                if self.calls is not None:
                    for chunk in self._streamed(ev, text, lps):
                        yield chunk
                    continue
                if text or lps is not None:
                    yield self._chunk(ev.index, text, None, lps)
                if ev.finish_reason is not None:
                    yield self._chunk(ev.index, None if self.chat else "", ev.finish_reason)
            if self.req.include_usage:
                kind = "chat.completion.chunk" if self.chat else "text_completion"
                yield sse(self._object(kind, [], True))
        except APIError as exc:
            yield sse(exc.body())
        finally:
            await events.aclose()
        yield "data: [DONE]\n\n"


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
