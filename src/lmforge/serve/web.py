"""A Gradio chat in the browser, over the in-process engine or a running `lmforge serve`.

    lmforge web --model smollm2                          # the engine in this process
    lmforge web --api http://127.0.0.1:8000 --api-key K  # an OpenAI-compatible server

Design choices:
- A backend turns (messages, system prompt, settings) into a stream of `Answer` snapshots.
  `LocalBackend` runs a `ChatSession` on the engine under a lock, so one model never runs
  two generations at once (the engine's timing and the CPU are not shared usefully);
  Gradio's queue also lets one event at a time into it. `ApiBackend` streams POST
  /v1/chat/completions as server-sent events through `lmforge chat --api`'s client
  (httpx), which sends the extensions `top_k` and `repetition_penalty` beside the OpenAI
  fields.
- Gradio's chatbot hands over the whole history on every turn; the oldest turns that no
  longer fit the context window are left out (`ChatSession.prompt_ids` in process; in API
  mode one turn per retry after the server's context-length error) and the UI says so.
- Every failure becomes a message in the UI: the failed turn is taken back and the text
  returned to the message box.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import gradio as gr
import httpx

from lmforge.api import LoadedModel
from lmforge.errors import LmforgeError
from lmforge.generate.chat import ChatSession
from lmforge.generate.config import GenerationConfig

if TYPE_CHECKING:
    from lmforge.serve.web_rag import RagTab

log = logging.getLogger(__name__)
LOCK_WAIT_S = 120.0  # Gradio queues events; this only guards against a caller outside it


@dataclass
class Answer:
    """The answer so far; the figures are set when it is complete."""

    text: str = ""
    tokens: int = 0
    tokens_per_s: float = 0.0
    first_token_s: float = 0.0
    dropped: int = 0  # oldest turns left out to fit the context window
    stopped: bool = False  # ended by the Stop button


class Backend(Protocol):
    title: str  # the model's name and size, shown above the chat
    max_tokens: int  # the slider's top
    concurrency: int | None  # Gradio events run at once (None: no limit)

    def stream(self, messages: list[dict], system: str | None, config: GenerationConfig
               ) -> Iterator[Answer]:
        """Yield the same `Answer`, updated, as the reply to `messages[-1]` arrives."""
        ...

    def stop(self) -> None:
        """End the answer being streamed at its next token (the Stop button)."""
        ...


class LocalBackend:
    """The engine in this process, one generation at a time."""

    concurrency = 1

    def __init__(self, lm: LoadedModel, dtype: str) -> None:
        self.lm, self.engine = lm, lm.engine
        self.max_tokens = lm.config.max_seq_len
        params = sum(p.numel() for p in lm.model.parameters())
        self.title = (f"{lm.name} · {params / 1e6:.0f}M parameters · {dtype} · context "
                      f"{lm.config.max_seq_len:,} tokens · in process ({lm.source})")
        self.lock = threading.Lock()  # held while the model runs (the chat or the RAG tab)
        self._current = threading.Event()  # the stop flag of the answer being generated

    def stop(self) -> None:
        self._current.set()

    def stream(self, messages: list[dict], system: str | None, config: GenerationConfig
               ) -> Iterator[Answer]:
        """The engine runs in a worker thread that holds the model's lock: a page that stops
        reading (Stop, a closed tab) sets the answer's stop flag, and the worker frees the
        model at the next token, even if Gradio never resumes or closes this generator."""
        if not self.lock.acquire(timeout=LOCK_WAIT_S):
            raise LmforgeError("the model is busy with another answer; try again in a moment")
        stop = self._current = threading.Event()
        updates: queue.Queue = queue.Queue()
        threading.Thread(target=self._generate, args=(messages, system, config, stop, updates),
                         daemon=True).start()
        try:
            while (item := updates.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            stop.set()

    def _generate(self, messages: list[dict], system: str | None, config: GenerationConfig,
                  stop: threading.Event, updates: queue.Queue) -> None:
        try:
            session = ChatSession(self.engine, system or None)
            session.messages = [dict(m) for m in messages[:-1]]
            answer = Answer()
            deltas = session.send(messages[-1]["content"], config)
            for delta in deltas:
                if stop.is_set():
                    answer.stopped = True
                    break
                answer.dropped = session.dropped
                answer.text += delta.text
                updates.put(answer)
            deltas.close()
            t = self.engine.timing
            answer.tokens = t.generated_tokens
            answer.tokens_per_s = t.generated_tokens / t.decode_s if t.decode_s else 0.0
            answer.first_token_s = t.prefill_s
            updates.put(answer)
        except Exception as exc:  # shown in the page by the caller, never lost
            updates.put(exc)
        finally:
            self.lock.release()
            updates.put(None)


class ApiBackend:
    """A running OpenAI-compatible server (`lmforge serve`), through the `lmforge chat --api`
    client: the same request body, server-sent events and context-length retries."""

    concurrency = None  # the server batches requests itself

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None) -> None:
        from lmforge.serve.client import ApiChat

        probe = ApiChat(url, api_key, model)  # reaches the server; picks its first chat model
        self.base, self.model, self.api_key = probe.base, probe.model, api_key
        info = next((m for m in self._models(probe) if m.get("id") == self.model), None)
        if info is None:
            raise LmforgeError(f"the server at {self.base} has no model {self.model!r}; "
                               "check --model-name")
        self.max_tokens = int(info.get("context_window") or 4096)
        probe.http.close()
        self.title = f"{self.model} · context {self.max_tokens:,} tokens · via {self.base}"

    def stop(self) -> None:
        """Nothing to do: several users share this backend, and Gradio's cancel closes the
        stopped user's generator, whose closed HTTP stream ends the answer on the server."""

    def _models(self, probe) -> list[dict]:
        r = probe.http.get(self.base + "/models")
        if r.status_code != 200:
            raise LmforgeError(f"{self.base}/models answered {r.status_code}; check --api-key")
        return r.json().get("data") or []

    def stream(self, messages: list[dict], system: str | None, config: GenerationConfig
               ) -> Iterator[Answer]:
        from lmforge.serve.client import ApiChat

        chat = ApiChat(self.base, self.api_key, self.model, system)
        chat.messages = [dict(m) for m in messages[:-1]]
        answer, pieces, first = Answer(), 0, None
        t0 = time.perf_counter()
        try:
            for piece in chat.send(messages[-1]["content"], config):
                first = first or time.perf_counter()
                pieces += 1  # the server streams one piece per token that completes text
                answer.text += piece
                answer.dropped = chat.dropped
                yield answer
        finally:
            chat.http.close()
        set_figures(answer, pieces, t0, first)
        yield answer


