"""Batches for each training objective, drawn from a memory-mapped token stream.

Every sampler is a callable `sampler(gen, n) -> dict of tensors` whose randomness comes only
from the `torch.Generator` it is given, so the trainer's saved generator state reproduces
the batches after a resume exactly. Keys are the model's inputs and the loss's targets:

    objective         sampler          keys
    causal_lm         Windows          ids, targets (= ids shifted left)
    prefix_lm         PrefixWindows    ids, targets, prefix (B,) ~ U{1 … block−1}
    mlm (RoBERTa)     MaskedWindows    ids = [CLS] window [SEP] with 80/10/10 masking, labels
    mlm + nsp (BERT)  SentencePairs    ids, token_types, attention_mask, labels, nsp_labels
    span_corruption   SpanPairs        src, src_mask, dec, labels (T5: sentinel targets)
    denoising         DenoisePairs     src, src_mask, dec, labels (BART: the original text)

Sequence-to-sequence rows are padded on the right to the longest row; the decoder reads
[start] + target and predicts target + [SEP] (the end of the target), padding labelled −100.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from lmforge.data.lines import Lines, Specials, require_pairs
from lmforge.errors import LmforgeError
from lmforge.objectives.denoising import denoise
from lmforge.objectives.masked_lm import IGNORE, mask_tokens
from lmforge.objectives.nsp import IS_NEXT, NOT_NEXT, pair_layout, truncate_pair
from lmforge.objectives.span_corruption import span_corrupt

Batch = dict[str, torch.Tensor]
Sampler = Callable[[torch.Generator, int], Batch]


def windows(tokens: np.ndarray, n: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """`n` random windows of `length` consecutive tokens, (n, length) int64."""
    if len(tokens) <= length:
        raise LmforgeError(f"the data has {len(tokens)} tokens, too few for windows of "
                           f"{length}; lower train.block_size")
    starts = torch.randint(len(tokens) - length, (n,), generator=gen).tolist()
    return torch.from_numpy(np.stack([tokens[s: s + length] for s in starts]).astype(np.int64))


class Windows:
    """Causal LM: windows of block + 1 tokens, split into inputs and next-token targets."""

    def __init__(self, tokens: np.ndarray, block: int) -> None:
        self.tokens, self.block = tokens, block

    def __call__(self, gen: torch.Generator, n: int) -> Batch:
        rows = windows(self.tokens, n, self.block + 1, gen)
        return {"ids": rows[:, :-1], "targets": rows[:, 1:]}


class PrefixWindows(Windows):
    """Prefix LM: causal windows plus a prefix length per row, uniform in 1 … block − 1, so
    at least one token is read bidirectionally and at least one is predicted."""

    def __call__(self, gen: torch.Generator, n: int) -> Batch:
        batch = super().__call__(gen, n)
        batch["prefix"] = torch.randint(1, self.block, (n,), generator=gen)
        return batch


class MaskedWindows:
    """MLM without NSP (RoBERTa's FULL-SENTENCES: contiguous text across documents):
    `[CLS] window [SEP]` with BERT's 80/10/10 corruption of 15% of the window tokens."""

    def __init__(self, tokens: np.ndarray, block: int, sp: Specials, rate: float) -> None:
        self.tokens, self.block, self.sp, self.rate = tokens, block, sp, rate

    def __call__(self, gen: torch.Generator, n: int) -> Batch:
        rows = windows(self.tokens, n, self.block - 2, gen)
        ids = torch.cat([torch.full((n, 1), self.sp.cls), rows,
                         torch.full((n, 1), self.sp.sep)], dim=1)
        special = torch.zeros_like(ids, dtype=torch.bool)
        special[:, [0, -1]] = True
        ids, labels = mask_tokens(ids, self.sp.mask, self.sp.n_text, gen, special, self.rate)
        return {"ids": ids, "labels": labels}


class SentencePairs:
    """BERT's MLM + NSP: `[CLS] A [SEP] B [SEP]` pairs of consecutive lines, B the true
    continuation of A half of the time and lines of another document otherwise; A takes a
    random share of the block (at least one line), B fills the rest, and the pair is cut to
    fit with `truncate_pair`. 15% of the non-special tokens are corrupted 80/10/10."""

    def __init__(self, tokens: np.ndarray, lines: Lines, block: int, sp: Specials,
                 rate: float) -> None:
        self.tokens, self.lines, self.block, self.sp, self.rate = tokens, lines, block, sp, rate
        self.first = require_pairs(lines)
        self.budget = block - 3

    def _segment(self, line: int, limit: int, stop: int | None = None) -> tuple[list[int], int]:
        """Tokens of whole lines from `line` on, within its document and before `stop`, until
        at least `limit` tokens (at least one line); and the next line's index."""
        doc, out = self.lines.doc[line], []
        end = len(self.lines) if stop is None else stop
        while line < end and self.lines.doc[line] == doc and (not out or len(out) < limit):
            out += self.tokens[self.lines.start[line]: self.lines.end[line]].tolist()
            line += 1
        return out, line

    def _other_doc_line(self, doc: int, gen: torch.Generator) -> int:
        while True:
            line = int(torch.randint(len(self.lines), (), generator=gen))
            if self.lines.doc[line] != doc:
                return line

    def pair(self, gen: torch.Generator) -> tuple[list[int], list[int], int]:
        """(A, B, label) with len(A) + len(B) ≤ block − 3."""
        i = int(self.first[torch.randint(len(self.first), (), generator=gen)])
        doc = self.lines.doc[i]
        last = i + int(np.searchsorted(self.lines.doc[i:], doc, side="right"))  # doc's end
        a_len = int(torch.randint(1, max(2, self.budget), (), generator=gen))
        a, nxt = self._segment(i, a_len, stop=last - 1)
        if torch.rand((), generator=gen).item() < 0.5:
            label, start = IS_NEXT, nxt
        else:
            label, start = NOT_NEXT, self._other_doc_line(doc, gen)
        b, _ = self._segment(start, self.budget - len(a))
        a, b = truncate_pair(a, b, self.budget, gen)
        return a, b, label

    def __call__(self, gen: torch.Generator, n: int) -> Batch:
        rows, types, masks, labels = [], [], [], []
        for _ in range(n):
            a, b, label = self.pair(gen)
            ids, tt, am = pair_layout(a, b, self.sp.cls, self.sp.sep, self.sp.pad, self.block)
            rows.append(ids), types.append(tt), masks.append(am), labels.append(label)
        ids = torch.tensor(rows)
        special = (ids == self.sp.cls) | (ids == self.sp.sep) | (torch.tensor(masks) == 0)
        ids, mlm = mask_tokens(ids, self.sp.mask, self.sp.n_text, gen, special, self.rate)
        return {"ids": ids, "token_types": torch.tensor(types),
                "attention_mask": torch.tensor(masks), "labels": mlm,
                "nsp_labels": torch.tensor(labels)}


def seq2seq_batch(pairs: list[tuple[list[int], list[int]]], sp: Specials, start: int
                  ) -> Batch:
    """Right-padded encoder inputs and decoder inputs/labels of (source, target) pairs."""
    S = max(len(s) for s, _ in pairs)
    T = max(len(t) for _, t in pairs) + 1
    src = torch.full((len(pairs), S), sp.pad)
    src_mask = torch.zeros(len(pairs), S, dtype=torch.long)
    dec = torch.full((len(pairs), T), sp.pad)
    labels = torch.full((len(pairs), T), IGNORE)
    for r, (s, t) in enumerate(pairs):
        src[r, : len(s)], src_mask[r, : len(s)] = torch.tensor(s), 1
        dec[r, : len(t) + 1] = torch.tensor([start, *t])
        labels[r, : len(t) + 1] = torch.tensor([*t, sp.sep])
    return {"src": src, "src_mask": src_mask, "dec": dec, "labels": labels}


class SpanPairs:
    """T5 span corruption of `block`-token windows (`objectives.span_corruption`)."""

    def __init__(self, tokens: np.ndarray, block: int, sp: Specials, start: int,
                 noise: float, mean_span: float) -> None:
        self.tokens, self.block, self.sp, self.start = tokens, block, sp, start
        self.noise, self.mean_span = noise, mean_span

    def __call__(self, gen: torch.Generator, n: int) -> Batch:
        rows = windows(self.tokens, n, self.block, gen).tolist()
        pairs = [span_corrupt(r, list(self.sp.sentinels), gen, self.noise, self.mean_span)
                 for r in rows]
        return seq2seq_batch(pairs, self.sp, self.start)


class DenoisePairs:
    """BART denoising of `block − 1`-token windows (the decoder reads [start] + window):
    source = noise(window), target = window; lines are the sentences."""

    def __init__(self, tokens: np.ndarray, newlines: np.ndarray, block: int, sp: Specials,
                 start: int, noises: list[str], rate: float) -> None:
        self.tokens, self.newlines, self.block, self.sp = tokens, newlines, block, sp
        self.start, self.noises, self.rate = start, noises, rate

    def __call__(self, gen: torch.Generator, n: int) -> Batch:
        rows = windows(self.tokens, n, self.block - 1, gen)
        pairs = []
        for row in rows.tolist():
            ends = (self.newlines[row] > 0).tolist()
            src = denoise(row, ends, self.noises, self.sp.mask, self.rate, gen)
            pairs.append((src[: self.block] or [self.sp.mask], row))
        return seq2seq_batch(pairs, self.sp, self.start)
