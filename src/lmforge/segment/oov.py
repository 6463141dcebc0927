"""Out-of-vocabulary recall: how many gold words missing from the training dictionary a
segmentation finds (the SIGHAN bakeoff's R_oov).

    R_oov = |{gold words w ∉ D whose span is a predicted word}| / |{gold words w ∉ D}|

over the lines that `score.SegmentScore` scores (lines whose characters differ are skipped).

    >>> r = oov_recall(["张三 去 北京"], ["张三 去 北 京"], {"去", "北京"})
    >>> r.correct, r.total, r.recall
    (1, 1, 1.0)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from lmforge.segment.dictionary import read_words
from lmforge.segment.score import read_lines, spans


@dataclass
class OovRecall:
    correct: int = 0
    total: int = 0

    @property
    def recall(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "recall": self.recall}


def oov_recall(gold: Iterable[str], pred: Iterable[str], words: set[str]) -> OovRecall:
    """R_oov of whitespace-segmented lines against the dictionary `words`."""
    out = OovRecall()
    for g, p in zip(gold, pred, strict=False):
        gw, pw = g.split(), p.split()
        if "".join(gw) != "".join(pw):
            continue
        predicted, start = spans(pw), 0
        for w in gw:
            if w not in words:
                out.total += 1
                out.correct += (start, start + len(w)) in predicted
            start += len(w)
    return out


def oov_recall_files(gold: str | Path, pred: str | Path, dictionary: str | Path) -> OovRecall:
    return oov_recall(read_lines(gold, "--gold"), read_lines(pred, "--pred"),
                      set(read_words(dictionary)))