def set_figures(answer: Answer, tokens: int, t0: float, first: float | None) -> None:
    """Time to the first token, and tokens/s over the tokens that came after it."""
    end = time.perf_counter()
    answer.tokens = tokens
    answer.first_token_s = (first or end) - t0
    answer.tokens_per_s = (tokens - 1) / (end - first) if first and tokens > 1 else 0.0


@dataclass
class Defaults:
    """The settings the page opens with (the CLI's flags)."""

    system: str = ""
    temperature: float = 0.2
    top_p: float = 0.9
    top_k: int = 0
    repetition_penalty: float = 1.0
    max_tokens: int = 512


def plain(history: list[dict]) -> list[dict]:
    """Chatbot messages (content: a string or a list of text parts) as role/content strings."""
    out = []
    for m in history:
        content = m["content"]
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        out.append({"role": m["role"], "content": str(content)})
    return out


def figures(answer: Answer, turn: int) -> str:
    text = (f"Turn {turn}: **{answer.tokens} tokens** · **{answer.tokens_per_s:.1f} tokens/s**"
            f" · first token after {answer.first_token_s:.2f} s")
    return notice(answer) + text


def notice(answer: Answer) -> str:
    # Stop and the answer's last update race to the page: both must say "Stopped"
    stopped = "*Stopped.*  \n" if answer.stopped else ""
    if not answer.dropped:
        return stopped
    return stopped + (f"*The {answer.dropped} oldest turn(s) no longer fit the context window "
                      "and were left out of what the model sees.*  \n")


