"""Context shift (llama.cpp's): a decoder row that fills the context window goes on writing.

When the row's cache is full, it keeps its first n_keep tokens (the start of the prompt: a
system prompt, an instruction), drops the oldest half of the rest and carries on:

    n_discard = ⌊(len − n_keep) / 2⌋
    kept      = tokens[:n_keep] + tokens[n_keep + n_discard:]

llama.cpp moves the kept keys down in place and re-rotates them by −n_discard positions
(RoPE only). Here the kept tokens after the first n_keep are prefilled again at their new
positions instead: no position-specific surgery on the cache, any position encoding, and
exactly the cache a fresh prefill of `kept` leaves, for one prefill of about half the
window per half window generated. The model then reads a text whose middle is missing, so
the answer goes on fluently but forgets what was dropped. `Batch.shift` (`generate/core.py`)
applies it to a row; `GenerationConfig.context_shift` turns it on.
"""

from __future__ import annotations

from lmforge.errors import LmforgeError


def shifted(tokens: list[int], n_keep: int) -> list[int]:
    """The tokens a context shift keeps (formula in the module docstring).

    >>> shifted(list(range(10)), 2)
    [0, 1, 6, 7, 8, 9]
    """
    n_discard = (len(tokens) - n_keep) // 2
    if n_discard < 1:
        raise LmforgeError(f"a context shift keeping n_keep={n_keep} of {len(tokens)} tokens "
                           "frees no room; lower n_keep to at most the window minus 2")
    return tokens[:n_keep] + tokens[n_keep + n_discard:]
