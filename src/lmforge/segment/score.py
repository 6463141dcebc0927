"""Word-span precision, recall and F1 of a segmentation against a gold one (SIGHAN bakeoff).

A word is its character span (start, end) in its line with whitespace removed; a predicted
word is correct when the gold line has a word with the same span. Over all scored lines:

    P = correct / predicted words,  R = correct / gold words,  F1 = 2PR / (P + R)

    >>> s = score_lines(["研究 生命 起源"], ["研究生 命 起源"])
    >>> s.correct, s.gold_words, s.pred_words, round(s.f1, 4)
    (1, 3, 3, 0.3333)

A line pair whose characters differ (a truncated gold line, a segmenter that dropped a
character) has no common spans to compare: it is skipped, counted and its number kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import zip_longest
from pathlib import Path

from lmforge.errors import LmforgeError


def spans(words: list[str]) -> set[tuple[int, int]]:
    """The (start, end) character offsets of consecutive words."""
    out, start = set(), 0
    for w in words:
        out.add((start, start + len(w)))
        start += len(w)
    return out


@dataclass
class SegmentScore:
    correct: int = 0
    gold_words: int = 0
    pred_words: int = 0
    lines: int = 0
    skipped: int = 0
    skipped_lines: list[int] = field(default_factory=list)  # 1-based line numbers

    @property
    def precision(self) -> float:
        return self.correct / self.pred_words if self.pred_words else 0.0

    @property
    def recall(self) -> float:
        return self.correct / self.gold_words if self.gold_words else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def add(self, gold: list[str], pred: list[str]) -> bool:
        """Score one line pair; False (and counted as skipped) when its characters differ."""
        self.lines += 1
        if "".join(gold) != "".join(pred):
            self.skipped += 1
            self.skipped_lines.append(self.lines)
            return False
        self.correct += len(spans(gold) & spans(pred))
        self.gold_words += len(gold)
        self.pred_words += len(pred)
        return True

    def to_dict(self) -> dict:
        return {**asdict(self), "precision": self.precision, "recall": self.recall,
                "f1": self.f1}


def score_lines(gold: Iterable[str], pred: Iterable[str]) -> SegmentScore:
    """Score whitespace-segmented lines; the two sequences must have the same length."""
    score = SegmentScore()
    for n, (g, p) in enumerate(zip_longest(gold, pred), 1):
        if g is None or p is None:
            short = "gold" if g is None else "prediction"
            raise LmforgeError(f"the {short} has fewer lines than the other ({n - 1}); "
                               "score files segmented line for line from the same text")
        score.add(g.split(), p.split())
    return score


def read_lines(path: str | Path, what: str) -> Iterator[str]:
    """The lines of a UTF-8 file, with errors that name the file and the flag."""
    path = Path(path)
    if not path.is_file():
        raise LmforgeError(f"{what} {path}: no such file")
    with path.open(encoding="utf-8-sig") as f:
        try:
            yield from f
        except UnicodeDecodeError as exc:
            raise LmforgeError(f"{what} {path} is not UTF-8 text ({exc})") from None


def score_files(gold: str | Path, pred: str | Path) -> SegmentScore:
    """Score a predicted segmentation file against a gold one, line by line."""
    return score_lines(read_lines(gold, "--gold"), read_lines(pred, "--pred"))
