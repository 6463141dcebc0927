"""lmforge.rag.store on a real Milvus Lite database (no mocks): schema, exact FLAT search
against numpy, filters, reopening from disk, index types and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from lmforge.errors import LmforgeError
from lmforge.rag.store import VectorStore, choose_index

DIM = 16


def unit_rows(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def rows(vectors: np.ndarray) -> list[dict]:
    return [{"id": f"r{i}", "vector": v.tolist(), "text": f"text {i}",
             "source": f"dir{i % 3}/f{i}.txt", "position": i, "content_hash": "h",
             "metadata": {"kind": "text" if i % 2 else "markdown", "n": i}}
            for i, v in enumerate(vectors)]


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    db = str(tmp_path_factory.mktemp("store") / "s.db")
    vectors = unit_rows(300, 0)
    with VectorStore(db) as store:
        store.create("c", DIM, embed_model="test")
        store.open("c", DIM)
        store.upsert("c", rows(vectors))
    return db, vectors


def test_flat_search_equals_numpy_brute_force(filled):
    db, vectors = filled
    queries = unit_rows(5, 1)
    with VectorStore(db) as store:
        store.open("c", DIM)
        found = store.search("c", queries, k=10)
    sims = queries @ vectors.T  # cosine of unit vectors
    for q, hits in enumerate(found):
        expected = np.argsort(-sims[q], kind="stable")[:10]
        assert [h.id for h in hits] == [f"r{i}" for i in expected]
        np.testing.assert_allclose([h.score for h in hits], sims[q, expected], atol=1e-5)
        assert hits[0].text == f"text {expected[0]}" and hits[0].position == expected[0]


def test_reopen_from_disk_same_results_and_properties(filled):
    db, _ = filled
    q = unit_rows(1, 2)
    with VectorStore(db) as store:
        store.open("c", DIM)
        first = [(h.id, h.score) for h in store.search("c", q, 7)[0]]
    with VectorStore(db) as store:
        store.open("c")
        assert store.count("c") == 300
        assert store.embed_model("c") == "test" and store.dimension("c") == DIM
        assert [(h.id, h.score) for h in store.search("c", q, 7)[0]] == first


def test_metadata_and_source_filters(filled):
    db, vectors = filled
    q = unit_rows(1, 3)
    with VectorStore(db) as store:
        store.open("c", DIM)
        hits = store.search("c", q, 20, filter='metadata["kind"] == "markdown" and '
                                               'source like "dir1/%"')[0]
        assert hits and all(h.metadata["kind"] == "markdown" and h.source.startswith("dir1/")
                            for h in hits)
        allowed = [i for i in range(300) if i % 2 == 0 and i % 3 == 1]
        sims = (q @ vectors[allowed].T)[0]
        assert [h.id for h in hits] == [f"r{allowed[j]}" for j in np.argsort(-sims)[:20]]
        with pytest.raises(LmforgeError, match="filter"):
            store.search("c", q, 3, filter="source ==")


def test_dimension_mismatch_is_refused_and_collection_untouched(filled):
    db, _ = filled
    with VectorStore(db) as store:
        with pytest.raises(LmforgeError, match="16-dimensional vectors but the embedding model "
                                               "gives 384"):
            store.open("c", 384)
        with pytest.raises(LmforgeError, match="dimensions"):
            store.search("c", np.ones((1, 8), np.float32), 3)
        store.open("c", DIM)
        assert store.count("c") == 300


def test_missing_collection_and_bad_paths(tmp_path):
    with VectorStore(str(tmp_path / "e.db")) as store:
        with pytest.raises(LmforgeError, match="no collection 'nope'"):
            store.open("nope")
    with pytest.raises(LmforgeError, match=r"ending in \.db"):
        VectorStore(str(tmp_path / "x.sqlite"))


@pytest.mark.parametrize("index_type", ["IVF_FLAT", "HNSW"])
def test_approximate_indexes_find_the_exact_neighbour(tmp_path, index_type):
    vectors = unit_rows(200, 4)
    with VectorStore(str(tmp_path / "a.db")) as store:
        store.create("c", DIM, index_type=index_type)
        store.open("c", DIM)
        store.upsert("c", rows(vectors))
        assert store.index_type("c") == index_type
        hits = store.search("c", vectors[:5], k=1)
        assert [h[0].id for h in hits] == [f"r{i}" for i in range(5)]


def test_choose_index_and_argument_errors(tmp_path):
    assert choose_index(10) == "FLAT" and choose_index(10**6) == "HNSW"
    with VectorStore(str(tmp_path / "b.db")) as store:
        with pytest.raises(LmforgeError, match="index type"):
            store.create("c", DIM, index_type="DISKANN")
        with pytest.raises(LmforgeError, match="metric"):
            store.create("c", DIM, metric="L2")
        assert not store.has("c")
