"""`lmforge chat --api URL`: the local chat's interface over a running OpenAI-compatible server.

The history lives here and is re-sent each turn (the server's prefix reuse makes that cheap).
When the server answers that the history is too long for its context window
(code `context_length_exceeded`), the oldest user/assistant turn is dropped, the user is
told, and the request is sent again, as `ChatSession` does locally.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import httpx

from lmforge.console import chat_loop, print_answer, take_dropped
from lmforge.errors import LmforgeError
from lmforge.generate.config import LOCAL_ONLY, GenerationConfig


class ContextTooLong(LmforgeError):
    """The server's context window cannot hold the history plus the answer."""


def api_base(url: str) -> str:
    """`http://host:port` or `http://host:port/v1` → `http://host:port/v1`."""
    if not url.startswith(("http://", "https://")):
        raise LmforgeError(f"--api {url!r} is not an http(s) URL; give e.g. "
                           "http://127.0.0.1:8000")
    base = url.rstrip("/")
    return base if base.endswith("/v1") else base + "/v1"


def error_message(response: httpx.Response) -> tuple[str, str | None]:
    """(message, code) of an OpenAI error answer."""
    try:
        err = response.json()["error"]
        return str(err.get("message")), err.get("code")
    except (ValueError, KeyError, TypeError):
        return response.text[:300] or response.reason_phrase, None


class ApiChat:
    """A multi-turn chat whose answers come from a server."""

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None,
                 system: str | None = None) -> None:
        self.base = api_base(url)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(headers=headers, timeout=httpx.Timeout(10.0, read=600.0))
        self.system = system
        self.messages: list[dict] = []
        self.dropped = 0
        self.model = model or self._first_model()

    def _first_model(self) -> str:
        try:
            r = self.http.get(self.base + "/models")
        except httpx.HTTPError as exc:
            raise LmforgeError(f"cannot reach {self.base} ({exc}); start a server with "
                               "`lmforge serve --model NAME` or fix --api") from None
        if r.status_code != 200:
            raise LmforgeError(f"{self.base}/models answered {r.status_code}: "
                               f"{error_message(r)[0]}")
        chat = [m["id"] for m in r.json()["data"] if m.get("kind", "chat") == "chat"]
        if not chat:
            raise LmforgeError(f"the server at {self.base} serves no chat model")
        return chat[0]

    def reset(self) -> None:
        self.messages = []

    def send(self, text: str, config: GenerationConfig) -> Iterator[str]:
        """Stream the answer to `text`, dropping the oldest turns while the server says the
        history does not fit (`self.dropped` counts them)."""
        self.messages.append({"role": "user", "content": text})
        self.dropped = 0
        while True:
            try:
                yield from self._answer(config)
                return
            except ContextTooLong:
                if len(self.messages) <= 1:
                    self.messages.pop()
                    raise
                n = 2 if len(self.messages) > 2 and self.messages[1]["role"] == "assistant" else 1
                self.messages = self.messages[n:]
                self.dropped += 1

    def _answer(self, config: GenerationConfig) -> Iterator[str]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        settings = {k: v for k, v in config.to_dict().items()
                    if v is not None and v != {} and v != [] and k not in LOCAL_ONLY}
        body = {"model": self.model, "messages": head + self.messages, "stream": True,
                **settings}
        with self.http.stream("POST", self.base + "/chat/completions", json=body) as r:
            if r.status_code != 200:
                r.read()
                message, code = error_message(r)
                if code == "context_length_exceeded":
                    raise ContextTooLong(message)
                self.messages.pop()
                raise LmforgeError(f"the server answered {r.status_code}: {message}")
            answer = {"role": "assistant", "content": ""}
            self.messages.append(answer)
            for chunk in _events(r.iter_lines()):
                for choice in chunk.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content") or ""
                    answer["content"] += piece
                    if piece:
                        yield piece


def _events(lines: Iterator[str]) -> Iterator[dict]:
    for line in lines:
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            return
        chunk = json.loads(payload)
        if "error" in chunk:
            raise LmforgeError(f"the server stopped the answer: {chunk['error'].get('message')}")
        yield chunk
    raise LmforgeError("the server's stream ended before `data: [DONE]`; the answer is cut off")


def chat_repl(url: str, api_key: str | None, model: str | None, system: str | None,
              config: GenerationConfig) -> None:
    """The interactive loop of `lmforge chat`, answered by the server at `url`."""
    chat = ApiChat(url, api_key, model, system)
    print(f"Chatting with {chat.model} at {chat.base}. /reset clears the history, /exit "
          "quits; Ctrl-C stops an answer.", file=sys.stderr)
    chat_loop(lambda line: _print_answer(chat, line, config), chat.reset)


def _print_answer(chat: ApiChat, line: str, config: GenerationConfig) -> None:
    print_answer(chat.send(line, config), lambda: take_dropped(chat), "the server's context window",
                 (LmforgeError, httpx.HTTPError))
