"""Greedy answers for the generation tasks (reading comprehension, arithmetic, GSM8K).

All prompts of a task's batch go to the generation core together (`Engine.generate`:
each prompt prefilled into its own cache slot, then one decode step for every running
row at a time), greedily (temperature 0), each row ending at the first of the task's stop
strings (not included in the answer), a stop token, or `max_tokens` new tokens. Prompts
are encoded without BOS and with special-token strings read as text, as the harness's
`generate_until` encodes contexts for a decoder (`add_special_tokens=False`). A prompt too
long for the model's window loses its oldest tokens, leaving room for `max_tokens`, as the
harness truncates on the left (an encoder-decoder's prompt is its source: the window).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lmforge.generate.config import GenerationConfig


def greedy_answers(lm: Any, prompts: Sequence[str], stop: Sequence[str], max_tokens: int
                   ) -> list[str]:
    """The greedy continuation of each prompt (`lm`: `lmforge.load`), cut before the first
    stop string, in order."""
    window = lm.model.config.max_seq_len
    keep = window if lm.model.config.family == "encoder_decoder" else window - max_tokens
    ids = [lm.tokenizer.encode_spans([(p, False)]) for p in prompts]
    ids = [p[len(p) - keep:] if 0 < keep < len(p) else p for p in ids]
    config = GenerationConfig(max_tokens=max_tokens, temperature=0.0, stop=list(stop))
    return [c.text for c in lm.engine.generate(ids, config)]
