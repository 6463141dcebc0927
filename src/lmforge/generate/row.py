"""One answer being generated: every decision that belongs to a single row, token by token.

A `RowDecoder` holds what differs from one answer to the next: the logits processors and
their state (penalties see the row's own history), the random generator of a sampled row,
the text stream with its stop strings, the finish rules and the log-probabilities asked for.
`lmforge generate`, the API's continuous-batching scheduler and the web UI all decode
through it, so an answer does not depend on which front end asked for it (nor, seeded, on
the batch it ran in). A caller may add processors of its own (a grammar, later).

    tok = row.choose(logits)             # processors → argmax or a draw
    step = row.accept(tok, room_left)    # text delta, finish reason, log-probabilities

Finish rules: a stop token or a stop string ("stop"); max_tokens new tokens, or a full
context window unless the row shifts it (`context_shift`) ("length"). Ids the tokenizer
cannot decode (an encoder-decoder's sentinels past a character vocabulary) are masked out
of the choice, so whatever is chosen decodes.

Log-probabilities are those of the model, log softmax(logits) before any processor (as
vLLM's default and `lmforge.score`), so the API's `logprobs` equal the scoring layer's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from lmforge.generate.config import GenerationConfig
from lmforge.generate.processors import (
    NEG_INF,
    DecodeState,
    Processor,
    build_processors,
    process,
    sample,
)
from lmforge.generate.text import TextStream
from lmforge.tokenizers.base import Tokenizer


@dataclass
class TokenLogprob:
    """log p(token) and the `top` most likely (token, log p) pairs at that position."""

    token: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Step:
    """What one token did to a row: its text delta, and why the row ended (None: it runs)."""

    token: int
    text: str
    finish_reason: str | None
    logprob: TokenLogprob | None = None


def token_logprob(logits: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """log softmax(logits)[token] and the `top` best alternatives, from fp32 logits (V,)."""
    return token_logprobs(logits[None], [token], top)[0]


def token_logprobs(logits: torch.Tensor, tokens: list[int], top: int) -> list[TokenLogprob]:
    """`token_logprob` of each row of logits (N, V) and its token, in one pass, computed as
    the scoring layer does (`lmforge.score.distribution_scores`)."""
    from lmforge.score import distribution_scores  # score builds on the generation core

    if not tokens:
        return []
    target = torch.tensor(tokens, device=logits.device)
    lp, _, ids, values = distribution_scores(logits, target, top)
    return [TokenLogprob(t, v, list(zip(i, x, strict=True))) for t, v, i, x in zip(
        tokens, lp.tolist(), ids.tolist(), values.tolist(), strict=True)]


def mask_from(first: int) -> Processor:
    """Forbid every id from `first` on (ids the tokenizer cannot turn into text)."""
    def apply(logits: torch.Tensor, state: DecodeState) -> torch.Tensor:
        logits[..., first:] = NEG_INF
        return logits
    return apply


class RowDecoder:
    def __init__(self, prompt: list[int], config: GenerationConfig, stop_ids: Sequence[int],
                 vocab_size: int, *, tokenizer: Tokenizer | None = None,
                 seed: int | None = None, processors: Sequence[Processor] = (),
                 logprobs: int | None = None) -> None:
        """`tokenizer`: None for id-only generation (no text, nothing masked); `seed`: of a
        sampled row (a random one when None); `logprobs`: None for none, k ≥ 0 for the
        chosen token's log-probability and the k best alternatives."""
        self.config = config
        self.stop_ids = set(stop_ids)
        self.chain = build_processors(config, vocab_size, list(stop_ids)) + list(processors)
        if tokenizer is not None and tokenizer.vocab_size < vocab_size:
            self.chain.append(mask_from(tokenizer.vocab_size))
        self.state = DecodeState.start([prompt], vocab_size) if self.chain else None
        self.text = TextStream(tokenizer, config.stop) if tokenizer is not None else None
        self.generator = None
        if not config.greedy:
            seed = seed if seed is not None else int(torch.randint(0, 2**62, ()))
            self.generator = torch.Generator().manual_seed(seed)
        self.logprobs = logprobs
        self.n_generated = 0
        self.last = -1  # the token the next decode step feeds
        # with context_shift: the tokens of the row's sequence, the last one not yet fed
        self.context = list(prompt) if config.context_shift else None
        self.n_keep = min(config.n_keep, len(prompt))
        self.finish_reason: str | None = None

    def choose(self, logits: torch.Tensor, argmax: int | None = None) -> int:
        """The next token from this row's fp32 logits (V,); `argmax`: the batch's greedy
        choice for this row, used when no processor changes the logits."""
        if self.state is not None:
            logits = process(logits[None].clone(), self.chain, self.state)[0]
        elif argmax is not None and self.generator is None:
            return argmax
        return sample(logits[None], None if self.generator is None else [self.generator])[0]

    def accept(self, token: int, room_left: bool, logits: torch.Tensor | None = None
               ) -> Step:
        """Record `token`; `room_left`: the context window has room for another token;
        `logits`: this position's raw logits, read when log-probabilities are asked for."""
        if self.state is not None:
            self.state.append([token])
        self.n_generated += 1
        self.last = token
        if self.context is not None:
            self.context.append(token)
        is_stop = token in self.stop_ids
        text, stopped = "", False
        if self.text is not None:
            text, stopped = self.text.push(None if is_stop else token)
        reason = "stop" if is_stop or stopped else None
        if reason is None and (self.n_generated >= self.config.max_tokens or not room_left):
            reason = "length"
        if reason is not None and not stopped and self.text is not None:
            text += self.text.close()
        self.finish_reason = reason
        logprob = None
        if self.logprobs is not None and logits is not None:
            logprob = token_logprob(logits, token, self.logprobs)
        return Step(token, text, reason, logprob)

    def finish(self, reason: str) -> str:
        """End the row from outside (cancelled, failed); the text still held back."""
        self.finish_reason = self.finish_reason or reason
        return self.text.close() if self.text is not None else ""
