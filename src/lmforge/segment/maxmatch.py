"""Maximum matching word segmentation: forward (FMM), backward (BMM) and bidirectional (BiMM).

    >>> d = Dictionary(["研究", "研究生", "生命", "起源"])
    >>> fmm("研究生命起源", d), bmm("研究生命起源", d), bimm("研究生命起源", d)
    (['研究生', '命', '起源'], ['研究', '生命', '起源'], ['研究', '生命', '起源'])

FMM takes, from the left, the longest dictionary word that starts at the current position,
or one character when none does (left-to-right maximum matching with the training word list
is the baseline of the SIGHAN bakeoffs, Emerson 2005); BMM does the same from the right with
the longest word that ends there. BiMM runs both and keeps the result with, in order, fewer
words, fewer single-character words, fewer out-of-dictionary words, and otherwise BMM (the
conventional preference; on the MSR test set FMM wins more of those ties, see
docs/segmentation.md).

Whitespace is a separator, never part of a word: `segment` matches each whitespace-free run
of the line on its own, so `"".join(segment(line, d)) == "".join(line.split())`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from lmforge.errors import LmforgeError
from lmforge.segment.dictionary import END, Dictionary


def fmm(text: str, dictionary: Dictionary) -> list[str]:
    """Forward maximum matching of `text` (any characters; none are dropped or changed)."""
    root = dictionary.forward
    words = []
    i, n = 0, len(text)
    while i < n:
        # walk the trie as far as the text allows; `end` is the last word end seen
        node, j, end = root, i, i + 1
        while j < n:
            node = node.get(text[j])
            if node is None:
                break
            j += 1
            if END in node:
                end = j
        words.append(text[i:end])
        i = end
    return words


def bmm(text: str, dictionary: Dictionary) -> list[str]:
    """Backward maximum matching: the mirror of `fmm`, over the trie of reversed words."""
    root = dictionary.backward
    words = []
    j = len(text)
    while j > 0:
        node, k, start = root, j, j - 1
        while k > 0:
            node = node.get(text[k - 1])
            if node is None:
                break
            k -= 1
            if END in node:
                start = k
        words.append(text[start:j])
        j = start
    words.reverse()
    return words


def bimm_cost(words: list[str], dictionary: Dictionary) -> tuple[int, int, int]:
    """(words, single-character words, out-of-dictionary words): BiMM keeps the smaller.

    Only single characters can be out of the dictionary: a longer word is always a match."""
    singles = [w for w in words if len(w) == 1]
    unknown = [w for w in singles if w not in dictionary.words]
    return len(words), len(singles), len(unknown)


def bimm(text: str, dictionary: Dictionary) -> list[str]:
    """Bidirectional maximum matching: FMM or BMM by `bimm_cost`, BMM on a tie."""
    forward, backward = fmm(text, dictionary), bmm(text, dictionary)
    if len(forward) != len(backward):  # the first rule decides without counting the rest
        return forward if len(forward) < len(backward) else backward
    if forward == backward:
        return backward
    if bimm_cost(forward, dictionary) < bimm_cost(backward, dictionary):
        return forward
    return backward


MODES: dict[str, Callable[[str, Dictionary], list[str]]] = {"fmm": fmm, "bmm": bmm,
                                                             "bimm": bimm}


def matcher(mode: str) -> Callable[[str, Dictionary], list[str]]:
    """The segmentation function of a mode name (`fmm`, `bmm` or `bimm`)."""
    try:
        return MODES[mode]
    except KeyError:
        raise LmforgeError(f"unknown segmentation mode {mode!r}; use one of "
                           f"{', '.join(MODES)}") from None


def segment(line: str, dictionary: Dictionary, mode: str = "fmm") -> list[str]:
    """The words of `line`: each whitespace-separated run segmented by `mode`."""
    return _words(line, dictionary, matcher(mode))


def segment_lines(lines: Iterable[str], dictionary: Dictionary,
                  mode: str = "fmm") -> Iterator[str]:
    """One output line per input line: its words joined by single spaces (no newline)."""
    match = matcher(mode)
    for line in lines:
        yield " ".join(_words(line, dictionary, match))


def _words(line: str, dictionary: Dictionary,
           match: Callable[[str, Dictionary], list[str]]) -> list[str]:
    words: list[str] = []
    for run in line.split():
        words += match(run, dictionary)
    return words
