"""Continuous batching: one thread runs one decode step at a time over every active sequence.

Each loop iteration (after Orca, Yu et al., OSDI 2022, iteration-level scheduling):
1. admit waiting sequences while the batch has room (`max_batch`) and a slot is free or
   cached; each is prefilled on its own slot, after reusing the longest cached prefix
   (slots.py), and its first token is sampled from the prefill logits;
2. drop sequences whose client went away (their slots are released at once);
3. one `decode_step` over all active sequences (a ragged batch on the slotted KV cache),
   then each row is processed and sampled with its own settings and generator; a sequence
   that ends leaves the batch before the next step.
The event loop never runs the model: it submits `Sequence`s and receives `Event`s through
the `emit` callback each sequence carries (the app wraps `loop.call_soon_threadsafe`).
Beam search (num_beams > 1) runs whole between two steps, holding up the batch meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lmforge.generate.beam import beam_search
from lmforge.generate.cache import KVCache
from lmforge.generate.config import GenerationConfig
from lmforge.generate.engine import Timing, decode_step, prefill
from lmforge.generate.processors import DecodeState, build_processors, process, sample
from lmforge.generate.text import TextStream
from lmforge.model.transformer import Transformer
from lmforge.serve.metrics import Metrics
from lmforge.serve.schemas import APIError
from lmforge.serve.slots import FREE, SlotPool
from lmforge.tokenizers.base import Tokenizer

log = logging.getLogger("lmforge.serve")


@dataclass
class Event:
    """New text of choice `index` (`n_tokens` new tokens); `finish_reason` on its last event;
    `error` when the server failed the sequence."""

    index: int
    text: str
    n_tokens: int
    finish_reason: str | None = None
    error: str | None = None


@dataclass
class Sequence:
    """One answer being generated: the prompt, its settings and where its events go."""

    index: int
    prompt: list[int]
    config: GenerationConfig
    emit: Callable[[Event], None]
    seed: int | None = None  # None: greedy (or an unseeded draw when not greedy)
    cancelled: bool = False  # set by the event loop when the client goes away
    arrived: float = field(default_factory=time.perf_counter)
    slot: int = -1
    last: int = -1
    n_generated: int = 0
    chain: list = field(default_factory=list)
    state: DecodeState | None = None
    text: TextStream | None = None
    generator: torch.Generator | None = None

    def setup(self, tokenizer: Tokenizer, vocab_size: int) -> None:
        self.chain = build_processors(self.config, vocab_size, tokenizer.stop_token_ids)
        self.state = DecodeState.start([self.prompt], vocab_size) if self.chain else None
        self.text = TextStream(tokenizer, self.config.stop)
        if not self.config.greedy:
            seed = self.seed if self.seed is not None else int(torch.randint(0, 2**62, ()))
            self.generator = torch.Generator().manual_seed(seed)

    def pick(self, logits: torch.Tensor, argmax: int) -> int:
        """The next token from this row's logits (1, V); `argmax` is the batch's precomputed
        greedy choice, used when no processor changes the logits."""
        if self.state is not None:
            logits = process(logits.clone(), self.chain, self.state)
        elif self.generator is None:
            return argmax
        tok = sample(logits, None if self.generator is None else [self.generator])[0]
        if self.state is not None:
            self.state.append([tok])
        return tok


class Scheduler:
    """The continuous-batching loop of one causal model, on its own thread."""

    def __init__(self, name: str, model: Transformer, tokenizer: Tokenizer, ctx: int,
                 n_slots: int, max_batch: int, max_queue: int, metrics: Metrics,
                 prefix_reuse: bool = True) -> None:
        self.name, self.model, self.tokenizer = name, model.eval(), tokenizer
        self.max_batch, self.max_queue, self.metrics = max_batch, max_queue, metrics
        p = next(model.parameters())
        self.cache = KVCache(model.config, n_slots, ctx, dtype=p.dtype, device=p.device)
        self.pool = SlotPool(self.cache, prefix_reuse)
        self.stop_ids = set(tokenizer.stop_token_ids)
        self.vocab_size = model.config.vocab_size
        self._waiting: deque[Sequence] = deque()
        self._active: list[Sequence] = []
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"scheduler-{name}", daemon=True)

    @property
    def ctx(self) -> int:
        return self.cache.max_len

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout=30)

    def submit(self, seqs: list[Sequence]) -> None:
        """Queue sequences; a 429 when the queue is full."""
        with self._cv:
            if len(self._waiting) + len(seqs) > self.max_queue:
                raise APIError(429, f"the server's queue is full ({self.max_queue} waiting "
                               "sequences); retry in a moment", code="queue_full",
                               kind="rate_limit_error", headers={"Retry-After": "1"})
            self._waiting.extend(seqs)
            self._cv.notify()

    def cancel(self, seqs: list[Sequence]) -> None:
        """Stop generating for these sequences (the client went away)."""
        for s in seqs:
            s.cancelled = True
        with self._cv:
            self._cv.notify()

    def gauges(self) -> dict[str, float]:
        return {"queue": len(self._waiting), "batch": len(self._active),
                **{state: self.pool.count(state) for state in ("active", "cached", "free")}}

    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._stopping or self._waiting or self._active):
                    self._cv.wait()
                if self._stopping:
                    return
                admitted = self._admit()
            try:
                self._iteration(admitted)
            except Exception as exc:  # a bug must not stop the server: fail what ran, go on
                log.exception("scheduler step failed")
                self._fail(admitted + self._active, exc)

    def _admit(self) -> list[Sequence]:
        admitted: list[Sequence] = []
        room = min(self.max_batch - len(self._active), self.pool.available)
        while self._waiting and len(admitted) < room:
            seq = self._waiting.popleft()
            if not seq.cancelled:
                admitted.append(seq)
        return admitted

    @torch.inference_mode()
    def _iteration(self, admitted: list[Sequence]) -> None:
        for seq in admitted:
            if seq.cancelled:
                continue
            if seq.config.num_beams > 1:
                self._beam(seq)
            else:
                self._start(seq)
        for seq in [s for s in self._active if s.cancelled]:
            self._finish(seq, "cancelled")
        if self._active:
            self._step()

    def _start(self, seq: Sequence) -> None:
        slot, reused = self.pool.acquire(seq.prompt)
        seq.slot = slot
        self._active.append(seq)
        m, name = self.metrics, self.name
        m.inc("lmforge_prompt_tokens_total", len(seq.prompt), model=name)
        m.inc("lmforge_prefix_reused_tokens_total", reused, model=name)
        m.inc("lmforge_prefilled_tokens_total", len(seq.prompt) - reused, model=name)
        logits = prefill(self.model, self.cache, slot, seq.prompt[reused:])[None]
        self.pool.tokens[slot] = list(seq.prompt)
        seq.setup(self.tokenizer, self.vocab_size)
        self._advance(seq, logits, int(logits.argmax()))

    def _step(self) -> None:
        self._active.sort(key=lambda s: s.slot)  # ascending slots: often a contiguous block
        batch = list(self._active)
        for s in batch:
            self.pool.tokens[s.slot].append(s.last)
        logits = decode_step(self.model, self.cache, [s.slot for s in batch],
                             [s.last for s in batch])
        greedy = logits.argmax(dim=-1).tolist()
        for i, s in enumerate(batch):
            self._advance(s, logits[i: i + 1], greedy[i])

    def _advance(self, seq: Sequence, logits: torch.Tensor, argmax: int) -> None:
        tok = seq.pick(logits, argmax)
        seq.n_generated += 1
        self.metrics.generated(self.name, 1)
        if seq.n_generated == 1:
            self.metrics.observe_ttft(time.perf_counter() - seq.arrived, model=self.name)
        is_stop = tok in self.stop_ids
        text, stopped = seq.text.push(None if is_stop else tok)
        reason = "stop" if is_stop or stopped else None
        if reason is None and (seq.n_generated >= seq.config.max_tokens
                               or self.cache.lengths[seq.slot] >= self.cache.max_len):
            reason = "length"
        if reason is not None and not stopped:
            text += seq.text.close()
        seq.last = tok
        seq.emit(Event(seq.index, text, 1, reason))
        if reason is not None:
            self._finish(seq, reason)

    def _finish(self, seq: Sequence, reason: str) -> None:
        self._active.remove(seq)
        self.pool.release(seq.slot)
        self.metrics.inc("lmforge_sequences_finished_total", model=self.name, reason=reason)

    def _beam(self, seq: Sequence) -> None:
        stop_ids = self.tokenizer.stop_token_ids
        self.metrics.inc("lmforge_prompt_tokens_total", len(seq.prompt), model=self.name)
        hyps = beam_search(self.model, seq.prompt, seq.config, stop_ids, Timing())
        for j, hyp in enumerate(hyps):
            stream = TextStream(self.tokenizer, seq.config.stop)
            pieces = [stream.push(t) for t in hyp.tokens if t not in self.stop_ids]
            stopped = any(s for _, s in pieces)
            text = "".join(d for d, _ in pieces) + stream.close()
            self.metrics.generated(self.name, len(hyp.tokens))
            seq.emit(Event(seq.index + j, text, len(hyp.tokens),
                           "stop" if stopped or hyp.ended else "length"))
        self.metrics.inc("lmforge_sequences_finished_total", model=self.name, reason="beam")

    def _fail(self, seqs: list[Sequence], exc: Exception) -> None:
        for seq in seqs:
            if seq.slot >= 0:  # its cache rows may be half written: forget them
                self.pool.state[seq.slot] = FREE
                self.pool.tokens[seq.slot] = []
            seq.emit(Event(seq.index, "", 0, "error", error=f"{type(exc).__name__}: {exc}"))
        self._active = [s for s in self._active if s not in seqs]
