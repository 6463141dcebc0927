"""The one exception type raised at every boundary (loading, tokenizing, configs, requests).

Its message is written for a person: what was wrong and how to fix it. The CLI prints it
without a traceback unless `--debug` is given.
"""

import reprlib


class LmforgeError(Exception):
    """A problem with the user's input or environment; the message says how to fix it."""


def excerpt(value: object, limit: int = 80) -> str:
    """A repr of `value` of at most about `limit` characters, for quoting user input in a
    message: a 100,000-item list must not come back whole in a one-line error. `reprlib`
    abbreviates each level (so a huge value is never rendered whole); long containers and
    strings say how long they were.

    >>> excerpt(["stop"] * 100_000)
    "['stop', 'stop', 'stop', 'stop', 'stop', 'stop', ...] (100000 items)"
    """
    short = reprlib.Repr()
    short.maxstring = short.maxother = short.maxlong = limit
    short.maxlist = short.maxtuple = short.maxdict = short.maxset = 6
    text = short.repr(value)
    if len(text) > limit:
        text = text[:limit] + "…"
    if isinstance(value, str) and len(value) > limit:
        text += f" ({len(value)} characters)"
    elif isinstance(value, list | tuple | dict | set) and len(value) > short.maxlist:
        text += f" ({len(value)} items)"
    return text
