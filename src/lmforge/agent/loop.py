"""The ReAct loop (Yao et al., 2023): the model thinks, calls tools, reads the observations,
and answers once it needs no more calls.

    brain = LLMBrain(lm, GenerationConfig(max_tokens=256))
    results = run_agents(brain, ["What is 1234 * 5678?"], builtin_tools(["calculator"]))
    results[0].answer, results[0].events

Design choices:
- An agent run is a generator (`agent`): it yields the `Conversation` it needs the model to
  continue (the messages and the tools' specs) and receives the generated turn through `send`.
  `LLMBrain` turns it into ids with `calls.prompt_ids`: the chat template's own tool format when
  it has one, else the documented one. Whoever drives it decides how text is made, so
  `run_agents` advances many agents with one batched completion per round, and the console
  streams one agent's tokens.
- A turn with `<tool_call>` blocks is a step: each call is validated against its tool's
  schema and run; every observation (or "error: …" for a malformed block, an unknown tool,
  bad arguments or a tool that raised) becomes a `tool` message, in call order. Nothing a
  model writes can raise out of the loop. A turn without a call is the answer; `max_steps`
  turns with calls end the run unanswered.
- The trace is a list of `Event`s (thought, call, observation, error, answer) with the time
  since the run began and, for tool results, the tool's own duration.
- Short-term memory is the conversation: `LLMBrain` drops the oldest turns that do not fit
  the context window beside the answer budget, keeping the system message and the question
  (the chat command's rule, `generate/chat.py`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from lmforge.agent.calls import ToolCall, parse_calls, prompt_ids
from lmforge.agent.tools import Tool
from lmforge.errors import LmforgeError
from lmforge.generate.config import GenerationConfig

MAX_STEPS = 8


@dataclass
class Event:
    """One line of the trace: `kind` is thought, call, observation, error or answer."""

    kind: str
    text: str
    t: float  # seconds since the run began
    call: ToolCall | None = None
    seconds: float = 0.0  # a tool's own running time


@dataclass
class AgentResult:
    """How a run ended: the answer (None if the step limit came first), the messages, the
    trace, and the steps (turns with calls) taken."""

    question: str
    answer: str | None = None
    messages: list[dict] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    steps: int = 0
    finish_reason: str = ""  # answer | max_steps


@dataclass
class Conversation:
    """What the agent asks a brain to continue: chat messages (the model's turns as it wrote
    them, `tool` messages with the observations) and the OpenAI specs of the tools."""

    messages: list[dict]
    tools: list[dict]


class Brain(Protocol):
    def complete(self, conversations: list[Conversation]) -> list[str]:
        """The next assistant turn of each conversation."""


class ScriptedBrain:
    """A fake model that answers every request with the next text of a fixed script."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = list(texts)
        self.seen: list[Conversation] = []

    def complete(self, conversations: list[Conversation]) -> list[str]:
        self.seen += conversations
        if len(self.texts) < len(conversations):
            raise LmforgeError("the scripted brain has run out of texts")
        out, self.texts = self.texts[:len(conversations)], self.texts[len(conversations):]
        return out

    def stream(self, conversation: Conversation) -> Iterator[str]:
        yield from self.complete([conversation])


class LLMBrain:
    """A language model as the brain: batched turns through `Engine.stream`, which stops
    each row at the tokenizer's stop ids (the chat template's end of turn). `first_turn`, if
    given, replaces `processors` on a question's first turn (a "required" tool-call processor
    makes a model that would answer unaided start with a call)."""

    def __init__(self, lm, config: GenerationConfig, processors: Sequence = (),
                 first_turn: Sequence | None = None) -> None:
        self.lm = lm
        self.config = config
        self.processors = list(processors)
        self.first_turn = None if first_turn is None else list(first_turn)

    def processors_for(self, conversation: Conversation) -> list:
        """The processors of this turn: `first_turn` right after the question."""
        opening = conversation.messages[-1]["role"] == "user"
        return self.first_turn if opening and self.first_turn is not None else self.processors

    def prompt(self, conversation: Conversation) -> list[int]:
        """The chat as ids. Until the answer budget fits the context window, the oldest turns
        are dropped: first those before the current question (the last user message), then
        the current question's oldest rounds of calls; the system message, the first question
        and the current one always stay."""
        tok, limit = self.lm.tokenizer, self.lm.config.max_seq_len
        messages = conversation.messages
        keep = 2 if messages[0]["role"] == "system" else 1
        last = max([i for i, m in enumerate(messages) if m["role"] == "user"] + [keep - 1])
        head, older = messages[:keep], messages[keep:max(keep, last)]
        question, rounds = messages[max(keep, last):last + 1], messages[last + 1:]
        while True:
            ids = prompt_ids(tok, head + older + question + rounds, conversation.tools)
            if len(ids) + self.config.max_tokens <= limit:
                return ids
            if not (older or rounds):
                raise LmforgeError(f"the question and the tool list take {len(ids)} tokens, too "
                                   f"many beside max_tokens {self.config.max_tokens} in the "
                                   f"context window of {limit}; ask a shorter question or "
                                   "use fewer tools")
            if older:
                older = _without_oldest_turn(older)
            else:
                rounds = _without_oldest_turn(rounds)

    def stream(self, conversation: Conversation) -> Iterator[str]:
        """The next turn of one conversation, as text deltas."""
        for d in self.lm.engine.stream([self.prompt(conversation)], self.config,
                                       self.processors_for(conversation)):
            yield d.text

    def complete(self, conversations: list[Conversation]) -> list[str]:
        """One batch per set of processors (first turns and later ones may differ)."""
        texts = [""] * len(conversations)
        groups: dict[int, list[int]] = {}
        for i, c in enumerate(conversations):
            groups.setdefault(id(self.processors_for(c)), []).append(i)
        for rows in groups.values():
            prompts = [self.prompt(conversations[i]) for i in rows]
            processors = self.processors_for(conversations[rows[0]])
            for d in self.lm.engine.stream(prompts, self.config, processors):
                texts[rows[d.index]] += d.text
        return texts


