"""Generation in layers (after gpt-fast and mlx-lm):

    prefill / decode_step  → one forward pass over the KV cache, logits out
    generate_ids           → a generator of token ids for many rows (sampling or greedy)
    TextStream             → ids to text deltas, stop strings held back until decided
    Engine.stream/generate → what the CLI, the API and the web UI call

Randomness comes only from explicit per-row `torch.Generator`s, so a seeded row gives the
same tokens alone or in a batch (up to the floating-point rounding of batched kernels).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from lmforge.errors import LmforgeError
from lmforge.generate.cache import KVCache
from lmforge.generate.compiled import decode_forward
from lmforge.generate.config import GenerationConfig
from lmforge.generate.processors import DecodeState, build_processors, process, sample
from lmforge.generate.text import TextStream
from lmforge.model.cross_attention import CrossMemory
from lmforge.model.transformer import Transformer
from lmforge.tokenizers.base import Tokenizer

PREFILL_CHUNK = 1024


@torch.inference_mode()
def prefill(model: Transformer, cache: KVCache, slot: int, ids: list[int],
            memory: CrossMemory | None = None) -> torch.Tensor:
    """Run `ids` into `slot` from its current length; logits (vocab,) of the last position.

    A prefix decoder reads its whole prompt bidirectionally (the prompt is its prefix), so
    the prompt goes in as one pass; others go in chunks. `memory`: the slot's encoder output
    (encoder-decoder models)."""
    if not ids:
        raise LmforgeError("the prompt is empty: give at least one token")
    device = cache.k.device
    prefix = model.config.family == "prefix"
    chunk_len = len(ids) if prefix else PREFILL_CHUNK
    for start in range(0, len(ids), chunk_len):
        chunk = torch.tensor([ids[start: start + chunk_len]], device=device)
        width = chunk.shape[1]
        logits = model(chunk, cache=cache.step([slot], width=width, bidirectional=prefix),
                       keep=torch.tensor([[width - 1]], device=device), memory=memory)
    return logits[0, -1]


@torch.inference_mode()
def decode_step(model: Transformer, cache: KVCache, slots: list[int], tokens: list[int],
                memory: CrossMemory | None = None) -> torch.Tensor:
    """One new token for each slot; logits (B, vocab). `memory`: the rows' encoder output."""
    ids = torch.tensor(tokens, device=cache.k.device)[:, None]
    return decode_forward(model)(ids, cache=cache.step(slots), memory=memory)[:, -1]


@torch.inference_mode()
def source_memory(model: Transformer, sources: list[list[int]], repeat: int
                  ) -> CrossMemory | None:
    """Encoder-decoder generation reads the prompts as sources: encode them once (padded on
    the right) and give each of its `repeat` answers (samples, beams) that memory; the
    decoder then starts from `decoder_start_id`. None for every other family."""
    if model.config.family != "encoder_decoder":
        return None
    if any(not s for s in sources):
        raise LmforgeError("the prompt is empty: give at least one token")
    device = next(model.parameters()).device
    S = max(map(len, sources))
    ids = torch.tensor([s + [0] * (S - len(s)) for s in sources for _ in range(repeat)],
                       device=device)
    mask = torch.tensor([[1] * len(s) + [0] * (S - len(s)) for s in sources
                         for _ in range(repeat)], device=device)
    return model.cross_memory(model.encode(ids, mask), mask)


def rows_of(memory: CrossMemory | None, rows: list[int]) -> CrossMemory | None:
    """The memory of the rows being decoded (all of it while every row is running). It
    copies every layer's cross-attention K/V, so call it when the set of rows changes,
    not at every step."""
    if memory is None or rows == list(range(memory.batch_size)):
        return memory
    return memory.select(rows)


@dataclass
class Timing:
    prefill_s: float = 0.0
    decode_s: float = 0.0
    prompt_tokens: int = 0
    generated_tokens: int = 0


@dataclass
class Rows:
    """The rows of one `generate_ids` run: the consumer may `finish` a row (stop string)."""

    finish_reason: list[str | None]
    timing: Timing = field(default_factory=Timing)

    def finish(self, row: int, reason: str) -> None:
        if self.finish_reason[row] is None:
            self.finish_reason[row] = reason


def make_generators(config: GenerationConfig, n_rows: int) -> list[torch.Generator] | None:
    if config.greedy:
        return None
    base = config.seed if config.seed is not None else int(torch.randint(0, 2**62, ()).item())
    return [torch.Generator().manual_seed(base + i) for i in range(n_rows)]


