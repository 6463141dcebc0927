"""The one context-window rule of every front end (CLI `generate` and `chat`, the API, the
engine): a prompt and its answer must fit the model's window.

A decoder (or prefix decoder) holds the prompt and the answer in one sequence:

    prompt_len + max_tokens ≤ window

An encoder-decoder reads the prompt as the encoder's source; its decoder holds one start
token and the answer:

    1 + max_tokens ≤ window

When max_tokens was given explicitly and does not fit, that is an error (as OpenAI's API
answers `context_length_exceeded`), never a silent cut. When it was not given,
`config.max_tokens` is a default, lowered to the room the window leaves. Either way the
room must hold at least max(1, min_tokens) tokens.

With `context_shift` (decoders; `generate/shift.py`) the answer goes on past the window, so
max_tokens is not bounded by it: the prompt must leave room for one token, and the n_keep
tokens a shift keeps must leave two to drop (n_keep ≤ window − 2).
"""

from __future__ import annotations

import dataclasses

from lmforge.errors import LmforgeError
from lmforge.generate.config import GenerationConfig


def fit_context(prompt_len: int, config: GenerationConfig, max_tokens_given: bool,
                window: int, encoder_decoder: bool = False, what: str = "prompt"
                ) -> GenerationConfig:
    """The config to generate with after a prompt of `prompt_len` tokens in a window of
    `window` tokens (the rule of the module docstring). Raises LmforgeError naming the
    window, the prompt's length and max_tokens, and how to fix it, when they do not fit.
    `what` names the prompt in that message ("prompt", "messages")."""
    if config.context_shift:
        return _fit_shifting(prompt_len, config, window, encoder_decoder, what)
    used = 1 if encoder_decoder else prompt_len  # the decoder's start token, or the prompt
    room = window - used
    least = max(1, config.min_tokens)
    mt = config.max_tokens
    if (max_tokens_given and mt > room) or room < least:
        raise LmforgeError(_overflow(prompt_len, config, max_tokens_given, window,
                                     encoder_decoder, what))
    if max_tokens_given or mt <= room:
        return config
    return dataclasses.replace(config, max_tokens=room)


def _fit_shifting(prompt_len: int, config: GenerationConfig, window: int,
                  encoder_decoder: bool, what: str) -> GenerationConfig:
    """The config of a row that shifts its context (the rule of the module docstring)."""
    if encoder_decoder:
        raise LmforgeError("context_shift needs a decoder; an encoder-decoder's answer is "
                           "bounded by its decoder window")
    if prompt_len >= window:
        raise LmforgeError(f"this model's context window is {window} tokens, but the {what} "
                           f"has {prompt_len} tokens; shorten it to at most {window - 1}")
    if min(config.n_keep, prompt_len) > window - 2:
        raise LmforgeError(f"n_keep={config.n_keep} keeps too much of the {what} for a "
                           f"context shift to free room; lower it to at most {window - 2}")
    return config


def _overflow(prompt_len: int, config: GenerationConfig, max_tokens_given: bool, window: int,
              encoder_decoder: bool, what: str) -> str:
    """The message of a prompt and answer that do not fit: what fills the window, then how
    to make it fit."""
    used = 1 if encoder_decoder else prompt_len
    room, least, mt = window - used, max(1, config.min_tokens), config.max_tokens
    if encoder_decoder:
        head = (f"this model's decoder window is {window} tokens and holds 1 start token (the "
                f"{what}, {prompt_len} tokens, is the encoder's source)")
    else:
        head = f"this model's context window is {window} tokens, but the {what} has " \
               f"{prompt_len} tokens"
    if max_tokens_given and mt > room:
        fix = f"lower max_tokens to at most {room}" if room >= 1 else ""
        if not encoder_decoder:
            fix += f"{' or ' if fix else ''}shorten the {what}"
        return f"{head} and max_tokens asks for {mt} ({used + mt} in all); {fix}"
    if config.min_tokens > 1:
        return (f"{head}, leaving room for {max(room, 0)} new tokens, fewer than min_tokens="
                f"{config.min_tokens}; lower min_tokens" + (
                    "" if encoder_decoder else f" or shorten the {what}"))
    return f"{head}, leaving no room for an answer; shorten the {what} to at most " \
           f"{window - least} tokens"
