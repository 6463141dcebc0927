"""The agent in a terminal: each turn streamed as it is generated, then the calls'
observations; colours when stdout is a terminal, labelled plain lines otherwise."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lmforge.agent.loop import AgentResult, Event, agent
from lmforge.agent.tools import Tool

COLOURS = {"thought": "2", "call": "36", "observation": "33", "error": "31", "answer": "1"}


def label(kind: str, text: str, tty: bool) -> str:
    if tty:
        return f"\x1b[{COLOURS[kind]}m{text}\x1b[0m"
    return f"[{kind}] {text}"


def print_event(e: Event, tty: bool) -> None:
    if e.kind in ("call", "observation", "error"):
        took = f" ({e.seconds:.2f} s)" if e.kind == "observation" else ""
        print(label(e.kind, e.text + took, tty), flush=True)


def run_streamed(brain, question: str, tools: Sequence[Tool], max_steps: int,
                 history: Sequence[dict] = (), tty: bool | None = None) -> AgentResult:
    """One question: the model's turns streamed token by token, then each call's result."""
    tty = sys.stdout.isatty() if tty is None else tty
    run = agent(question, tools, max_steps, history, on_event=lambda e: print_event(e, tty))
    conversation = next(run)
    while True:
        print("\x1b[2m" if tty else "[model] ", end="")
        text = ""
        for delta in brain.stream(conversation):
            text += delta
            print(delta, end="", flush=True)
        print("\x1b[0m" if tty else "", flush=True)
        try:
            conversation = run.send(text)
        except StopIteration as stop:
            result = stop.value
            break
    if result.finish_reason == "max_steps":
        print(label("error", f"stopped after {max_steps} steps without an answer", tty))
    return result
