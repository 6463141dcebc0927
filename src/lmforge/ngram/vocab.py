"""Word vocabulary of an n-gram model and reading sentences from text.

One sentence per line, words separated by whitespace. Ids follow KenLM's lmplz: 0 is
`<unk>`, 1 is `<s>`, 2 is `</s>`, then words in order of first appearance.

Two vocabularies:

- open (default): the words seen at least `min_count` times; rarer words become `<unk>`.
  The text may not contain `<s>`, `</s>` or `<unk>` (as lmplz refuses them), since their
  meaning would be ambiguous.
- closed: every word of the text, taken as it is. `<unk>` may appear in the text and is then
  an ordinary word that the model learns (Penn Treebank's preprocessed text is such a text);
  `<s>` and `</s>` are still refused.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.io import read_text

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2


def read_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file (gzip when it ends in .gz), without line ends."""
    return read_text(path).splitlines()


def tokenize(lines: Iterable[str]) -> list[list[str]]:
    """Split each line on whitespace; an empty line is an empty sentence (as in lmplz)."""
    return [line.split() for line in lines]


class Vocabulary:
    """Maps words to ids and back; `<unk>`, `<s>`, `</s>` are always ids 0, 1, 2."""

    def __init__(self, words: Iterable[str] = ()) -> None:
        self.words: list[str] = [UNK, BOS, EOS]
        self.ids: dict[str, int] = {UNK: UNK_ID, BOS: BOS_ID, EOS: EOS_ID}
        for w in words:
            self.add(w)

    def add(self, word: str) -> int:
        idx = self.ids.get(word)
        if idx is None:
            idx = self.ids[word] = len(self.words)
            self.words.append(word)
        return idx

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.ids

    def encode(self, sentence: list[str]) -> list[int]:
        """Word ids of one sentence; words outside the vocabulary become `<unk>` (0)."""
        get = self.ids.get
        return [get(w, UNK_ID) for w in sentence]


def check_specials(sentences: list[list[str]], closed: bool) -> None:
    refused = {BOS, EOS} if closed else {BOS, EOS, UNK}
    for i, sentence in enumerate(sentences):
        bad = refused.intersection(sentence)
        if bad:
            hint = ("" if closed else "; if the text already maps rare words to <unk> "
                    "(like Penn Treebank), train with --closed-vocab")
            raise LmforgeError(f"line {i + 1} contains {sorted(bad)[0]}, a reserved symbol: "
                               f"remove it{hint}")


def build_vocabulary(sentences: list[list[str]], min_count: int = 1,
                     closed: bool = False) -> Vocabulary:
    """Vocabulary of a training text: all words (closed) or those seen ≥ min_count times."""
    if min_count < 1:
        raise LmforgeError(f"--min-count must be at least 1, got {min_count}")
    if closed and min_count > 1:
        raise LmforgeError("a closed vocabulary takes every word as it is: drop --min-count "
                           "or --closed-vocab")
    check_specials(sentences, closed)
    counts = Counter(w for s in sentences for w in s)
    return Vocabulary(w for w in _first_appearance(sentences) if counts[w] >= min_count)


def _first_appearance(sentences: list[list[str]]) -> Iterator[str]:
    seen: set[str] = set()
    for s in sentences:
        for w in s:
            if w not in seen:
                seen.add(w)
                yield w
