"""Indexing: documents → chunks → vectors → the collection, incrementally by content hash.

    >>> store = VectorStore("rag.db")
    >>> report = index_inputs(store, "notes", ["docs/"], load_embedder("minilm"))
    >>> report           # IndexReport(added=12, replaced=0, unchanged=0, removed=0, chunks=87)

Every input is read and checked before the first write (`documents`), so a bad file leaves
the collection as it was. Then, per source (a path relative to the root):

- unchanged: every chunk of its current content hash (and chunking) is already stored → skip;
- new or changed (content, or chunk settings): chunk, embed in batches (a progress bar),
  upsert, and only then delete its other rows, so a search never finds the source missing;
- deleted: a source stored under one of the input directories whose file is gone → removed.

A chunk's id is a hash of (source, position, content hash, chunking): an interrupted run that
is started again upserts the same ids (no duplicates), and a source counts as unchanged only
when all `n_chunks` rows of its version are there, so the half-written one is completed.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.rag.chunking import chunk_text
from lmforge.rag.documents import MAX_BYTES, Document, read_document, resolve_inputs
from lmforge.rag.embedder import Embedder
from lmforge.rag.store import TEXT_CHARS, VectorStore, choose_index

EMBED_BATCH = 64  # chunks per upsert: one progress step, one Milvus call


@dataclass
class IndexReport:
    added: int = 0
    replaced: int = 0
    unchanged: int = 0
    removed: int = 0
    chunks: int = 0  # chunks embedded and written by this run


@dataclass
class _Pending:
    doc: Document
    rows: list[dict[str, Any]]
    written: int = 0


def chunk_id(source: str, position: int, content_hash: str, chunking: str) -> str:
    key = "\0".join([source, str(position), content_hash, chunking])
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def quote(text: str) -> str:
    """A Milvus string literal (JSON's escaping of quotes and backslashes)."""
    return json.dumps(text, ensure_ascii=False)


def in_scope(source: str, scopes: list[str]) -> bool:
    return any(source == s or ((s == "" or s.endswith("/")) and source.startswith(s))
               for s in scopes)


def stored_versions(store: VectorStore, collection: str
                    ) -> dict[str, dict[tuple[str, str], tuple[int, int]]]:
    """source → {(content hash, chunking): (rows stored, rows expected)}."""
    out: dict[str, dict[tuple[str, str], list[int]]] = defaultdict(dict)
    for row in store.query(collection, "", ["source", "content_hash", "metadata"]):
        meta = row.get("metadata") or {}
        key = (row["content_hash"], meta.get("chunking", ""))
        have = out[row["source"]].setdefault(key, [0, int(meta.get("n_chunks", 0))])
        have[0] += 1
    return {s: {k: (v[0], v[1]) for k, v in d.items()} for s, d in out.items()}


def chunking_key(embedder: Embedder, max_tokens: int, overlap: int) -> str:
    """What makes a source's chunks and vectors: another key re-indexes the source."""
    return f"{embedder.name}/{max_tokens}/{overlap}"


def _rows(doc: Document, embedder: Embedder, max_tokens: int, overlap: int
          ) -> list[dict[str, Any]]:
    chunking = chunking_key(embedder, max_tokens, overlap)
    chunks = chunk_text(doc.text, embedder.count_tokens, max_tokens, overlap)
    for c in chunks:
        if len(c.text) > TEXT_CHARS:  # a long run the tokenizer reads as one [UNK] token
            raise LmforgeError(f"{doc.source}: a chunk of {len(c.text):,} characters at offset "
                               f"{c.start} (text without spaces, such as base64); a chunk "
                               f"holds at most {TEXT_CHARS:,}: remove that text")
    return [{"id": chunk_id(doc.source, i, doc.content_hash, chunking), "text": c.text,
             "source": doc.source, "position": i, "content_hash": doc.content_hash,
             "metadata": {"title": doc.title, "kind": doc.kind, "n_chunks": len(chunks),
                          "chunking": chunking, "start": c.start, "end": c.end}}
            for i, c in enumerate(chunks)]


def index_inputs(store: VectorStore, collection: str, inputs: list[str], embedder: Embedder,
                 root: str | Path = ".", max_tokens: int = 200, overlap: int = 40,
                 index_type: str = "auto", metric: str = "COSINE",
                 max_bytes: int = MAX_BYTES, progress: bool = True) -> IndexReport:
    """Bring `collection` up to date with the files under `inputs` (see the module doc)."""
    files, scopes = resolve_inputs(inputs, root)
    docs = [read_document(f, max_bytes) for f in files]
    max_tokens = min(max_tokens, embedder.max_tokens)
    exists = store.has(collection)
    if exists:
        store.open(collection, embedder.dim)
    stored = stored_versions(store, collection) if exists else {}
    report = IndexReport()
    chunking = chunking_key(embedder, max_tokens, overlap)
    pending: list[_Pending] = []
    for doc in docs:
        versions = stored.get(doc.source, {})
        have, want = versions.get((doc.content_hash, chunking), (0, -1))
        if have == want and len(versions) == 1:
            report.unchanged += 1
            continue
        pending.append(_Pending(doc, _rows(doc, embedder, max_tokens, overlap)))
        if versions:
            report.replaced += 1
        else:
            report.added += 1
    if not exists:
        n_rows = sum(len(p.rows) for p in pending)
        store.create(collection, embedder.dim, embedder.name, metric,
                     choose_index(n_rows) if index_type == "auto" else index_type)
        store.open(collection, embedder.dim)
    report.chunks = _write(store, collection, embedder, pending, progress)
    gone = [s for s in stored if s not in {d.source for d in docs} and in_scope(s, scopes)]
    for source in gone:
        store.delete(collection, f"source == {quote(source)}")
    report.removed = len(gone)
    if report.chunks or gone:
        store.flush(collection)
    return report


def _write(store: VectorStore, collection: str, embedder: Embedder, pending: list[_Pending],
           progress: bool) -> int:
    """Embed and upsert the pending chunks in batches; once a source's chunks are all in,
    delete its other versions. Returns the number of chunks written."""
    from tqdm import tqdm

    queue = [(p, row) for p in pending for row in p.rows]
    with tqdm(total=len(queue), unit="chunk", desc="embed", file=sys.stderr,
              disable=not progress) as bar:
        for start in range(0, len(queue), EMBED_BATCH):
            batch = queue[start: start + EMBED_BATCH]
            vectors = embedder.embed([row["text"] for _, row in batch])
            store.upsert(collection, [{**row, "vector": v.tolist()}
                                      for (_, row), v in zip(batch, vectors, strict=True)])
            for p, _ in batch:
                p.written += 1
                if p.written == len(p.rows):
                    ids = ", ".join(quote(r["id"]) for r in p.rows)
                    store.delete(collection,
                                 f"source == {quote(p.doc.source)} and id not in [{ids}]")
            bar.update(len(batch))
    return len(queue)
