"""Special ids of the non-causal objectives, and line/document boundaries of a token stream.

Special tokens. A prepared data directory keeps its tokenizer as it is; the objectives that
need [PAD], [CLS], [SEP], [MASK] or T5's sentinels `<extra_id_k>` (k = 0…99) take them
from the tokenizer when it has a token of that name, and otherwise reserve the next free ids
after the tokenizer's vocabulary, in the fixed order

    [PAD] [CLS] [SEP] [MASK] <extra_id_0> … <extra_id_99>

so the ids follow from the tokenizer alone (`fill_masks` finds [MASK] the same way) and the
model's vocabulary is the tokenizer's plus the reserved ids. Unlike T5, <extra_id_0> is
the lowest reserved sentinel id, not the highest id of the vocabulary.

Lines and documents. Next-sentence prediction needs sentence pairs and documents; BART's
sentence permutation needs sentences. Both are read from the token stream itself, so every
data directory `lmforge prepare` ever wrote works unchanged: a line ends at a token whose
text holds a newline, and a blank line (or a token holding two newlines) separates two
documents, the layout of Tiny Shakespeare's speeches and of plain-text corpora in general.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.tokenizers import Tokenizer

RESERVED = ("[PAD]", "[CLS]", "[SEP]", "[MASK]")
N_SENTINELS = 100


@dataclass(frozen=True)
class Specials:
    """Ids of the objectives' special tokens; `n_text`: ids below it are the tokenizer's."""

    pad: int
    cls: int
    sep: int
    mask: int
    sentinels: tuple[int, ...]
    n_text: int

    @property
    def vocab_size(self) -> int:
        """The model vocabulary that holds the text tokens and every reserved id."""
        return max(self.n_text, self.pad, self.cls, self.sep, self.mask, *self.sentinels) + 1


def specials_for(tokenizer: Tokenizer) -> Specials:
    """The tokenizer's own [PAD] … <extra_id_99> where it has them, else reserved ids."""
    next_id = tokenizer.vocab_size
    ids = []
    for name in (*RESERVED, *(f"<extra_id_{k}>" for k in range(N_SENTINELS))):
        found = tokenizer.token_to_id(name)
        if found is None:
            found, next_id = next_id, next_id + 1
        ids.append(found)
    return Specials(*ids[:4], tuple(ids[4:]), tokenizer.vocab_size)


def newline_counts(tokenizer: Tokenizer, n_ids: int) -> tuple[np.ndarray, np.ndarray]:
    """Per id below `n_ids`: how many newlines its text holds, and whether it is blank."""
    texts = [tokenizer.decode([i]) if i < tokenizer.vocab_size else "x" for i in range(n_ids)]
    return (np.array([t.count("\n") for t in texts], dtype=np.int64),
            np.array([not t.strip() for t in texts], dtype=bool))


@dataclass
class Lines:
    """Non-blank lines of a token stream: token `start`/`end` (end exclusive, the newline
    included) and the document each belongs to (documents are numbered in order)."""

    start: np.ndarray
    end: np.ndarray
    doc: np.ndarray

    def __len__(self) -> int:
        return len(self.start)


def line_index(tokens: np.ndarray, newlines: np.ndarray, blank: np.ndarray) -> Lines:
    """Split `tokens` at newline tokens; a blank line or a double newline starts a document."""
    nl = newlines[np.asarray(tokens)]
    ends = np.flatnonzero(nl > 0) + 1
    if len(ends) == 0 or ends[-1] != len(tokens):
        ends = np.append(ends, len(tokens))
    starts = np.concatenate([[0], ends[:-1]])
    content = np.add.reduceat(~blank[np.asarray(tokens)], starts) > 0
    # a document starts after a blank line, or after a line ended by two newlines
    breaks = ~content | (nl[ends - 1] >= 2)
    doc = np.concatenate([[0], np.cumsum(breaks)[:-1]])
    return Lines(starts[content], ends[content], doc[content])


def require_pairs(lines: Lines) -> np.ndarray:
    """Indices of lines followed by another line of the same document (where an A segment
    can start with a true next segment after it)."""
    first = np.flatnonzero(lines.doc[1:] == lines.doc[:-1])
    if len(first) == 0 or lines.doc[-1] == lines.doc[0]:
        raise LmforgeError("next-sentence prediction needs at least two documents of two or "
                           "more lines (documents are separated by blank lines); this data "
                           "has none, so use train.nsp = false")
    return first
