"""The vector store: one Milvus collection of chunks, through `pymilvus`'s `MilvusClient`.

    >>> store = VectorStore("rag.db")                      # Milvus Lite: embedded, one file
    >>> store = VectorStore("http://host:19530", token="root:Milvus")   # a Milvus server
    >>> store.create("notes", dim=384)
    >>> store.search("notes", vectors, k=5, filter='source like "docs/%"')

Design choices:
- One schema for every collection (`FIELDS`): id (primary, derived from source + position +
  content hash by `index.chunk_id`, so a re-run upserts instead of duplicating), the vector,
  the chunk's text, its source path, its position in the source, the source's content hash
  and a JSON metadata object (title, number of chunks of the source, …). Filters are Milvus
  boolean expressions over these fields (`source == "a.md"`, `metadata["kind"] == "pdf"`).
- COSINE by default (the embedder's vectors have unit length, so IP ranks the same). The
  index type follows the size: FLAT (exact brute force) below `FLAT_ROWS`, HNSW above; both,
  and IVF_FLAT, exist in Milvus Lite and on a server.
- The embedding model and dimension are recorded in the collection's properties; a writer or
  reader with another dimension is refused before it touches a row.
- Milvus Lite keeps a collection "released" after the process that wrote it exits: `open`
  loads it before searching.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.errors import LmforgeError, excerpt

FLAT_ROWS = 100_000  # brute force over 100k × 384 fp32 is a few milliseconds of matmul
INDEX_TYPES = ("FLAT", "IVF_FLAT", "HNSW")
METRICS = ("COSINE", "IP")
BUILD_PARAMS: dict[str, dict[str, int]] = {"FLAT": {}, "IVF_FLAT": {"nlist": 128},
                                           "HNSW": {"M": 16, "efConstruction": 200}}
TEXT_CHARS = 65_535  # Milvus's VARCHAR limit
SOURCE_CHARS = 4_096
FIELDS = ("id", "vector", "text", "source", "position", "content_hash", "metadata")
PASSAGE_FIELDS = ["text", "source", "position", "content_hash", "metadata"]
PROPERTY_MODEL = "lmforge.embed_model"
CONNECT_TIMEOUT_S = 120  # pymilvus waits 10 s; Milvus Lite can take longer on a busy CPU


@dataclass
class Hit:
    """One retrieved chunk: its id, a score (higher is better) and its stored fields."""

    id: str
    score: float
    text: str = ""
    source: str = ""
    position: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: dict[str, Any], score: float) -> Hit:
        return cls(id=row["id"], score=float(score), text=row.get("text", ""),
                   source=row.get("source", ""), position=int(row.get("position", 0)),
                   metadata=row.get("metadata") or {})


def is_uri(db: str) -> bool:
    return db.startswith(("http://", "https://", "tcp://", "grpc://"))


def choose_index(n_rows: int) -> str:
    """FLAT (exact) for small collections, HNSW (approximate, sub-linear) for large ones."""
    return "FLAT" if n_rows < FLAT_ROWS else "HNSW"


def search_params(index_type: str, k: int) -> dict[str, Any]:
    if index_type == "IVF_FLAT":
        return {"nprobe": 16}
    if index_type == "HNSW":
        return {"ef": max(64, k)}
    return {}


class VectorStore:
    """A Milvus database: a local Milvus Lite file (`*.db`) or a server URI (+ token)."""

    def __init__(self, db: str, token: str = "") -> None:
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException

        # pymilvus logs every failed call with a traceback; the errors reach the user as
        # LmforgeError messages instead (Milvus Lite keeps its database in a directory)
        logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
        self.db = db
        if not is_uri(db):
            path = Path(db)
            if path.suffix != ".db":
                raise LmforgeError(f"--db {db}: a Milvus Lite database is a file ending in .db "
                                   "(e.g. rag.db), or give a server URI http://HOST:19530")
            path.parent.mkdir(parents=True, exist_ok=True)
            # Milvus Lite serves in-process over gRPC and logs the probes of methods it
            # lacks (the query iterator's AllocTimestamp) as server errors; it falls back
            logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
        try:
            self.client = MilvusClient(db, token=token, timeout=CONNECT_TIMEOUT_S)
        except MilvusException as exc:
            raise LmforgeError(f"cannot open the Milvus database {db}: {exc.message}") from None
        self._index: dict[str, str] = {}  # per collection, asked once: searches need them
        self._dim: dict[str, int] = {}

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has(self, collection: str) -> bool:
        return self.client.has_collection(collection)

    def create(self, collection: str, dim: int, embed_model: str = "", metric: str = "COSINE",
               index_type: str = "FLAT") -> None:
        """A new, empty collection with lmforge's chunk schema and a vector index."""
        from pymilvus import DataType, MilvusClient

        if metric not in METRICS:
            raise LmforgeError(f"metric {metric!r}: choose one of {', '.join(METRICS)}")
        if index_type not in INDEX_TYPES:
            raise LmforgeError(f"index type {index_type!r}: choose one of "
                               f"{', '.join(INDEX_TYPES)}")
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("text", DataType.VARCHAR, max_length=TEXT_CHARS)
        schema.add_field("source", DataType.VARCHAR, max_length=SOURCE_CHARS)
        schema.add_field("position", DataType.INT64)
        schema.add_field("content_hash", DataType.VARCHAR, max_length=64)
        schema.add_field("metadata", DataType.JSON)
        params = self.client.prepare_index_params()
        params.add_index("vector", index_type=index_type, metric_type=metric,
                         params=BUILD_PARAMS[index_type])
        self._call(self.client.create_collection, collection, schema=schema,
                   index_params=params, properties={PROPERTY_MODEL: embed_model})

    def open(self, collection: str, dim: int | None = None) -> None:
        """Load `collection` for searching; a `dim` other than its vectors' is refused."""
        if not self.has(collection):
            names = self.client.list_collections()
            raise LmforgeError(f"no collection {collection!r} in {self.db} (it holds: "
                               f"{', '.join(names) or 'none'}); create it with `lmforge index "
                               f"--db {self.db} --collection {collection} FILES…`")
        have = self.dimension(collection)
        if dim is not None and dim != have:
            raise LmforgeError(
                f"collection {collection!r} holds {have}-dimensional vectors but the embedding "
                f"model gives {dim}; use the model it was built with "
                f"({self.embed_model(collection) or 'unknown'}) or another --collection")
        self._call(self.client.load_collection, collection)

    def _describe(self, collection: str) -> dict[str, Any]:
        return self._call(self.client.describe_collection, collection)

    def dimension(self, collection: str) -> int:
        if collection in self._dim:
            return self._dim[collection]
        for f in self._describe(collection)["fields"]:
            if f["name"] == "vector":
                self._dim[collection] = int(f["params"]["dim"])
                return self._dim[collection]
        raise LmforgeError(f"collection {collection!r} has no 'vector' field: it was not made "
                           "by lmforge index; choose another --collection")

    def embed_model(self, collection: str) -> str:
        return self._describe(collection).get("properties", {}).get(PROPERTY_MODEL, "")

    def index_type(self, collection: str) -> str:
        if collection not in self._index:
            info = self._call(self.client.describe_index, collection, "vector")
            self._index[collection] = info.get("index_type", "FLAT")
        return self._index[collection]

    def count(self, collection: str) -> int:
        rows = self._call(self.client.query, collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def upsert(self, collection: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            self._call(self.client.upsert, collection, rows)

    def delete(self, collection: str, filter: str) -> None:
        self._call(self.client.delete, collection, filter=filter)

    def flush(self, collection: str) -> None:
        """Seal the rows just written. Milvus Lite searches unsealed (growing) rows by a slow
        path: on 629 chunks a dense top 50 took 12 ms before and 2.7 ms after a flush, the
        same as after reopening the file."""
        self._call(self.client.flush, collection)

    def query(self, collection: str, filter: str, fields: Sequence[str],
              batch_size: int = 1000) -> Iterator[dict[str, Any]]:
        """Every row matching `filter` (all rows for ""), in batches."""
        it = self._call(self.client.query_iterator, collection, batch_size=batch_size,
                        filter=filter, output_fields=list(fields))
        try:
            while rows := self._call(it.next):
                yield from rows
        finally:
            it.close()

    def get(self, collection: str, ids: Sequence[str], fields: Sequence[str]
            ) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        rows = self._call(self.client.get, collection, list(ids), output_fields=list(fields))
        return {r["id"]: r for r in rows}

    def search(self, collection: str, vectors: np.ndarray, k: int, filter: str = "",
               fields: Sequence[str] = PASSAGE_FIELDS) -> list[list[Hit]]:
        """The k nearest chunks of each query vector (rows of `vectors`), best first."""
        if k < 1:
            raise LmforgeError(f"-k {k}: ask for at least one passage")
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        dim = self.dimension(collection)
        if vectors.shape[1] != dim:
            raise LmforgeError(f"query vectors have {vectors.shape[1]} dimensions, collection "
                               f"{collection!r} {dim}; embed with the model it was built with")
        params = search_params(self.index_type(collection), k)
        found = self._call(self.client.search, collection, vectors.tolist(), limit=k,
                           filter=filter, output_fields=list(fields),
                           search_params={"params": params})
        return [[Hit.from_row({"id": h["id"], **h["entity"]}, h["distance"]) for h in row]
                for row in found]

    def _call(self, fn, *args, **kwargs):
        """`fn(*args, **kwargs)` with Milvus's errors turned into one-line LmforgeErrors."""
        from pymilvus.exceptions import MilvusException

        try:
            return fn(*args, **kwargs)
        except MilvusException as exc:
            flt = kwargs.get("filter")
            hint = (f" (filter {excerpt(flt)}): check the --filter expression, Milvus boolean "
                    "syntax such as 'source like \"docs/%\"'") if flt else ""
            message = " ".join(str(exc.message).split())
            raise LmforgeError(f"Milvus {fn.__name__} on {self.db} failed: {message}{hint}"
                               ) from None
