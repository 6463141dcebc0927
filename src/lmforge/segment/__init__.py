"""Dictionary-based Chinese word segmentation: forward, backward and bidirectional maximum
matching over a character trie, and SIGHAN word-span P/R/F1 scoring.

    >>> from lmforge.segment import Dictionary, segment
    >>> segment("研究生命起源", Dictionary(["研究", "研究生", "生命", "起源"]), "bimm")
    ['研究', '生命', '起源']
"""

from lmforge.segment.dictionary import Dictionary
from lmforge.segment.maxmatch import bimm, bmm, fmm, segment, segment_lines
from lmforge.segment.score import SegmentScore, score_files, score_lines

__all__ = ["Dictionary", "SegmentScore", "bimm", "bmm", "fmm", "score_files", "score_lines",
           "segment", "segment_lines"]