def _without_oldest_turn(messages: list[dict]) -> list[dict]:
    """`messages` less their first one and what follows it up to the next assistant turn
    (an assistant turn with the tool results after it)."""
    n = 1 + next((i for i, m in enumerate(messages[1:]) if m["role"] == "assistant"),
                 len(messages) - 1)
    return messages[n:]


def agent(question: str, tools: Sequence[Tool], max_steps: int = MAX_STEPS,
          history: Sequence[dict] = (), system: str = "",
          on_event: Callable[[Event], None] | None = None
          ) -> Generator[Conversation, str, AgentResult]:
    """One run: yields the conversation to continue, receives each generated turn, returns the
    result. `history`: earlier user/assistant/tool messages of the conversation; `on_event`
    sees each trace event as it happens (the console prints them)."""
    start = time.perf_counter()
    by_name = {t.name: t for t in tools}
    result = AgentResult(question, messages=[*history, {"role": "user", "content": question}])
    head = [{"role": "system", "content": system}] if system else []
    specs = [t.spec() for t in tools]

    def note(kind: str, text: str, call: ToolCall | None = None, seconds: float = 0.0) -> None:
        result.events.append(Event(kind, text, time.perf_counter() - start, call, seconds))
        if on_event is not None:
            on_event(result.events[-1])

    while True:
        text = yield Conversation(head + result.messages, specs)
        result.messages.append({"role": "assistant", "content": text})
        parsed = parse_calls(text)
        if not parsed.calls and not parsed.errors:
            note("answer", parsed.content)
            result.answer, result.finish_reason = parsed.content, "answer"
            return result
        result.steps += 1
        if parsed.content:
            note("thought", parsed.content)
        observations = [_error(e, note) for e in parsed.errors]
        observations += [run_call(c, by_name, note) for c in parsed.calls]
        result.messages += [{"role": "tool", "content": o} for o in observations]
        if result.steps >= max_steps:
            result.finish_reason = "max_steps"
            return result


def _error(message: str, note) -> str:
    note("error", message)
    return f"error: {message}"


def run_call(call: ToolCall, tools: dict[str, Tool], note) -> str:
    """The observation of one call; every failure is an "error: …" text."""
    note("call", f"{call.name}({', '.join(f'{k}={v!r}' for k, v in call.arguments.items())})",
         call)
    tool = tools.get(call.name)
    if tool is None:
        return _error(f"there is no tool {call.name!r}; the tools are "
                      f"{', '.join(tools) or 'none'}", note)
    began = time.perf_counter()
    try:
        observation = tool(**tool.validate(call.arguments))
    except LmforgeError as e:
        return _error(str(e), note)
    except Exception as e:  # a failing tool is an observation for the model, never a crash
        return _error(f"{call.name} failed: {type(e).__name__}: {e}", note)
    note("observation", observation, call, time.perf_counter() - began)
    return observation


def run_agents(brain: Brain, questions: Sequence[str], tools: Sequence[Tool],
               max_steps: int = MAX_STEPS, system: str = "") -> list[AgentResult]:
    """Every question's run, advanced together: one batched completion per round."""
    runs = [agent(q, tools, max_steps, system=system) for q in questions]
    results: list[AgentResult | None] = [None] * len(runs)
    pending = {i: next(r) for i, r in enumerate(runs)}
    while pending:
        order = list(pending)
        texts = brain.complete([pending[i] for i in order])
        for i, text in zip(order, texts, strict=True):
            try:
                pending[i] = runs[i].send(text)
            except StopIteration as stop:
                results[i] = stop.value
                del pending[i]
    return results
