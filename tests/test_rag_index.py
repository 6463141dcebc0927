"""lmforge.rag.index with the real `minilm` encoder and a real Milvus Lite database: index a
folder, search, update and re-index, delete, resume an interrupted run, refuse bad inputs
without touching the collection, reopen from disk."""

from __future__ import annotations

import numpy as np
import pytest

import lmforge.rag.index as index_module
from lmforge.errors import LmforgeError
from lmforge.rag.embedder import Embedder, load_embedder
from lmforge.rag.index import index_inputs, stored_versions
from lmforge.rag.store import VectorStore

DOCS = {
    "paris.txt": "Paris is the capital of France. The Eiffel Tower stands on the Champ de Mars.",
    "milvus/intro.md": "# Milvus\n\nMilvus is an open-source vector database. It stores "
                       "embeddings and searches them by similarity.",
    "cooking.html": "<html><body><p>To bake bread, knead flour, water, yeast and salt, then "
                    "let the dough rise for two hours.</p></body></html>",
    "long.txt": " ".join(f"Fact {i}: the river number {i} flows into sea {i % 7}."
                         for i in range(60)),
}


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return load_embedder("minilm")


def write_docs(root, docs=DOCS):
    for name, text in docs.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")


def snapshot(store: VectorStore) -> dict[str, tuple]:
    return {r["id"]: (r["source"], r["position"], r["text"])
            for r in store.query("c", "", ["id", "source", "position", "text"])}


def top_source(store, embedder, query, **kw):
    return store.search("c", embedder.embed_query(query), 1, **kw)[0][0].source


def test_index_search_update_delete_reopen(tmp_path, embedder):
    root = tmp_path / "docs"
    write_docs(root)
    db = str(tmp_path / "r.db")
    with VectorStore(db) as store:
        r = index_inputs(store, "c", [str(root)], embedder, root=root, max_tokens=48,
                         overlap=12, progress=False)
        assert (r.added, r.replaced, r.unchanged, r.removed) == (4, 0, 0, 0)
        versions = stored_versions(store, "c")
        assert versions["long.txt"][next(iter(versions["long.txt"]))][0] > 3  # cut in chunks
        assert r.chunks == store.count("c")
        assert top_source(store, embedder, "What is the capital of France?") == "paris.txt"
        assert top_source(store, embedder, "how long should dough rise?") == "cooking.html"
        assert top_source(store, embedder, "vector similarity search",
                          filter='metadata["kind"] == "markdown"') == "milvus/intro.md"
        before = snapshot(store)

        again = index_inputs(store, "c", [str(root)], embedder, root=root, max_tokens=48,
                             overlap=12, progress=False)
        assert (again.unchanged, again.chunks) == (4, 0) and snapshot(store) == before

        (root / "paris.txt").write_text("Berlin is the capital of Germany.", encoding="utf-8")
        (root / "cooking.html").unlink()
        r = index_inputs(store, "c", [str(root)], embedder, root=root, max_tokens=48,
                         overlap=12, progress=False)
        assert (r.added, r.replaced, r.unchanged, r.removed) == (0, 1, 2, 1)
        after = snapshot(store)
        assert {s for s, _, _ in after.values()} == {"paris.txt", "milvus/intro.md", "long.txt"}
        assert [t for s, _, t in after.values() if s == "paris.txt"] == [
            "Berlin is the capital of Germany."]
        assert top_source(store, embedder, "German capital city") == "paris.txt"
        q = embedder.embed_query("rivers and seas")
        found = [(h.id, round(h.score, 5)) for h in store.search("c", q, 5)[0]]
    with VectorStore(db) as store:  # a new client: the data came from disk
        store.open("c", embedder.dim)
        assert snapshot(store) == after
        assert [(h.id, round(h.score, 5)) for h in store.search("c", q, 5)[0]] == found


def test_dense_results_equal_numpy_brute_force(tmp_path, embedder):
    root = tmp_path / "docs"
    write_docs(root)
    with VectorStore(str(tmp_path / "r.db")) as store:
        index_inputs(store, "c", [str(root)], embedder, root=root, max_tokens=32, overlap=8,
                     progress=False)
        rows = list(store.query("c", "", ["id", "text"]))
        ids = [r["id"] for r in rows]
        vectors = embedder.embed([r["text"] for r in rows])  # the same encoder, recomputed
        q = embedder.embed_query("Which river flows into sea 3?")
        hits = store.search("c", q, 8)[0]
    sims = vectors @ q
    order = np.argsort(-sims)[:8]
    assert [h.id for h in hits] == [ids[i] for i in order]
    np.testing.assert_allclose([h.score for h in hits], sims[order], atol=1e-4)


class Interrupted(Exception):
    pass


def test_interrupted_run_resumes_without_duplicates(tmp_path, embedder, monkeypatch):
    root = tmp_path / "docs"
    write_docs(root)
    calls = []

    class Failing(Embedder):
        def embed(self, texts):
            calls.append(len(texts))
            if len(calls) == 3:
                raise Interrupted
            return super().embed(texts)

    failing = Failing(embedder.lm, embedder.name)
    monkeypatch.setattr(index_module, "EMBED_BATCH", 4)
    with VectorStore(str(tmp_path / "r.db")) as store:
        with pytest.raises(Interrupted):
            index_inputs(store, "c", [str(root)], failing, root=root, max_tokens=32,
                         overlap=8, progress=False)
        assert store.count("c") == 8  # two batches made it in
        r = index_inputs(store, "c", [str(root)], embedder, root=root, max_tokens=32,
                         overlap=8, progress=False)
        rows = list(store.query("c", "", ["id", "source", "position", "metadata"]))
        assert r.unchanged >= 1 and r.added >= 1  # finished sources kept, the rest completed
        keys = [(x["source"], x["position"]) for x in rows]
        assert len(keys) == len(set(keys))
        assert all(sum(1 for s, _ in keys if s == x["source"]) == x["metadata"]["n_chunks"]
                   for x in rows)


def test_bad_inputs_leave_the_collection_intact(tmp_path, embedder):
    root = tmp_path / "docs"
    write_docs(root)
    with VectorStore(str(tmp_path / "r.db")) as store:
        index_inputs(store, "c", [str(root)], embedder, root=root, progress=False)
        before = snapshot(store)
        (root / "paris.txt").write_text("Changed, but a bad file comes with it.", encoding="utf-8")
        (root / "empty.md").write_text("", encoding="utf-8")
        with pytest.raises(LmforgeError, match="empty.md has no text"):
            index_inputs(store, "c", [str(root)], embedder, root=root, progress=False)
        (root / "empty.md").write_bytes(b"\x00\x01\x02")
        with pytest.raises(LmforgeError, match="binary"):
            index_inputs(store, "c", [str(root)], embedder, root=root, progress=False)
        (root / "empty.md").write_text("data: " + "QUJD" * 20_000, encoding="utf-8")
        with pytest.raises(LmforgeError, match="a chunk holds at most 65,535"):
            index_inputs(store, "c", [str(root)], embedder, root=root, progress=False)
        (root / "empty.md").unlink()
        with pytest.raises(LmforgeError, match="outside the root"):
            index_inputs(store, "c", [str(tmp_path)], embedder, root=root, progress=False)
        assert snapshot(store) == before
        store.create("small", 8)
        with pytest.raises(LmforgeError, match="8-dimensional vectors but the embedding model "
                                               "gives 384"):
            index_inputs(store, "small", [str(root)], embedder, root=root, progress=False)
        assert store.count("small") == 0 and snapshot(store) == before
