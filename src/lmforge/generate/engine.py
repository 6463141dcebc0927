"""Generation in layers (after gpt-fast and mlx-lm):

    prefill / decode_step  → one forward pass over the KV cache, logits out (core.py)
    Batch + RowDecoder     → rows decoding together, each deciding its own tokens
    decode_rows            → a generator of steps (token, text, finish, log-probabilities)
    generate_ids           → the same as token ids only
    Engine.stream/generate → what the CLI, the Python API and the web UI call

Randomness comes only from explicit per-row `torch.Generator`s, so a seeded row gives the
same tokens alone or in a batch (up to the floating-point rounding of batched kernels).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from lmforge.generate.config import GenerationConfig
from lmforge.generate.core import (
    Batch,
    Timing,
    cache_for,
    decode_step,
    prefill,
    prompt_ids,
)
from lmforge.generate.processors import Processor
from lmforge.generate.row import RowDecoder, Step
from lmforge.model.prefix import PrefixKV, attached_prefix
from lmforge.model.transformer import Transformer
from lmforge.tokenizers.base import Tokenizer

__all__ = ["Engine", "Rows", "Timing", "cache_for", "decode_rows", "decode_step",
           "generate_ids", "prefill"]


@dataclass
class Rows:
    """The rows of one `generate_ids` run: why each ended (None while it runs) and timing."""

    finish_reason: list[str | None]
    timing: Timing = field(default_factory=Timing)


def seeds_for(config: GenerationConfig, n_rows: int) -> list[int | None]:
    """Row r samples with seed + r (a random base when unseeded); None for greedy rows."""
    if config.greedy:
        return [None] * n_rows
    base = config.seed if config.seed is not None else int(torch.randint(0, 2**62, ()).item())
    return [base + i for i in range(n_rows)]


@torch.inference_mode()
def decode_rows(model: Transformer, prompts: list[list[int]], config: GenerationConfig,
                stop_ids: Sequence[int], rows: Rows, *, tokenizer: Tokenizer | None = None,
                processors: Sequence[Processor] = (), logprobs: int | None = None,
                prefix: PrefixKV | None = None) -> Iterator[list[tuple[int, Step]]]:
    """Yield, at each step, (row, Step) for every row still running. Row r is answer
    r % n of prompt r // n; all n answers of a prompt share its prefill (copied slots).
    `prefix`: P-Tuning v2 keys and values every row reads before its prompt."""
    n = config.n
    prefix = prefix if prefix is not None else attached_prefix(model)  # an adapter's
    t0 = time.perf_counter()
    pairs = [prompt_ids(model, p) for p in prompts]
    sources = [s for _, s in pairs if s is not None]
    extra = 0 if prefix is None else prefix.n_prefix
    cache = cache_for(model, len(prompts) * n, extra + max(len(d) for d, _ in pairs),
                      config.max_tokens, max(map(len, sources)) if sources else None)
    batch = Batch(model, cache)
    vocab = model.config.vocab_size
    seeds = seeds_for(config, len(prompts) * n)
    first: list[tuple[int, Step]] = []
    for p, prompt in enumerate(prompts):
        slot = cache.allocate()
        logits = batch.prefill(slot, prompt, prefix=prefix)
        rows.timing.prompt_tokens += len(prompt)
        copies = [slot] + [cache.allocate() for _ in range(n - 1)]
        for s in copies[1:]:
            cache.copy(slot, s)
        for j, s in enumerate(copies):
            decoder = RowDecoder(prompt, config, stop_ids, vocab, tokenizer=tokenizer,
                                 seed=seeds[p * n + j], processors=processors,
                                 logprobs=logprobs)
            first.append((s, batch.join(s, decoder, logits)))
    rows.timing.prefill_s += time.perf_counter() - t0
    step = first  # slots are allocated in row order, so slot r is row r
    while step:
        t0 = time.perf_counter()
        rows.timing.generated_tokens += len(step)
        for r, s in step:
            rows.finish_reason[r] = s.finish_reason
        yield step
        step = [(row.slot, s) for row, s in batch.step()] if batch.rows else []
        rows.timing.decode_s += time.perf_counter() - t0


def generate_ids(model: Transformer, prompts: list[list[int]], config: GenerationConfig,
                 stop_ids: Sequence[int], rows: Rows) -> Iterator[list[tuple[int, int]]]:
    """Yield, at each step, (row, token) for every row still running. Rows end on a stop
    token, at max_tokens, or when the context is full."""
    for step in decode_rows(model, prompts, config, stop_ids, rows):
        yield [(r, s.token) for r, s in step]


@dataclass
class Delta:
    """New text of answer `index`; `finish_reason` is set on its last delta."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str


class Engine:
    """Generation over token ids and text for one model and its tokenizer."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.timing = Timing()

    def stream(self, prompts: list[list[int]], config: GenerationConfig,
               processors: Sequence[Processor] = (), prefix: PrefixKV | None = None
               ) -> Iterator[Delta]:
        """Text deltas of every answer as tokens arrive (n answers per prompt);
        `processors`: extra logits processors applied to every row; `prefix`: P-Tuning v2
        keys and values read before every prompt."""
        if config.num_beams > 1:
            yield from self._beam_deltas(prompts, config)
            return
        rows = Rows([None] * (len(prompts) * config.n))
        self.timing = rows.timing
        for step in decode_rows(self.model, prompts, config, self.tokenizer.stop_token_ids,
                                rows, tokenizer=self.tokenizer, processors=processors,
                                prefix=prefix):
            for row, s in step:
                yield Delta(row, s.text, [s.token], s.finish_reason)

    def generate(self, prompts: list[list[int]], config: GenerationConfig) -> list[Completion]:
        """Whole answers (n per prompt, in order)."""
        n_rows = len(prompts) * config.n
        texts, ids, reasons = [""] * n_rows, [[] for _ in range(n_rows)], [""] * n_rows
        for d in self.stream(prompts, config):
            texts[d.index] += d.text
            ids[d.index].extend(d.token_ids)
            if d.finish_reason:
                reasons[d.index] = d.finish_reason
        return [Completion(t, i, r) for t, i, r in zip(texts, ids, reasons, strict=True)]

    def _beam_deltas(self, prompts: list[list[int]], config: GenerationConfig
                     ) -> Iterator[Delta]:
        from lmforge.generate.beam import beam_answers

        self.timing = Timing()
        for p_index, prompt in enumerate(prompts):
            for j, (text, hyp, reason) in enumerate(beam_answers(
                    self.model, self.tokenizer, prompt, config, self.timing)):
                yield Delta(p_index * config.n + j, text, hyp.tokens, reason)
