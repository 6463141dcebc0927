"""Retrieval: dense (Milvus), BM25 keywords, hybrid by reciprocal rank fusion, MMR.

    >>> r = Retriever(VectorStore("rag.db"), "notes", load_embedder("minilm"))
    >>> r.search("who built the tower?", k=5)                     # hybrid, the default
    >>> r.search("who built the tower?", k=5, mode="dense", mmr=0.7, filter='source like "a/%"')

- dense: the query's vector (with the embedder's query prefix) against the chunks' vectors,
  cosine similarity, exact on a FLAT index.
- bm25: `bm25.BM25Index`, the same filter applied as a mask over the collection's chunks.
- hybrid: reciprocal rank fusion (Cormack, Clarke & Büttcher, 2009): each chunk scores
  Σ_lists 1/(RRF_K + rank), rank counted from 1 in each list's top `depth`, RRF_K = 60. Ranks,
  not scores, are fused, so the two scales (cosine, BM25) need no calibration.
- MMR (Carbonell & Goldstein, 1998): from a larger candidate list, pick one at a time the chunk
  maximising λ·cos(q, d) − (1 − λ)·max_{s picked} cos(d, s), so near-duplicates (overlapping
  chunks, copies of a file) give way to passages that add something.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.rag.bm25 import BM25Index, bm25_dir, load_or_build
from lmforge.rag.embedder import Embedder
from lmforge.rag.store import PASSAGE_FIELDS, Hit, VectorStore

MODES = ("dense", "bm25", "hybrid")
RRF_K = 60
FUSION_DEPTH = 50  # candidates taken from each list before fusing
MMR_POOL = 4  # MMR picks k out of MMR_POOL·k candidates


def rrf(rankings: list[list[str]], k: int = RRF_K) -> list[tuple[str, float]]:
    """Ids by fused score Σ 1/(k + rank), best first (ties: first seen first)."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, x in enumerate(ranking, 1):
            scores[x] = scores.get(x, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda item: -item[1])


def mmr(query: np.ndarray, vectors: np.ndarray, k: int, lam: float) -> list[int]:
    """Indices of `vectors` (unit rows) picked by maximal marginal relevance, in pick order."""
    relevance = vectors @ query
    picked: list[int] = []
    redundancy = np.full(len(vectors), -np.inf)
    for _ in range(min(k, len(vectors))):
        gain = lam * relevance - (1 - lam) * (redundancy if picked else 0.0)
        gain[picked] = -np.inf
        best = int(np.argmax(gain))
        picked.append(best)
        redundancy = np.maximum(redundancy, vectors @ vectors[best])
    return picked


class Retriever:
    """Searches one collection; the BM25 index is loaded (or rebuilt) on first keyword use."""

    def __init__(self, store: VectorStore, collection: str, embedder: Embedder,
                 bm25_path: str | Path | None = None, zh_dict: str | None = None) -> None:
        store.open(collection, embedder.dim)
        self.store = store
        self.collection = collection
        self.embedder = embedder
        self.bm25_path = Path(bm25_path) if bm25_path else bm25_dir(store.db, collection)
        self.zh_dict = zh_dict
        self._bm25: BM25Index | None = None

    @property
    def bm25_index(self) -> BM25Index:
        if self._bm25 is None:
            self._bm25 = load_or_build(self.store, self.collection, self.bm25_path,
                                       self.zh_dict)
        return self._bm25

    def dense(self, query: str, k: int, filter: str = "") -> list[Hit]:
        vector = self.embedder.embed_query(query)
        return self.store.search(self.collection, vector, k, filter)[0]

    def _bm25_ids(self, query: str, k: int, filter: str) -> list[tuple[str, float]]:
        allowed = None
        if filter:
            allowed = {r["id"] for r in self.store.query(self.collection, filter, ["id"])}
        return self.bm25_index.search(query, k, allowed)

    def _hits(self, scored: list[tuple[str, float]]) -> list[Hit]:
        """The passages of (id, score) pairs in one Milvus round trip; a chunk deleted since
        the BM25 index was built is skipped, not shown."""
        rows = self.store.get(self.collection, [x for x, _ in scored], ["id", *PASSAGE_FIELDS])
        return [Hit.from_row(rows[x], s) for x, s in scored if x in rows]

    def bm25(self, query: str, k: int, filter: str = "") -> list[Hit]:
        return self._hits(self._bm25_ids(query, k, filter))

    def hybrid(self, query: str, k: int, filter: str = "", depth: int = FUSION_DEPTH
               ) -> list[Hit]:
        """Both lists as ids only, fused, then the texts of the k kept (not of 2·depth)."""
        depth = max(depth, k)
        vector = self.embedder.embed_query(query)
        dense = self.store.search(self.collection, vector, depth, filter, ["id"])[0]
        keyword = self._bm25_ids(query, depth, filter)
        return self._hits(rrf([[h.id for h in dense], [x for x, _ in keyword]])[:k])

    def search(self, query: str, k: int = 5, mode: str = "hybrid", filter: str = "",
               mmr_lambda: float | None = None) -> list[Hit]:
        """The k best chunks for `query`, best first; `mmr_lambda` in [0, 1] re-ranks
        MMR_POOL·k candidates for diversity (1 = relevance only)."""
        if mode not in MODES:
            raise LmforgeError(f"--mode {mode}: choose one of {', '.join(MODES)}")
        if not query.strip():
            raise LmforgeError("the query is empty; give a question or keywords")
        run = {"dense": self.dense, "bm25": self.bm25, "hybrid": self.hybrid}[mode]
        if mmr_lambda is None:
            return run(query, k, filter)
        if not 0.0 <= mmr_lambda <= 1.0:
            raise LmforgeError(f"--mmr {mmr_lambda}: λ must lie in [0, 1]")
        pool = run(query, MMR_POOL * k, filter)
        if not pool:
            return []
        rows = self.store.get(self.collection, [h.id for h in pool], ["id", "vector"])
        vectors = np.array([rows[h.id]["vector"] for h in pool], dtype=np.float32)
        order = mmr(self.embedder.embed_query(query), vectors, k, mmr_lambda)
        return [pool[i] for i in order]
