"""The tagger's rows: sentences cut into short windows, and the training rows drawn from them.

A line is cut after each punctuation mark into clauses (in MSR a punctuation mark is always
a one-character word, so no word crosses a cut), and consecutive clauses are packed into
windows of at most `max_len` characters; a clause longer than that is cut every `max_len`
characters. Training and segmentation cut lines the same way, so the tagger sees at test
time the context lengths it was trained on.

    >>> spans("他说：好。我们走吧", 6)
    [(0, 5), (5, 9)]

Characters are looked up after `fullwidth` (ASCII → its full-width form): the MSR text
writes digits, Latin letters and punctuation full-width; other text often half-width.

Training rows come from two sources, mixed by `dict_share` (`TagRows`):
- tagged sentences: B/M/E/S tags of segmented text (a gold corpus, or raw text segmented by
  bidirectional maximum matching with the dictionary: silver labels);
- dictionary rows: words drawn uniformly from the dictionary and concatenated, which shows
  the tagger every dictionary word (names, numbers with their measure words) at least in
  a random context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmforge.data.batches import Batch
from lmforge.objectives.masked_lm import IGNORE
from lmforge.segment.bmes import TAGS, tags_of
from lmforge.tokenizers import Tokenizer

PUNCT = frozenset("，。！？；：、,.!?;:…")
_TAG_ID = {t: i for i, t in enumerate(TAGS)}


def fullwidth(text: str) -> str:
    """ASCII characters 0x21–0x7E as their full-width forms (U+FF01–U+FF5E), space as
    U+3000; everything else unchanged."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else "\u3000" if c == " " else c
                   for c in text)


def spans(text: str, max_len: int) -> list[tuple[int, int]]:
    """(start, end) windows covering `text`: clauses packed up to `max_len` characters."""
    clauses, start = [], 0
    for i, c in enumerate(text):
        if c in PUNCT or fullwidth(c) in PUNCT or i == len(text) - 1:
            clauses.append((start, i + 1))
            start = i + 1
    out: list[tuple[int, int]] = []
    for a, b in clauses:
        for lo in range(a, b, max_len):
            hi = min(lo + max_len, b)
            if out and hi - out[-1][0] <= max_len and out[-1][1] == lo:
                out[-1] = (out[-1][0], hi)
            else:
                out.append((lo, hi))
    return out


def char_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(fullwidth(text), parse_special=False)


@dataclass
class Tagged:
    """Rows of character ids with their tag ids."""

    ids: list[list[int]]
    tags: list[list[int]]


def tagged_rows(tokenizer: Tokenizer, sentences: list[list[str]], max_len: int) -> Tagged:
    """The windows of segmented sentences, as character ids and tag ids."""
    out = Tagged([], [])
    for words in sentences:
        text, tags = "".join(words), tags_of(words)
        ids = char_ids(tokenizer, text)
        for a, b in spans(text, max_len):
            out.ids.append(ids[a:b])
            out.tags.append([_TAG_ID[t] for t in tags[a:b]])
    return out


def pad_rows(ids: list[list[int]], tags: list[list[int]], pad: int) -> Batch:
    """Right-padded ids, attention mask and labels (IGNORE on padding)."""
    n, t = len(ids), max(map(len, ids))
    out = {"ids": torch.full((n, t), pad, dtype=torch.long),
           "attention_mask": torch.zeros(n, t, dtype=torch.long),
           "labels": torch.full((n, t), IGNORE, dtype=torch.long)}
    for r, (row, tag) in enumerate(zip(ids, tags, strict=True)):
        out["ids"][r, :len(row)] = torch.tensor(row)
        out["attention_mask"][r, :len(row)] = 1
        out["labels"][r, :len(tag)] = torch.tensor(tag)
    return out


class TagRows:
    """sampler(gen, n) → a batch of n rows: each a tagged window with probability
    1 − dict_share, else a dictionary row (uniform words up to `max_len` characters).
    Every draw goes through `gen`, so a resumed run draws the same batches."""

    def __init__(self, tagged: Tagged, tokenizer: Tokenizer, words: list[str],
                 max_len: int, dict_share: float) -> None:
        self.tagged, self.max_len, self.dict_share = tagged, max_len, dict_share
        self.pad = tokenizer.special.pad
        words = [w for w in words if len(w) <= max_len]
        self.word_ids = [char_ids(tokenizer, w) for w in words]
        self.word_tags = [[_TAG_ID[t] for t in tags_of([w])] for w in words]

    def dictionary_row(self, gen: torch.Generator) -> tuple[list[int], list[int]]:
        ids: list[int] = []
        tags: list[int] = []
        for k in torch.randint(len(self.word_ids), (self.max_len,), generator=gen).tolist():
            if len(ids) + len(self.word_ids[k]) > self.max_len:
                break
            ids += self.word_ids[k]
            tags += self.word_tags[k]
        return ids, tags  # the first word always fits: every word is at most max_len

    def __call__(self, gen: torch.Generator, n: int) -> Batch:
        from_dict = (torch.rand(n, generator=gen) < self.dict_share).tolist()
        picks = torch.randint(max(1, len(self.tagged.ids)), (n,), generator=gen).tolist()
        ids, tags = [], []
        for use_dict, k in zip(from_dict, picks, strict=True):
            row = self.dictionary_row(gen) if use_dict or not self.tagged.ids \
                else (self.tagged.ids[k], self.tagged.tags[k])
            ids.append(row[0])
            tags.append(row[1])
        return pad_rows(ids, tags, self.pad)
