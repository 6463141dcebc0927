"""Chunking by tokens with an overlap of whole sentences.

    >>> count = lambda s: len(s.split())           # the embedder's tokenizer in practice
    >>> [c.text for c in chunk_text("A b c. D e. F g h. I.", count, max_tokens=5, overlap=3)]
    ['A b c. D e.', 'D e. F g h.', 'F g h. I.']

A long text does not fit the encoder's window (all-MiniLM-L6-v2 was trained on 128-256
word pieces), and one vector for a whole document blurs its topics, so documents are cut into
chunks of at most `max_tokens` tokens, counted with the embedder's own tokenizer. Cuts fall
between sentences; the next chunk starts with the last sentences of the previous one (as many
as fit in `overlap` tokens), so a fact that straddles a cut is whole in one of the two.

Sentences end at . ! ? (followed by white space), at Chinese 。！？； (no space needed), at
blank lines, before Markdown headings, list items, quotes and table rows, and after headings.
A sentence longer than `max_tokens` is cut between words, and a word (a run of Chinese
characters, say) longer than that between characters. Each chunk is an exact slice of the
text (`start`, `end`), stripped of surrounding white space.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from lmforge.errors import LmforgeError

BOUNDARY = re.compile(r"""[.!?]+["')\]”’»]*\s+"""
                      r"""|[。！？；]+[”’」』）]*\s*"""
                      r"""|\n[ \t]*\n\s*"""
                      r"""|\n(?=[ \t]*(?:[#>*|-]|\d+[.)]\s))"""
                      r"""|^[ \t]*\#{1,6}[ \t][^\n]*\n""", re.MULTILINE)
WORD = re.compile(r"\S+\s*")


@dataclass
class Chunk:
    text: str
    start: int  # character offsets of the unstripped slice in the document's text
    end: int
    n_tokens: int


@dataclass
class _Unit:
    start: int
    end: int
    n_tokens: int


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence, its trailing white space included."""
    spans, prev = [], 0
    for m in BOUNDARY.finditer(text):
        if m.end() > prev:
            spans.append((prev, m.end()))
            prev = m.end()
    if prev < len(text):
        spans.append((prev, len(text)))
    return [(s, e) for s, e in spans if text[s:e].strip()]


def _units(text: str, start: int, end: int, count: Callable[[str], int], max_tokens: int,
           level: int = 0) -> list[_Unit]:
    """The span as one unit when it fits, else its words (level 1), else its characters."""
    n = count(text[start:end])
    if n <= max_tokens or level == 2:
        return [_Unit(start, end, n)]
    if level == 0:
        parts = [(start + m.start(), start + m.end()) for m in WORD.finditer(text[start:end])]
    else:
        parts = [(i, i + 1) for i in range(start, end)]
    return [u for s, e in parts for u in _units(text, s, e, count, max_tokens, level + 1)]


def chunk_text(text: str, count: Callable[[str], int], max_tokens: int = 200,
               overlap: int = 40) -> list[Chunk]:
    """Chunks of at most `max_tokens` tokens (by `count`), consecutive chunks sharing their
    boundary sentences up to `overlap` tokens."""
    if max_tokens < 1 or not 0 <= overlap < max_tokens:
        raise LmforgeError(f"chunk size {max_tokens} and overlap {overlap}: need a size of at "
                           "least 1 and 0 ≤ overlap < size")
    units = [u for s, e in sentence_spans(text)
             for u in _units(text, s, e, count, max_tokens)]
    chunks: list[Chunk] = []
    i = 0
    while i < len(units):
        j, total = i, 0
        while j < len(units) and (j == i or total + units[j].n_tokens <= max_tokens):
            total += units[j].n_tokens
            j += 1
        start, end = units[i].start, units[j - 1].end
        piece = text[start:end]
        chunks.append(Chunk(piece.strip(), start, end, total))
        if j == len(units):
            break
        # back off over whole units that fit the overlap, but always move past unit i
        k, back = j, 0
        while k - 1 > i and back + units[k - 1].n_tokens <= overlap:
            k -= 1
            back += units[k].n_tokens
        i = k
    return chunks
