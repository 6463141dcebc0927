"""POST /v1/rag/ask on a real server state (smollm2's scheduler, minilm, Milvus Lite)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

import lmforge
from lmforge.rag.answer import DONT_KNOW
from lmforge.rag.embedder import load_embedder
from lmforge.rag.index import index_inputs
from lmforge.rag.serve import RagService
from lmforge.rag.store import VectorStore
from lmforge.serve.app import build_app, make_state

TOWER = ("The Zorblat Tower stands in the town of Quenton. It was completed in 1742 by the "
         "architect Mira Holt, who built it from red granite.")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    (root / "tower.txt").write_text(TOWER, encoding="utf-8")
    db = str(root / "s.db")
    with VectorStore(db) as store:
        index_inputs(store, "documents", [str(root / "tower.txt")], load_embedder("minilm"),
                     root=root, progress=False)
    state, _ = make_state([lmforge.load("smollm2")], max_batch=2)
    state.rag = RagService(db)
    with TestClient(build_app(state)) as c:
        yield c


def test_rag_ask_answers_from_passages(client):
    r = client.post("/v1/rag/ask", json={"model": "smollm2", "question": "When was the "
                                         "Zorblat Tower completed?", "max_tokens": 24,
                                         "check": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "rag.answer" and body["answer"].strip()
    assert [p["source"] for p in body["passages"]] == ["tower.txt"]
    assert body["passages"][0]["number"] == 1 and body["passages"][0]["relevance"] > 0.3
    assert 0.0 <= body["supported_rate"] <= 1.0 and body["support"]
    assert body["usage"]["completion_tokens"] <= 24


def test_rag_ask_dont_know_and_bad_requests(client):
    r = client.post("/v1/rag/ask", json={"model": "smollm2",
                                         "question": "What is the boiling point of mercury?"})
    assert r.status_code == 200 and r.json()["answer"] == DONT_KNOW
    for body, field in [({"model": "smollm2"}, "question"),
                        ({"model": "smollm2", "question": "x", "mode": "sparse"}, "mode"),
                        ({"model": "smollm2", "question": "x", "k": 0}, "k"),
                        ({"model": "smollm2", "question": "x", "stream": True}, "stream"),
                        ({"model": "smollm2", "question": "tower", "filter": "source =="},
                         "filter")]:
        r = client.post("/v1/rag/ask", json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["param"] == field
