"""The "Ask your documents" tab of `lmforge web --model M --rag-db DB [--collection C]`.

The tab is a thin view over `lmforge.rag.answer`, the same steps as `lmforge ask` and
`POST /v1/rag/ask`: `RagService.passages` (retrieval and the relevance gate), `build_prompt`
(numbered passages within the window minus the answer's tokens), `stream_answer`. With no
passage over the threshold it shows `DONT_KNOW` without running the model. The answer streams
into the page; the passages it was given are listed below it (source, position, relevance,
text), the cited ones marked. Retrieval and generation hold the chat backend's lock, so the
chat and this tab never run the model at the same time.
"""

from __future__ import annotations

from collections.abc import Iterator

import gradio as gr

from lmforge.errors import LmforgeError
from lmforge.rag.answer import (
    DONT_KNOW,
    MIN_RELEVANCE,
    Passage,
    build_prompt,
    cited,
    stream_answer,
)
from lmforge.rag.serve import RagService
from lmforge.serve.web import LOCK_WAIT_S, LocalBackend

CONTEXT_TOKENS = 1024  # the passages' budget, as `lmforge ask --context-tokens`


class RagTab:
    """One collection of one database, answered by the chat's in-process model."""

    def __init__(self, backend: LocalBackend, db: str, collection: str = "documents",
                 k: int = 5, min_relevance: float = MIN_RELEVANCE) -> None:
        self.backend, self.k, self.min_relevance = backend, k, min_relevance
        self.service = RagService(db, collection)
        self.title = f"collection `{collection}` of `{db}`"

    def ask(self, question: str, max_tokens: int) -> Iterator[tuple[str, str]]:
        """(answer, passages) snapshots: the passages first, then the answer as it streams."""
        if not question.strip():
            yield "Type a question first.", ""
            return
        lm = self.backend.lm
        if not self.backend.lock.acquire(timeout=LOCK_WAIT_S):
            raise LmforgeError("the model is busy with another answer; try again in a moment")
        try:
            found = self.service.passages(question, self.k, "hybrid", "", self.min_relevance)
            if not found:
                yield DONT_KNOW, ""
                return
            budget = min(CONTEXT_TOKENS, lm.config.max_seq_len - max_tokens)
            ids, kept = build_prompt(lm.tokenizer, question, found, budget)
            answer = ""
            yield "*Generating…*", passages_markdown(kept, [])
            for piece in stream_answer(lm, ids, max_tokens):
                answer += piece
                yield answer, gr.skip()
        finally:
            self.backend.lock.release()
        yield answer, passages_markdown(kept, cited(answer, len(kept)))


def passages_markdown(passages: list[Passage], numbers: list[int]) -> str:
    """One block per passage: [n], cited or not, source #position, relevance, the text."""
    blocks = []
    for p in passages:
        mark = " · **cited**" if p.number in numbers else ""
        text = " ".join(p.hit.text.split())
        blocks.append(f"**[{p.number}]** `{p.hit.source}` #{p.hit.position} · relevance "
                      f"{p.relevance:.2f}{mark}\n\n> {text}")
    return "\n\n".join(blocks)


def rag_tab(rag: RagTab, max_tokens: int) -> None:
    """The tab's widgets and event, inside the caller's `gr.Blocks`."""
    with gr.Tab("Ask your documents", id="rag-tab", elem_id="rag-tab"):
        gr.Markdown(f"Answers from the passages of {rag.title}, cited as [n].")
        with gr.Row():
            box = gr.Textbox(placeholder="Question (Enter asks)", show_label=False, scale=6,
                             elem_id="rag-question")
            button = gr.Button("Ask", variant="primary", scale=1, elem_id="rag-ask")
        answer = gr.Markdown("", elem_id="rag-answer")
        gr.Markdown("#### Passages")
        passages = gr.Markdown("", elem_id="rag-passages")

        def ask(question: str) -> Iterator[tuple]:
            try:
                yield from rag.ask(question, max_tokens)
            except LmforgeError as exc:
                yield f"**Error:** {exc}", ""

        for trigger in (box.submit, button.click):
            trigger(ask, [box], [answer, passages], concurrency_limit=1)
