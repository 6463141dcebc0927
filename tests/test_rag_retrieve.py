"""lmforge.rag.bm25 and lmforge.rag.retrieve: BM25 against the formula, the cached index,
reciprocal rank fusion, MMR, filters, and `lmforge search` end to end (real Milvus Lite and
the real minilm encoder)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.rag.bm25 import STAMP, BM25Index, make_tokenizer
from lmforge.rag.embedder import Embedder, load_embedder
from lmforge.rag.index import index_inputs
from lmforge.rag.retrieve import Retriever, mmr, rrf
from lmforge.rag.store import VectorStore

DOCS = {
    "tower.txt": "The Eiffel Tower in Paris was designed by the engineer Gustave Eiffel.",
    "bridge.txt": "The Golden Gate Bridge spans the strait at San Francisco.",
    "bread.md": "# Bread\n\nKnead the dough, then let it rise for two hours before baking.",
    "zh.txt": "长城是中国古代的军事防御工程。北京是中国的首都。",
    "notes/tower2.txt": "Gustave Eiffel's company also built the frame of the Statue of Liberty.",
}


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return load_embedder("minilm")


@pytest.fixture()
def indexed(tmp_path, embedder):
    root = tmp_path / "docs"
    for name, text in DOCS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    db = str(tmp_path / "r.db")
    store = VectorStore(db)
    index_inputs(store, "c", [str(root)], embedder, root=root, progress=False)
    yield store, root, db
    store.close()


def lucene_bm25(query: list[str], docs: list[list[str]], k1=1.5, b=0.75) -> np.ndarray:
    """Lucene's BM25 written out (the formula in lmforge.rag.bm25's docstring: no (k1 + 1))."""
    n, avgdl = len(docs), sum(map(len, docs)) / len(docs)
    out = np.zeros(n)
    for t in set(query):
        df = sum(t in d for d in docs)
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        for i, d in enumerate(docs):
            tf = d.count(t)
            out[i] += idf * tf / (tf + k1 * (1 - b + b * len(d) / avgdl))
    return out


def test_bm25_scores_follow_the_formula():
    terms, rule = make_tokenizer()
    texts = ["the cat sat on the mat with another cat", "a dog chased the cat",
             "dogs and cats", "the bird sang", "cat cat cat food"]
    index = BM25Index.build([f"d{i}" for i in range(5)], texts, terms)
    found = dict(index.search("cat dog", k=5))
    expected = lucene_bm25(terms("cat dog"), [terms(t) for t in texts])
    for i, score in enumerate(expected):
        assert found.get(f"d{i}", 0.0) == pytest.approx(score, rel=1e-5)
    assert list(index.search("cat", k=5, allowed={"d1", "d3"})) == [
        ("d1", pytest.approx(found_cat := dict(index.search("cat", k=5))["d1"]))]
    assert found_cat > 0 and index.search("unseen words", k=3) == [] and rule == "char"


def test_terms_lowercase_drop_stopwords_and_split_han(tmp_path):
    terms, _ = make_tokenizer()
    assert terms("The Eiffel Tower, 1889!") == ["eiffel", "tower", "1889"]
    assert terms("北京是首都 in China") == ["北", "京", "是", "首", "都", "china"]
    words = tmp_path / "words.txt"
    words.write_text("北京\n首都\n中国\n", encoding="utf-8")
    segmented, rule = make_tokenizer(str(words))
    assert segmented("北京是中国的首都 in China") == ["北京", "是", "中国", "的", "首都", "china"]
    assert rule.startswith("bimm:")  # a different rule: a cached index is rebuilt


def test_rrf_and_mmr_by_hand():
    fused = rrf([["a", "b", "c"], ["c", "a", "d"]], k=60)
    assert [x for x, _ in fused] == ["a", "c", "b", "d"]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)
    assert fused[1][1] == pytest.approx(1 / 63 + 1 / 61)
    q = np.array([1.0, 0.0])
    v = np.array([[0.95, 0.31], [0.94, 0.34], [0.8, -0.6]])  # 0 and 1 near-duplicates
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    assert mmr(q, v, 2, lam=1.0) == [0, 1]  # relevance only keeps the near-duplicate
    assert mmr(q, v, 2, lam=0.5) == [0, 2]  # MMR prefers the different passage


def test_dense_bm25_hybrid_and_filters(indexed, embedder):
    store, _, _ = indexed
    r = Retriever(store, "c", embedder)
    assert r.dense("Who designed the Eiffel Tower?", 1)[0].source == "tower.txt"
    bm = r.bm25("Gustave Eiffel", 5)
    assert {h.source for h in bm} == {"tower.txt", "notes/tower2.txt"}
    assert all(h.text for h in bm) and bm[0].score >= bm[1].score > 0
    assert r.bm25("北京", 1)[0].source == "zh.txt"
    dense, bm = r.dense("Gustave Eiffel", 50), r.bm25("Gustave Eiffel", 50)
    hybrid = r.search("Gustave Eiffel", k=3)
    expected = rrf([[h.id for h in dense], [h.id for h in bm]])[:3]
    assert [(h.id, pytest.approx(s)) for h, (_, s) in zip(hybrid, expected, strict=True)] == \
        [(x, s) for x, s in expected]
    only_notes = 'source like "notes/%"'
    for mode in ("dense", "bm25", "hybrid"):
        hits = r.search("Eiffel", k=3, mode=mode, filter=only_notes)
        assert [h.source for h in hits] == ["notes/tower2.txt"]
    diverse = r.search("Eiffel", k=2, mode="dense", mmr_lambda=0.3)
    assert len(diverse) == 2 and len({h.id for h in diverse}) == 2
    with pytest.raises(LmforgeError, match="--mode"):
        r.search("x", mode="sparse")
    with pytest.raises(LmforgeError, match="λ"):
        r.search("x", mmr_lambda=2.0)


def test_bm25_index_is_cached_and_rebuilt_when_stale(indexed, embedder):
    store, root, db = indexed
    r = Retriever(store, "c", embedder)
    r.bm25("bridge", 1)
    saved = r.bm25_path / STAMP
    assert saved.is_file() and str(r.bm25_path).startswith(db + ".bm25")
    stamp = json.loads(saved.read_text())["stamp"]
    again = Retriever(store, "c", embedder)
    assert again.bm25("bridge", 1)[0].source == "bridge.txt"
    assert json.loads(saved.read_text())["stamp"] == stamp  # loaded, not rebuilt
    (root / "bridge.txt").write_text("The Brooklyn Bridge crosses the East River.",
                                     encoding="utf-8")
    index_inputs(store, "c", [str(root)], embedder, root=root, progress=False)
    fresh = Retriever(store, "c", embedder)
    assert fresh.bm25("Brooklyn", 1)[0].source == "bridge.txt"
    assert fresh.bm25("Golden Gate", 3) == []
    assert json.loads(saved.read_text())["stamp"] != stamp


def test_search_command_prints_passages(indexed, capsys):
    _, _, db = indexed
    main(["search", "--db", db, "--collection", "c", "Golden Gate Bridge", "-k", "2",
          "--mode", "bm25"])
    out = capsys.readouterr().out
    assert out.startswith("[1] ") and "bridge.txt #0" in out and "San Francisco" in out
    main(["search", "--db", db, "--collection", "c", "bread", "-k", "1", "--json"])
    record = json.loads(capsys.readouterr().out)
    assert record["source"] == "bread.md" and record["metadata"]["title"] == "Bread"


def test_hybrid_hits_carry_their_passages_and_the_query_vector_is_reused(indexed, embedder):
    store, _, _ = indexed
    r = Retriever(store, "c", embedder)
    hybrid = r.search("Gustave Eiffel", k=3)
    by_id = {h.id: h for h in r.dense("Gustave Eiffel", 50)}
    assert [(h.text, h.source, h.position) for h in hybrid] == \
        [(by_id[h.id].text, by_id[h.id].source, by_id[h.id].position) for h in hybrid]
    first = embedder.embed_query("Gustave Eiffel")
    assert embedder.embed_query("Gustave Eiffel") is first and not first.flags.writeable
    other = embedder.embed_query("bread")
    assert other is not first and float(first @ other) < 0.99
