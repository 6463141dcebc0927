"""The terminal side of `lmforge chat`, shared by the local and the `--api` chat: the
read loop with its commands, printing a streamed answer that Ctrl-C interrupts, and taking
the count of old turns a chat dropped to fit its context window."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Protocol


class DroppingChat(Protocol):
    """`ChatSession` (local) and `ApiChat` (a server): both count the oldest turns they
    dropped so that the history fits the context window."""

    dropped: int


def take_dropped(chat: DroppingChat) -> int:
    """The turns `chat` dropped since the last call, resetting the count so that each
    drop is reported once."""
    n, chat.dropped = chat.dropped, 0
    return n


def chat_loop(answer: Callable[[str], None], reset: Callable[[], None]) -> None:
    """Read lines until /exit, end of input or Ctrl-C at the prompt; /reset clears the
    history; every other non-blank line is answered."""
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return
        command = line.strip()
        if command == "/exit":
            return
        if command == "/reset":
            reset()
            print("(history cleared)", file=sys.stderr)
        elif command:
            answer(line)


def print_answer(stream: Iterator[str], dropped: Callable[[], int], where: str,
                 errors: tuple[type[Exception], ...]) -> None:
    """Print text pieces as they arrive, with a notice when `dropped()` reports old turns
    cut to fit `where`; Ctrl-C ends this answer only, and an error in `errors` is printed,
    not raised, so one failed turn does not end the chat."""
    try:
        for piece in stream:
            n = dropped()
            if n:
                print(f"(dropped the {n} oldest turn(s) to fit {where})", file=sys.stderr)
            print(piece, end="", flush=True)
    except KeyboardInterrupt:
        stream.close()
        print(" [interrupted]", end="")
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
    print()
