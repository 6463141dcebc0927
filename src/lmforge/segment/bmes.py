"""Word segmentation as character tagging: B/M/E/S tags and their constrained decoding.

Each character of a segmented sentence gets one tag: B begins a word of two or more
characters, M is inside one, E ends one, S is a one-character word (Xue, 2003, "Chinese
Word Segmentation as Character Tagging").

    >>> tags_of(["研究", "生命", "的", "起源地"])
    'BEBESBME'
    >>> words_of("研究生命的起源地", "BEBESBME")
    ['研究', '生命', '的', '起源地']

A tagger scores each tag at each character; not every tag sequence is a segmentation (M
after S, a sentence that ends in B). `viterbi` finds the best sequence among the valid
ones: a sentence starts with B or S, ends with E or S, and

    B → M, E     M → M, E     E → B, S     S → B, S

so its output always decodes to words. With scores s_t(y) (log-probabilities) the best
path maximises Σ_t s_t(y_t) over valid y, by the recursion
δ_t(y) = s_t(y) + max_{y' → y} δ_{t-1}(y') (Viterbi, 1967).
"""

from __future__ import annotations

import torch

from lmforge.errors import LmforgeError

TAGS = "BMES"
B, M, E, S = range(4)
# ALLOWED[a, b]: tag b may follow tag a
ALLOWED = torch.tensor([[False, True, True, False],   # B → M, E
                        [False, True, True, False],   # M → M, E
                        [True, False, False, True],   # E → B, S
                        [True, False, False, True]])  # S → B, S
STARTS = torch.tensor([True, False, False, True])  # B or S
ENDS = torch.tensor([False, False, True, True])  # E or S


def tags_of(words: list[str]) -> str:
    """The B/M/E/S tag of every character of `words` (empty words are skipped)."""
    return "".join("S" if len(w) == 1 else "B" + "M" * (len(w) - 2) + "E" for w in words if w)


def words_of(text: str, tags: str) -> list[str]:
    """The words of `text` cut after every E or S tag; a well-formed sequence (`valid`)
    gives back the words `tags_of` was given."""
    if len(text) != len(tags):
        raise LmforgeError(f"{len(text)} characters but {len(tags)} tags")
    words, start = [], 0
    for i, tag in enumerate(tags):
        if tag in "ES" or i == len(tags) - 1:
            words.append(text[start:i + 1])
            start = i + 1
    return words


def valid(tags: str) -> bool:
    """Whether `tags` is a segmentation: valid start, transitions and end."""
    if not tags:
        return True
    ids = [TAGS.index(t) for t in tags]
    return bool(STARTS[ids[0]] and ENDS[ids[-1]]
                and all(ALLOWED[a, b] for a, b in zip(ids, ids[1:], strict=False)))


def viterbi(scores: torch.Tensor, lengths: torch.Tensor) -> list[str]:
    """The best valid tag string of each row of `scores` (N, T, 4) (log-probabilities, or
    any additive scores), row n being `lengths[n]` characters long (right padding)."""
    n, t, _ = scores.shape
    scores = scores.float()
    forbid = torch.tensor(float("-inf"))
    step = torch.where(ALLOWED, 0.0, forbid)  # (4, 4): from → to
    delta = torch.where(STARTS, scores[:, 0], forbid)  # (N, 4)
    back = torch.zeros(n, t, 4, dtype=torch.long)
    last = delta.clone()  # δ at each row's last character
    for i in range(1, t):
        cand = delta.unsqueeze(2) + step  # (N, from, to)
        best, back[:, i] = cand.max(dim=1)
        delta = best + scores[:, i]
        last = torch.where((lengths - 1 == i).unsqueeze(1), delta, last)
    end = torch.where(ENDS, last, forbid).argmax(dim=1)  # (N,)
    out = []
    for row in range(n):
        y, path = int(end[row]), []
        for i in range(int(lengths[row]) - 1, -1, -1):
            path.append(y)
            y = int(back[row, i, y])
        out.append("".join(TAGS[k] for k in reversed(path)))
    return out