def responder(backend: Backend):
    """The Gradio event: stream the answer into the chat, then show its figures."""

    def respond(message: str, history: list[dict], system: str, temperature: float,
                top_p: float, top_k: float, repetition_penalty: float, max_tokens: float
                ) -> Iterator[tuple]:  # (chat, stats, box); gr.skip() leaves one as is
        past = plain(history or [])
        if not message.strip():
            yield past, "Type a message first.", message
            return
        asked = past + [{"role": "user", "content": message}]
        shown = asked + [{"role": "assistant", "content": ""}]
        yield shown, "*Generating…*", ""  # the message shows at once, before the prefill
        try:
            config = GenerationConfig(
                max_tokens=int(max_tokens), temperature=float(temperature), top_p=float(top_p),
                top_k=int(top_k), repetition_penalty=float(repetition_penalty))
            answer = Answer()
            for i, answer in enumerate(backend.stream(asked, system.strip() or None, config)):
                shown[-1]["content"] = answer.text
                # stats and box change only here and at the end: a late update after Stop
                # must not wipe "Stopped", and the user may already type the next message
                yield shown, notice(answer) if i == 0 else gr.skip(), gr.skip()
        except (LmforgeError, httpx.HTTPError) as exc:
            yield past, f"**Error:** {exc}", message
            return
        except Exception as exc:  # the page must survive anything; the log keeps the trace
            log.exception("web chat request failed")
            yield past, f"**Internal error** ({type(exc).__name__}: {exc}); see the log.", message
            return
        turn = sum(m["role"] == "user" for m in asked)
        yield shown, figures(answer, turn), gr.skip()

    return respond


def build_ui(backend: Backend, defaults: Defaults, rag: RagTab | None = None) -> gr.Blocks:
    """The page: model header, chat, message box with Send/Stop/Clear, settings, figures;
    with `rag`, the chat in a first tab and the documents tab beside it."""
    with gr.Blocks(title="lmforge chat", analytics_enabled=False) as demo:
        gr.Markdown(f"### lmforge chat\n{backend.title}", elem_id="model-info")
        with gr.Tab("Chat", elem_id="chat-tab") if rag else nullcontext(), gr.Row():
            with gr.Column(scale=3):
                chat = gr.Chatbot(elem_id="chat", height=420, show_label=False)
                with gr.Row():
                    box = gr.Textbox(placeholder="Message (Enter sends)", show_label=False,
                                     scale=6, elem_id="message", autofocus=True)
                    send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
                    stop = gr.Button("Stop", variant="stop", scale=1, elem_id="stop")
                    clear = gr.Button("Clear", scale=1, elem_id="clear")
                stats = gr.Markdown("", elem_id="stats")
            with gr.Column(scale=1):
                settings = settings_panel(defaults, backend.max_tokens)
        inputs = [box, chat, *settings]
        outputs = [chat, stats, box]
        respond = responder(backend)
        events = [trigger(respond, inputs, outputs, concurrency_limit=backend.concurrency)
                  for trigger in (box.submit, send.click)]
        def stopped() -> str:
            backend.stop()
            return "*Stopped.*"

        stop.click(stopped, None, stats, cancels=events, queue=False)
        clear.click(lambda: ([], ""), None, [chat, stats], queue=False)
        if rag:
            from lmforge.serve.web_rag import rag_tab

            rag_tab(rag, defaults.max_tokens)
    return demo


def settings_panel(d: Defaults, top_tokens: int) -> list:
    system = gr.Textbox(label="System prompt", value=d.system, lines=3, elem_id="system")
    return [
        system,
        gr.Slider(0.0, 2.0, value=d.temperature, step=0.05, label="Temperature (0: greedy)"),
        gr.Slider(0.05, 1.0, value=d.top_p, step=0.05, label="Top-p"),
        gr.Slider(0, 200, value=d.top_k, step=1, label="Top-k (0: off)"),
        gr.Slider(0.5, 2.0, value=d.repetition_penalty, step=0.05, label="Repetition penalty"),
        gr.Slider(1, max(top_tokens, d.max_tokens), value=d.max_tokens, step=1,
                  label="Max tokens", elem_id="max-tokens"),
    ]


def launch(backend: Backend, defaults: Defaults, host: str, port: int,
           rag: RagTab | None = None) -> None:
    """Serve the page until Ctrl-C."""
    demo = build_ui(backend, defaults, rag)
    demo.queue(default_concurrency_limit=backend.concurrency)
    try:
        demo.launch(server_name=host, server_port=port, ssr_mode=False, quiet=True,
                    show_error=True, prevent_thread_lock=True)
    except OSError:
        raise LmforgeError(f"cannot listen on {host}:{port}: the port is in use or not "
                           "allowed; pick another --port") from None
    print(f"lmforge web: http://{host}:{port} ({backend.title})", flush=True)
    demo.block_thread()
