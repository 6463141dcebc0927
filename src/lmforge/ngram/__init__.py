"""N-gram language models: counting, add-k and (modified) Kneser-Ney smoothing as KenLM's
lmplz, ARPA files, scoring and sampling."""

from lmforge.ngram.arpa import read_arpa, write_arpa
from lmforge.ngram.model import CorpusScore, NgramModel, train

__all__ = ["CorpusScore", "NgramModel", "read_arpa", "train", "write_arpa"]
