"""The one exception type raised at every boundary (loading, tokenizing, configs, requests).

Its message is written for a person: what was wrong and how to fix it. The CLI prints it
without a traceback unless `--debug` is given.
"""


class LmforgeError(Exception):
    """A problem with the user's input or environment; the message says how to fix it."""
