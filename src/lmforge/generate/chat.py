"""A multi-turn chat over the engine: history, system prompt, and trimming to the context.

Each turn re-encodes the whole history through the model's chat template (message content
with special-token parsing off). When the history plus the answer budget no longer fits the
context window, the oldest user/assistant turns are dropped (the system prompt stays), and
the caller is told how many were dropped so it can show a notice.

A model whose tokenizer has no chat template (a character-level run, say) has no way to tell
the turns apart: each message is then a prompt of its own for the model to continue (an
encoder-decoder's source), the history is kept for display only, and the one context
rule of every front end (`generate/context.py`) checks it.
"""

from __future__ import annotations

from collections.abc import Iterator

from lmforge.errors import LmforgeError
from lmforge.generate.config import GenerationConfig
from lmforge.generate.context import fit_context
from lmforge.generate.engine import Delta, Engine
from lmforge.tokenizers.chat import can_chat


class ChatSession:
    def __init__(self, engine: Engine, system: str | None = None) -> None:
        self.engine = engine
        self.system = system
        self.messages: list[dict] = []
        self.dropped = 0  # turns dropped by the last `prompt_ids` call

    def reset(self) -> None:
        self.messages = []

    def _all(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages

    def prompt_ids(self, budget: int) -> list[int]:
        """The chat so far as ids, dropping oldest turns until `budget` new tokens fit."""
        limit = self.engine.model.config.max_seq_len
        self.dropped = 0
        while True:
            ids = self.engine.tokenizer.apply_chat_template(self._all())
            if len(ids) + budget <= limit:
                return ids
            if len(self.messages) <= 1:
                raise LmforgeError(
                    f"the message needs {len(ids)} tokens and the answer {budget}, more than "
                    f"the context window of {limit}; send a shorter message or lower max_tokens")
            # drop the oldest turn: a user message and the assistant answer after it
            n = 2 if len(self.messages) > 2 and self.messages[1]["role"] == "assistant" else 1
            self.messages = self.messages[n:]
            self.dropped += 1

    @property
    def completions_only(self) -> bool:
        """True when the tokenizer cannot write a chat: each message is a plain prompt."""
        return not can_chat(self.engine.tokenizer)

    def send(self, text: str, config: GenerationConfig) -> Iterator[Delta]:
        """Stream the answer to `text`; the answer joins the history as it is generated,
        so an interrupted answer keeps what was said."""
        self.messages.append({"role": "user", "content": text})
        try:
            ids = self._completion_ids(text, config) if self.completions_only \
                else self.prompt_ids(config.max_tokens)
        except LmforgeError:
            self.messages.pop()  # a message that cannot be answered does not join the history
            raise
        answer = {"role": "assistant", "content": ""}
        self.messages.append(answer)
        for delta in self.engine.stream([ids], config):
            answer["content"] += delta.text
            yield delta

    def _completion_ids(self, text: str, config: GenerationConfig) -> list[int]:
        """The message alone as a prompt, checked against the context window."""
        ids = self.engine.tokenizer.encode(text, parse_special=True)
        if not ids:
            raise LmforgeError("the message is empty: type some text for the model to continue")
        model = self.engine.model.config
        fit_context(len(ids), config, True, model.max_seq_len,
                    model.family == "encoder_decoder", "message")
        return ids
