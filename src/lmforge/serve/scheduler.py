"""Continuous batching: one thread runs one decode step at a time over every active sequence.

The scheduler is the generation core (`generate/core.py`: a `Batch` of rows over the slotted
KV cache, each row deciding its tokens through its own `RowDecoder`) plus what a server adds:
admission, cancellation and prefix reuse. Each loop iteration (after Orca, Yu et al., OSDI
2022, iteration-level scheduling):
1. admit waiting sequences while the batch has room (`max_batch`) and a slot is free or
   cached; each is prefilled on its own slot, after reusing the longest cached prefix
   (slots.py), and its first token is chosen from the prefill's logits. A prefill that
   fails fails its own sequence only;
2. drop sequences whose client went away (their slots are released at once);
3. one decode step over all active sequences (a ragged batch), each row choosing with its
   own settings and generator; a sequence that ends leaves the batch before the next step.
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

from lmforge.generate.beam import beam_answers
from lmforge.generate.cache import KVCache
from lmforge.generate.config import GenerationConfig
from lmforge.generate.core import Batch, Timing
from lmforge.generate.processors import Processor
from lmforge.generate.row import RowDecoder, Step, TokenLogprob, token_logprobs
from lmforge.model.prefix import PrefixKV
from lmforge.model.transformer import Transformer
from lmforge.serve.metrics import Metrics
from lmforge.serve.schemas import APIError
from lmforge.serve.slots import SlotPool
from lmforge.tokenizers.base import Tokenizer

log = logging.getLogger("lmforge.serve")


@dataclass
class Event:
    """New text of choice `index` from `tokens`; `finish_reason` on its last event; `error`
    when the server failed the sequence. `logprobs`: one per token when asked for;
    `prompt_logprobs` (first event of an echoed prompt): one per prompt token, None for the
    first, which has no context."""

    index: int
    text: str
    tokens: list[int]
    finish_reason: str | None = None
    error: str | None = None
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None
    generated: int | None = None  # tokens generated, when not `tokens` (an encoder's fill)

    @property
    def n_tokens(self) -> int:
        return len(self.tokens) if self.generated is None else self.generated


@dataclass
class Sequence:
    """One answer being generated: the prompt, its settings and where its events go.
    `logprobs`: None, or how many alternatives to give with each token's log-probability;
    `echo`: score the prompt too (its log-probabilities come with the first event);
    `max_tokens` 0 (with echo): score only."""

    index: int
    prompt: list[int]
    config: GenerationConfig
    emit: Callable[[Event], None]
    seed: int | None = None  # None: greedy (or an unseeded draw when not greedy)
    logprobs: int | None = None
    echo: bool = False
    score_only: bool = False
    prefix: PrefixKV | None = None  # P-Tuning v2 keys and values read before the prompt
    processors: list[Processor] = field(default_factory=list)  # e.g. a tool-call constraint
    cancelled: bool = False  # set by the event loop when the client goes away
    arrived: float = field(default_factory=time.perf_counter)
    slot: int = -1
    decoder: RowDecoder | None = None


class Scheduler:
    """The continuous-batching loop of one generative model, on its own thread."""

    def __init__(self, name: str, model: Transformer, tokenizer: Tokenizer, ctx: int,
                 n_slots: int, max_batch: int, max_queue: int, metrics: Metrics,
                 prefix_reuse: bool = True) -> None:
        self.name, self.model, self.tokenizer = name, model.eval(), tokenizer
        self.max_batch, self.max_queue, self.metrics = max_batch, max_queue, metrics
        self.cache = KVCache(model.config, n_slots, ctx, dtype=model.dtype, device=model.device,
                             source_len=ctx)
        # only a decoder's keys and values depend on the earlier tokens alone (slots.py)
        self.pool = SlotPool(self.cache, prefix_reuse and model.config.family == "decoder")
        self.batch = Batch(model, self.cache)
        self.vocab_size = model.config.vocab_size
        self._waiting: deque[Sequence] = deque()
        self._active: dict[int, Sequence] = {}  # slot → sequence
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
                self._fail(list(self._active.values()), exc)

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
            try:
                if seq.config.num_beams > 1:
                    self._beam(seq)
                else:
                    self._start(seq)
            except Exception as exc:  # this sequence's prefill failed: the others go on
                log.exception("prefill failed")
                self._fail([seq], exc)
        for seq in [s for s in self._active.values() if s.cancelled]:
            self._finish(seq, "cancelled")
        if self.batch.rows:
            for row, step in self.batch.step():
                self._emit(self._active[row.slot], step)

    def _start(self, seq: Sequence) -> None:
        slot, reused = self.pool.acquire(seq.prompt, reuse=not seq.echo, key=seq.prefix)
        seq.slot = slot
        self._active[slot] = seq
        m, name = self.metrics, self.name
        m.inc("lmforge_prompt_tokens_total", len(seq.prompt), model=name)
        m.inc("lmforge_prefix_reused_tokens_total", reused, model=name)
        m.inc("lmforge_prefilled_tokens_total", len(seq.prompt) - reused, model=name)
        logits = self.batch.prefill(slot, seq.prompt, reused, all_logits=seq.echo,
                                    prefix=seq.prefix)
        self.pool.tokens[slot] = list(seq.prompt)
        seq.decoder = RowDecoder(seq.prompt, seq.config, self.tokenizer.stop_token_ids,
                                 self.vocab_size, tokenizer=self.tokenizer, seed=seq.seed,
                                 logprobs=seq.logprobs, processors=seq.processors)
        prompt_lp = self._prompt_logprobs(seq, logits) if seq.echo else None
        if seq.score_only:
            seq.emit(Event(seq.index, "", [], "length", prompt_logprobs=prompt_lp))
            self._finish(seq, "length")
            return
        step = self.batch.join(slot, seq.decoder, logits[-1] if seq.echo else logits)
        self._emit(seq, step, prompt_lp)

    def _prompt_logprobs(self, seq: Sequence, logits: torch.Tensor
                         ) -> list[TokenLogprob | None]:
        """log p(prompt[t] | prompt[:t]) from the prefill's logits (T, V); None for t = 0.
        An encoder-decoder's prompt is its source, which the decoder does not predict."""
        if self.model.config.family == "encoder_decoder":
            return [None] * len(seq.prompt)
        return [None, *token_logprobs(logits[:-1], seq.prompt[1:], seq.logprobs or 0)]

    def _emit(self, seq: Sequence, step: Step,
              prompt_logprobs: list[TokenLogprob | None] | None = None) -> None:
        if seq.decoder.n_generated == 1:
            self.metrics.observe_ttft(time.perf_counter() - seq.arrived, model=self.name)
        self.metrics.generated(self.name, 1)
        self.pool.tokens[seq.slot].append(step.token)
        logprobs = [step.logprob] if step.logprob is not None else None
        seq.emit(Event(seq.index, step.text, [step.token], step.finish_reason,
                       logprobs=logprobs, prompt_logprobs=prompt_logprobs))
        if step.finish_reason is not None:
            self._finish(seq, step.finish_reason)

    def _finish(self, seq: Sequence, reason: str) -> None:
        self.batch.remove(seq.slot)
        del self._active[seq.slot]
        self.pool.release(seq.slot)
        self.metrics.inc("lmforge_sequences_finished_total", model=self.name, reason=reason)

    def _beam(self, seq: Sequence) -> None:
        self.metrics.inc("lmforge_prompt_tokens_total", len(seq.prompt), model=self.name)
        answers = beam_answers(self.model, self.tokenizer, seq.prompt, seq.config, Timing())
        for j, (text, hyp, reason) in enumerate(answers):
            self.metrics.generated(self.name, len(hyp.tokens))
            seq.emit(Event(seq.index + j, text, hyp.tokens, reason))
        self.metrics.inc("lmforge_sequences_finished_total", model=self.name, reason="beam")

    def _fail(self, seqs: list[Sequence], exc: Exception) -> None:
        for seq in seqs:
            if seq.slot >= 0 and self._active.get(seq.slot) is seq:
                self.batch.remove(seq.slot)
                del self._active[seq.slot]
                self.pool.drop(seq.slot)  # its cache rows may be half written: forget them
            seq.emit(Event(seq.index, "", [], "error", error=f"{type(exc).__name__}: {exc}"))

