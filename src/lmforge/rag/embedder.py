"""An lmforge encoder as the retriever's text → vector function (`lmforge.embed`).

    >>> e = load_embedder("minilm")
    >>> e.embed(["a passage", "another"]).shape    # (2, 384), unit rows, float32
    >>> e.embed_query("what is a passage?")        # the query prefix, if any, put in front

`query_prefix` is the instruction some retrieval encoders were trained with for the query
side only (E5's "query: ", BGE's "Represent this sentence for searching relevant passages: ");
all-MiniLM-L6-v2 has none, so it is empty by default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from lmforge.embed import embed
from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    from lmforge.api import LoadedModel


class Embedder:
    """Unit-length sentence vectors from an encoder, and its tokenizer's token count."""

    def __init__(self, lm: LoadedModel, name: str, query_prefix: str = "",
                 batch_size: int = 32) -> None:
        if lm.config.causal:
            raise LmforgeError(f"--embed-model {name} is a {lm.config.family}; retrieval "
                               "embeddings need an encoder such as minilm")
        self.lm = lm
        self.name = name
        self.query_prefix = query_prefix
        self.batch_size = batch_size
        self.dim = lm.config.d_model
        self.max_tokens = lm.config.max_seq_len - 2  # room for [CLS] and [SEP]
        # the last query's vector: retrieval then the relevance gate embed the same question
        self._last: tuple[str, np.ndarray] = ("", np.zeros(0, dtype=np.float32))

    def count_tokens(self, text: str) -> int:
        return len(self.lm.tokenizer.encode(text, parse_special=False))

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32, each row of unit length."""
        return embed(self.lm, texts, batch_size=self.batch_size).numpy()

    def embed_query(self, query: str) -> np.ndarray:
        """The query's vector (prefixed); the last one is kept, read-only, for a repeat."""
        text, vector = self._last
        if text != query or not vector.size:
            vector = self.embed([self.query_prefix + query])[0]
            vector.flags.writeable = False
            self._last = (query, vector)
        return vector


def load_embedder(name: str = "minilm", dtype: str = "fp32", query_prefix: str = "",
                  batch_size: int = 32) -> Embedder:
    from lmforge.api import load

    return Embedder(load(name, dtype=dtype), name, query_prefix, batch_size)
