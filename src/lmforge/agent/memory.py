"""The agent's memories: documents to search, and a long-term memory it writes itself.

    search_passages(Retriever(store, "notes", embedder), "tower height", k=3)
    # '[1] paris.md: The tower is 324 metres tall.\n[2] ...'
    memory = LongTermMemory(VectorStore("memory.db"), embedder)
    memory.remember("The user's name is Ada.");  memory.recall("user's name")

- The search tool is the retrieval package's hybrid search (dense + BM25 fused by reciprocal
  rank, `rag/retrieve.py`) over a collection built by `lmforge index`; passages come back
  numbered with their source, one per line, in the layout of the training data
  (`agent/teach.py`'s `search_observation`), cut to PASSAGE_CHARS characters each.
- Long-term memory is a collection of the same schema in a Milvus Lite file: `remember` embeds
  a note and upserts it (its id is the note's hash, so saving it twice keeps one copy),
  `recall` is a dense search over the notes (the BM25 index on disk is built once and would
  not see notes added later).
- Short-term memory is the conversation itself, trimmed to the context window by
  `loop.LLMBrain.prompt`.
"""

from __future__ import annotations

import hashlib
import time

from lmforge.errors import LmforgeError
from lmforge.rag.embedder import Embedder
from lmforge.rag.store import TEXT_CHARS, Hit, VectorStore

PASSAGE_CHARS = 600
MAX_K = 10
MEMORY_COLLECTION = "agent_memory"


def format_passages(hits: list[Hit]) -> str:
    """Numbered passages with their sources: "[1] source: text"."""
    lines = []
    for n, h in enumerate(hits, 1):
        text = " ".join(h.text.split())
        lines.append(f"[{n}] {h.source}: " + (text if len(text) <= PASSAGE_CHARS
                                                else text[:PASSAGE_CHARS] + " …"))
    return "\n".join(lines)


def search_passages(retriever, query: str, k: int = 3) -> str:
    """The search tool: the k best passages of the document collection (hybrid retrieval)."""
    if not 1 <= k <= MAX_K:
        raise LmforgeError(f"k must be between 1 and {MAX_K}, got {k}")
    hits = retriever.search(query, k, "hybrid")
    return format_passages(hits) if hits else "no passage matches the query"


class LongTermMemory:
    """Notes the agent saves and searches, one vector collection."""

    def __init__(self, store: VectorStore, embedder: Embedder,
                 collection: str = MEMORY_COLLECTION) -> None:
        self.store, self.embedder, self.collection = store, embedder, collection
        if not store.has(collection):
            store.create(collection, embedder.dim, embedder.name)
        store.open(collection, embedder.dim)

    def remember(self, text: str) -> str:
        text = text.strip()
        if not text:
            raise LmforgeError("the note is empty; give the text to remember")
        if len(text) > TEXT_CHARS:
            raise LmforgeError(f"the note has {len(text):,} characters; at most {TEXT_CHARS:,}")
        digest = hashlib.sha256(text.encode()).hexdigest()
        row = {"id": digest[:32], "text": text, "source": "memory",
               "position": int(time.time()), "content_hash": digest,
               "metadata": {"saved": time.strftime("%Y-%m-%d %H:%M:%S")},
               "vector": self.embedder.embed([text])[0].tolist()}
        self.store.upsert(self.collection, [row])
        return "saved to long-term memory"

    def recall(self, query: str, k: int = 3) -> str:
        if not query.strip():
            raise LmforgeError("the query is empty; say what to look for")
        vector = self.embedder.embed_query(query)
        hits = self.store.search(self.collection, vector, k)[0]
        return format_passages(hits) if hits else "long-term memory holds no notes yet"