def cache_for(model: Transformer, n_rows: int, longest_prompt: int, max_tokens: int) -> KVCache:
    limit = model.config.max_seq_len
    if longest_prompt >= limit:
        raise LmforgeError(f"the prompt has {longest_prompt} tokens but the model's context "
                           f"window is {limit}; shorten the prompt")
    p = next(model.parameters())
    return KVCache(model.config, n_rows, min(limit, longest_prompt + max_tokens),
                   dtype=p.dtype, device=p.device)


@torch.inference_mode()
def generate_ids(model: Transformer, prompts: list[list[int]], config: GenerationConfig,
                 stop_ids: list[int], rows: Rows) -> Iterator[list[tuple[int, int]]]:
    """Yield, at each step, (row, token) for every row still running. Row r is answer
    r % n of prompt r // n. Rows end on a stop token, at max_tokens, when the context is
    full, or when the consumer calls `rows.finish`."""
    n_rows = len(prompts) * config.n
    t0 = time.perf_counter()
    memory = source_memory(model, prompts, config.n)
    if memory is not None:
        rows.timing.prompt_tokens += sum(map(len, prompts))
        prompts = [[model.config.decoder_start_id] for _ in prompts]
    cache = cache_for(model, n_rows, max(map(len, prompts)), config.max_tokens)
    first = []
    for ids in prompts:
        slot = cache.allocate()
        first.append(prefill(model, cache, slot, ids, rows_of(memory, [slot])))
        for _ in range(config.n - 1):
            cache.copy(slot, cache.allocate())
    logits = torch.stack([lg for lg in first for _ in range(config.n)])
    rows.timing.prefill_s += time.perf_counter() - t0
    if memory is None:
        rows.timing.prompt_tokens += sum(map(len, prompts))
    chain = build_processors(config, logits.shape[-1], stop_ids)
    state = DecodeState.start([p for p in prompts for _ in range(config.n)], logits.shape[-1])
    gens = make_generators(config, n_rows)
    active = list(range(n_rows))
    active_memory = memory  # the memory of `active`, selected again only when rows finish
    stops = set(stop_ids)
    while active:
        t0 = time.perf_counter()
        tokens = sample(process(logits, chain, state), gens)
        state.append(tokens)
        rows.timing.generated_tokens += len(tokens)
        for i, (row, tok) in enumerate(zip(active, tokens, strict=True)):
            if tok in stops:
                rows.finish(row, "stop")
            elif (state.n_generated(i) >= config.max_tokens
                  or cache.lengths[row] >= cache.max_len):
                rows.finish(row, "length")
        yield list(zip(active, tokens, strict=True))
        keep = [i for i, row in enumerate(active) if rows.finish_reason[row] is None]
        if len(keep) < len(active):
            state = state.select(keep)
            gens = None if gens is None else [gens[i] for i in keep]
            active, tokens = [active[i] for i in keep], [tokens[i] for i in keep]
            active_memory = rows_of(memory, active) if active else None
        if active:
            logits = decode_step(model, cache, active, tokens, active_memory)
        rows.timing.decode_s += time.perf_counter() - t0


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

    def stream(self, prompts: list[list[int]], config: GenerationConfig) -> Iterator[Delta]:
        """Text deltas of every answer as tokens arrive (n answers per prompt)."""
        if config.num_beams > 1:
            yield from self._beam_deltas(prompts, config)
            return
        stop_ids = self.tokenizer.stop_token_ids
        n_rows = len(prompts) * config.n
        rows = Rows([None] * n_rows)
        self.timing = rows.timing
        texts = [TextStream(self.tokenizer, config.stop) for _ in range(n_rows)]
        for step in generate_ids(self.model, prompts, config, stop_ids, rows):
            for row, tok in step:
                delta, stopped = texts[row].push(None if tok in stop_ids else tok)
                if stopped:
                    rows.finish(row, "stop")
                reason = rows.finish_reason[row]
                if reason is not None and not stopped:
                    delta += texts[row].close()
                yield Delta(row, delta, [tok], reason)

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
        from lmforge.generate.beam import beam_search

        stop_ids = self.tokenizer.stop_token_ids
        self.timing = Timing()
        for p_index, prompt in enumerate(prompts):
            for j, hyp in enumerate(beam_search(self.model, prompt, config, stop_ids,
                                                self.timing)):
                text = TextStream(self.tokenizer, config.stop)
                body = [t for t in hyp.tokens if t not in stop_ids]
                pieces = [text.push(t) for t in body]
                stopped = any(s for _, s in pieces)
                yield Delta(p_index * config.n + j, "".join(d for d, _ in pieces) + text.close(),
                            hyp.tokens, "stop" if stopped or hyp.ended else "length")
