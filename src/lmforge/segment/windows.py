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

Dictionary features (`match_bits`): for each character, which dictionary words start and end
at it, by length 1, 2, 3 and ≥ 4: eight bits, packed into one integer (bit k−1: a word of
length k starts here; bit 4 + k−1: one ends here). They give the tagger the dictionary's
evidence directly, as maximum matching uses it (dictionary features in a neural segmenter:
Zhang, Zhang and Fu, 2018, "Neural Networks Incorporating Dictionaries for Chinese Word
Segmentation").

    >>> from lmforge.segment.dictionary import Dictionary
    >>> match_bits("研究生", Dictionary(["研究", "研究生", "生"]))  # 6 = 2 + 4: 研究, 研究生
    [6, 32, 81]

Training rows come from two sources, mixed by `dict_share` (`TagRows`); in dictionary rows
each word is, with probability `oov_rate`, made out-of-vocabulary: the bits of its own
match are cleared, as if it were missing from the dictionary, so that the tagger learns to
find words the dictionary lacks from their characters and context:
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
from lmforge.segment.dictionary import END, Dictionary
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


N_BITS = 8


def match_bits(text: str, dictionary: Dictionary) -> list[int]:
    """The packed start/end-of-word bits of each character of `text` (after `fullwidth`)."""
    text = fullwidth(text)
    bits = [0] * len(text)
    for i in range(len(text)):
        node = dictionary.forward
        for j in range(i, len(text)):
            node = node.get(text[j])
            if node is None:
                break
            if END in node:
                k = min(j - i + 1, 4) - 1
                bits[i] |= 1 << k
                bits[j] |= 1 << (4 + k)
    return bits


@dataclass
class Tagged:
    """Rows of character ids with their tag ids."""

    ids: list[list[int]]
    tags: list[list[int]]
    bits: list[list[int]]  # `match_bits` of each row (empty lists without a dictionary)


def tagged_rows(tokenizer: Tokenizer, sentences: list[list[str]], max_len: int,
                dictionary: Dictionary | None) -> Tagged:
    """The windows of segmented sentences: character ids, tag ids, dictionary bits."""
    out = Tagged([], [], [])
    for words in sentences:
        text, tags = "".join(words), tags_of(words)
        ids = char_ids(tokenizer, text)
        for a, b in spans(text, max_len):
            out.ids.append(ids[a:b])
            out.tags.append([_TAG_ID[t] for t in tags[a:b]])
            out.bits.append(match_bits(text[a:b], dictionary) if dictionary else [])
    return out


def pad_rows(ids: list[list[int]], tags: list[list[int]] | None, bits: list[list[int]],
             pad: int) -> Batch:
    """Right-padded ids, attention mask, labels (IGNORE on padding; none when `tags` is
    None) and dictionary bits ("bits", when the rows have them)."""
    n, t = len(ids), max(map(len, ids))
    out = {"ids": torch.full((n, t), pad, dtype=torch.long),
           "attention_mask": torch.zeros(n, t, dtype=torch.long)}
    if tags is not None:
        out["labels"] = torch.full((n, t), IGNORE, dtype=torch.long)
    if any(bits):
        out["bits"] = torch.zeros(n, t, dtype=torch.long)
    for r, row in enumerate(ids):
        out["ids"][r, :len(row)] = torch.tensor(row)
        out["attention_mask"][r, :len(row)] = 1
        if tags is not None:
            out["labels"][r, :len(row)] = torch.tensor(tags[r])
        if "bits" in out:
            out["bits"][r, :len(row)] = torch.tensor(bits[r])
    return out


class TagRows:
    """sampler(gen, n) → a batch of n rows: each a tagged window with probability
    1 − dict_share, else a dictionary row (uniform words up to `max_len` characters).
    Every draw goes through `gen`, so a resumed run draws the same batches."""

    def __init__(self, tagged: Tagged, tokenizer: Tokenizer, words: list[str],
                 max_len: int, dict_share: float, dictionary: Dictionary | None,
                 oov_rate: float = 0.0) -> None:
        self.tagged, self.max_len, self.dict_share = tagged, max_len, dict_share
        self.oov_rate = oov_rate
        self.pad, self.dictionary = tokenizer.special.pad, dictionary
        self.words = [w for w in words if len(w) <= max_len]
        self.word_ids = [char_ids(tokenizer, w) for w in self.words]
        self.word_tags = [[_TAG_ID[t] for t in tags_of([w])] for w in self.words]

    def dictionary_row(self, gen: torch.Generator) -> tuple[list[int], list[int], list[int]]:
        ids: list[int] = []
        tags: list[int] = []
        text = ""
        drop = (torch.rand(self.max_len, generator=gen) < self.oov_rate).tolist()
        dropped = []
        for n, k in enumerate(torch.randint(len(self.word_ids), (self.max_len,),
                                            generator=gen).tolist()):
            if len(ids) + len(self.word_ids[k]) > self.max_len:
                break  # the first word always fits: every word is at most max_len
            if drop[n]:
                dropped.append((len(ids), len(self.words[k])))
            ids += self.word_ids[k]
            tags += self.word_tags[k]
            text += self.words[k]
        if not self.dictionary:
            return ids, tags, []
        bits = match_bits(text, self.dictionary)
        for start, length in dropped:  # as if the word were missing from the dictionary
            k = min(length, 4) - 1
            bits[start] &= ~(1 << k)
            bits[start + length - 1] &= ~(1 << (4 + k))
        return ids, tags, bits

    def __call__(self, gen: torch.Generator, n: int) -> Batch:
        from_dict = (torch.rand(n, generator=gen) < self.dict_share).tolist()
        picks = torch.randint(max(1, len(self.tagged.ids)), (n,), generator=gen).tolist()
        t = self.tagged
        rows = [self.dictionary_row(gen) if use_dict or not t.ids
                else (t.ids[k], t.tags[k], t.bits[k])
                for use_dict, k in zip(from_dict, picks, strict=True)]
        return pad_rows(*(list(x) for x in zip(*rows, strict=True)), pad=self.pad)
