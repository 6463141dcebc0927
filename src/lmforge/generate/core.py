"""The generation core: forward passes over a slotted KV cache, and rows decoding together.

    prefill / decode_step   one forward pass over the cache, logits out
    encode_source           an encoder-decoder's source, encoded once into a slot
    Batch                   rows that decode together: start a row (prefill and first token),
                            then one step for every row at once (a row with
                            `context_shift` shifts when its slot is full: generate/shift.py)

`generate_ids` (the CLI, the Python API, the web UI) and the server's continuous-batching
scheduler both drive a `Batch`; each row decides its tokens through its own `RowDecoder`
(`generate/row.py`). The cache owns the slots: a caller allocates one per row, frees or
copies it only through `KVCache`. An encoder-decoder row keeps its encoder output in its
slot (`KVCache.write_cross`), so it joins a running batch like any decoder row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmforge.errors import LmforgeError
from lmforge.generate.cache import KVCache
from lmforge.generate.compiled import decode_forward
from lmforge.generate.row import RowDecoder, Step
from lmforge.generate.shift import shifted
from lmforge.model.cross_attention import CrossMemory
from lmforge.model.prefix import PrefixKV, attached_prefix
from lmforge.model.transformer import Transformer

PREFILL_CHUNK = 1024


@torch.inference_mode()
def prefill(model: Transformer, cache: KVCache, slot: int, ids: list[int],
            memory: CrossMemory | None = None, *, embeds: torch.Tensor | None = None,
            all_logits: bool = False) -> torch.Tensor:
    """Run `ids` (or input embeddings `embeds` (T, d), a soft prompt) into `slot` from its
    current length; fp32 logits (V,) of the last position, or (T, V) of every position
    with `all_logits` (scoring a prompt).

    A prefix decoder reads its whole prompt bidirectionally (the prompt is its prefix), so
    the prompt goes in as one pass; others go in chunks. `memory`: the slot's encoder output
    (encoder-decoder models), read from the cache when None."""
    n = len(ids) if embeds is None else embeds.shape[0]
    if not n:
        raise LmforgeError("the prompt is empty: give at least one token")
    device = cache.k.device
    memory = memory if memory is not None else cache.cross([slot])
    prefix = model.config.family == "prefix"
    chunk_len = n if prefix else PREFILL_CHUNK
    out = []
    for start in range(0, n, chunk_len):
        end = min(n, start + chunk_len)
        kw = ({"embeds": embeds[None, start:end]} if embeds is not None
              else {"ids": torch.tensor([ids[start:end]], device=device)})
        width = end - start
        keep = None if all_logits else torch.tensor([[width - 1]], device=device)
        out.append(model(**kw, cache=cache.step([slot], width=width, bidirectional=prefix),
                         keep=keep, memory=memory)[0])
    return torch.cat(out) if all_logits else out[-1][-1]


@torch.inference_mode()
def decode_step(model: Transformer, cache: KVCache, slots: list[int], tokens: list[int],
                memory: CrossMemory | None = None) -> torch.Tensor:
    """One new token for each slot; fp32 logits (B, V). `memory`: the rows' encoder output,
    read from the cache when None."""
    ids = torch.tensor(tokens, device=cache.k.device)[:, None]
    memory = memory if memory is not None else cache.cross(slots)
    return decode_forward(model)(ids, cache=cache.step(slots), memory=memory)[:, -1]


@torch.inference_mode()
def encode_source(model: Transformer, cache: KVCache, slot: int, source: list[int]) -> None:
    """Encode an encoder-decoder's source and keep every layer's cross-attention K/V in the
    slot; the decoder then starts from `decoder_start_id`."""
    if not source:
        raise LmforgeError("the prompt is empty: give at least one token")
    ids = torch.tensor([source], device=cache.k.device)
    cache.write_cross(slot, model.cross_memory(model.encode(ids)))


def prompt_ids(model: Transformer, prompt: list[int]) -> tuple[list[int], list[int] | None]:
    """(decoder input, encoder source): an encoder-decoder reads the prompt as its source
    and starts decoding from `decoder_start_id`; other models decode the prompt itself."""
    if model.config.family == "encoder_decoder":
        return [model.config.decoder_start_id], prompt
    return prompt, None


@dataclass
class Timing:
    prefill_s: float = 0.0
    decode_s: float = 0.0
    prompt_tokens: int = 0
    generated_tokens: int = 0


def cache_for(model: Transformer, n_rows: int, longest_prompt: int, max_tokens: int,
              longest_source: int | None = None) -> KVCache:
    """A cache for `n_rows` rows of at most `longest_prompt` + `max_tokens` positions (within
    the model's window); `longest_source`: an encoder-decoder's longest source."""
    limit = model.config.max_seq_len
    longest = max(longest_prompt, longest_source or 0)
    if longest >= limit:
        raise LmforgeError(f"the prompt has {longest} tokens but the model's context "
                           f"window is {limit}; shorten the prompt")
    return KVCache(model.config, n_rows, min(limit, longest_prompt + max_tokens),
                   dtype=model.dtype, device=model.device, source_len=longest_source)


@dataclass
class Row:
    """A row of a batch: its slot and its decisions."""

    slot: int
    decoder: RowDecoder


class Batch:
    """Rows decoding together over one KV cache (ragged: each at its own length)."""

    def __init__(self, model: Transformer, cache: KVCache) -> None:
        self.model = model.eval()
        self.cache = cache
        self.rows: dict[int, Row] = {}  # slot → its running row

    def prefill(self, slot: int, prompt: list[int], reused: int = 0,
                all_logits: bool = False, prefix: PrefixKV | None = None) -> torch.Tensor:
        """Prefill `prompt` into `slot`, whose first `reused` positions already hold it (an
        encoder-decoder's prompt is its source, encoded here; a P-Tuning v2 `prefix` is
        written first into a slot that holds nothing yet); logits (V,) of the last
        position, or (T, V) of every prefilled position with `all_logits`. Without
        `prefix`, the one an adapter attached to the model, if any."""
        prefix = prefix if prefix is not None else attached_prefix(self.model)
        ids, source = prompt_ids(self.model, prompt)
        if source is not None:
            encode_source(self.model, self.cache, slot, source)
            reused = 0
        if prefix is not None and reused == 0:
            self.cache.write_prefix(slot, prefix)
        return prefill(self.model, self.cache, slot, ids[reused:], all_logits=all_logits)

    def join(self, slot: int, decoder: RowDecoder, logits: torch.Tensor) -> Step:
        """A prefilled slot starts decoding: its first token from the prefill's last logits
        (V,); it joins the batch unless that token ended it."""
        if decoder.context is not None and self.model.config.family != "decoder":
            raise LmforgeError(f"context_shift needs a decoder (it re-reads the kept tokens "
                               f"causally); this model is a {self.model.config.family}")
        row = Row(slot, decoder)
        step = self._advance(row, logits, None)
        if step.finish_reason is None:
            self.rows[slot] = row
        return step

    def step(self) -> list[tuple[Row, Step]]:
        """One decode step over every row; rows that end leave the batch (their slots stay
        allocated: the caller frees or keeps them)."""
        rows = [self.rows[s] for s in sorted(self.rows)]  # ascending: often one block
        for r in rows:
            if r.decoder.context is not None and self.cache.lengths[r.slot] == self.cache.max_len:
                self.shift(r)
        logits = decode_step(self.model, self.cache, [r.slot for r in rows],
                             [r.decoder.last for r in rows])
        greedy = logits.argmax(dim=-1).tolist()
        out = [(r, self._advance(r, logits[i], greedy[i])) for i, r in enumerate(rows)]
        for r, step in out:
            if step.finish_reason is not None:
                del self.rows[r.slot]
        return out

    def shift(self, row: Row) -> None:
        """Context shift of a row whose slot is full (`generate/shift.py`): the slot keeps
        its first n_keep positions and gets the other kept tokens prefilled after them."""
        *fed, last = row.decoder.context  # `last` is fed by the next decode step
        n_keep = row.decoder.n_keep
        kept = shifted(fed, n_keep)
        self.cache.truncate(row.slot, self.cache.prefix_len[row.slot] + n_keep)
        prefill(self.model, self.cache, row.slot, kept[n_keep:])
        row.decoder.context = kept + [last]

    def remove(self, slot: int) -> None:
        """Take a slot's row out of the batch (cancelled or failed), if it is running."""
        self.rows.pop(slot, None)

    def _advance(self, row: Row, logits: torch.Tensor, argmax: int | None) -> Step:
        token = row.decoder.choose(logits, argmax)
        # a row that shifts its context always has room (`shift` makes it)
        room = row.decoder.context is not None or self.cache.lengths[row.slot] < self.cache.max_len
        return row.decoder.accept(token, room, logits)
