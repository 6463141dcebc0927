"""lmforge.rag.answer with the real smollm2 and minilm on a real Milvus Lite collection:
relevance gate, prompt budget, citations, the supported-answer check, `lmforge ask`."""

from __future__ import annotations

from pathlib import Path

import pytest

import lmforge
from lmforge.cli import main
from lmforge.rag.answer import (
    DONT_KNOW,
    Passage,
    build_prompt,
    check_support,
    cited,
    relevant_passages,
    stream_answer,
    supported_rate,
)
from lmforge.rag.embedder import load_embedder
from lmforge.rag.index import index_inputs
from lmforge.rag.retrieve import Retriever
from lmforge.rag.store import Hit, VectorStore

# an invented fact: the model cannot know it without the passage (on a famous one, such as
# the Eiffel Tower's year, its memory makes the likelihood lift near zero)
TOWER = ("The Zorblat Tower stands in the town of Quenton. It was completed in 1742 by the "
         "architect Mira Holt, who built it from red granite.")
BREAD = "Knead flour, water, yeast and salt. Let the dough rise for two hours, then bake it."


@pytest.fixture(scope="module")
def lm():
    return lmforge.load("smollm2")


def write_docs(root: Path) -> Path:
    """`root/docs` with the tower and bread texts; returns `root`."""
    (root / "docs").mkdir()
    (root / "docs" / "tower.txt").write_text(TOWER, encoding="utf-8")
    (root / "docs" / "bread.txt").write_text(BREAD, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = write_docs(tmp_path_factory.mktemp("answer"))
    db = str(root / "a.db")
    embedder = load_embedder("minilm")
    with VectorStore(db) as store:
        index_inputs(store, "documents", [str(root / "docs")], embedder, root=root,
                     progress=False)
    return db, embedder


def passage(number: int, text: str, source: str, relevance: float = 0.5) -> Passage:
    return Passage(number, Hit(id=source, score=relevance, text=text, source=source),
                   relevance)


def test_relevance_gate(collection):
    db, embedder = collection
    with VectorStore(db) as store:
        r = Retriever(store, "documents", embedder)
        found = relevant_passages(r, "When was the Zorblat Tower completed?", k=5)
        assert found[0].hit.source == "docs/tower.txt" and found[0].number == 1
        assert all(a.relevance >= b.relevance for a, b in zip(found, found[1:], strict=False))
        assert relevant_passages(r, "What is the boiling point of mercury?", k=5) == []


def test_prompt_keeps_the_most_relevant_passages_within_budget(lm):
    ps = [passage(1, TOWER, "tower.txt", 0.8), passage(2, BREAD * 20, "bread.txt", 0.4),
          passage(3, "Short.", "short.txt", 0.3)]
    ids, kept = build_prompt(lm.tokenizer, "When was the tower built?", ps, 10_000)
    assert [p.hit.source for p in kept] == ["tower.txt", "bread.txt", "short.txt"]
    text = lm.tokenizer.decode(ids)
    assert "[1] (tower.txt) The Zorblat" in text and "[3] (short.txt) Short." in text
    one, _ = build_prompt(lm.tokenizer, "When was the tower built?", ps[:1], 10_000)
    ids, kept = build_prompt(lm.tokenizer, "When was the tower built?", ps, len(one) + 5)
    assert [p.hit.source for p in kept] == ["tower.txt"] and ids == one
    with pytest.raises(lmforge.LmforgeError, match="context budget"):
        build_prompt(lm.tokenizer, "When was the tower built?", ps, 10)


def test_citations_and_supported_answer_check(lm):
    assert cited("It was 1742 [2][1], see [2] and [9].", 3) == [2, 1]
    ps = [passage(1, TOWER, "tower.txt"), passage(2, BREAD, "bread.txt")]
    question = "When was the Zorblat Tower completed?"
    good = check_support(lm, question, "The Zorblat Tower was completed in 1742 [1].", ps)
    assert len(good) == 1 and good[0].number == 1
    assert good[0].overlap == 1.0 and good[0].lift > 0 and good[0].supported
    bad = check_support(lm, question, "The Zorblat Tower was completed in 1742 [2].", ps)
    assert bad[0].overlap < 0.5 and not bad[0].supported
    mixed = check_support(lm, question, "The Zorblat Tower was completed in 1742 [1][2].", ps)
    assert supported_rate(mixed) == 0.5
    uncited = check_support(lm, question, "The Zorblat Tower was completed in 1742.", ps)
    assert [(c.number, c.supported) for c in uncited] == [(0, False)]


def test_stream_answer_is_the_greedy_generation(lm):
    ids, _ = build_prompt(lm.tokenizer, "When was the Zorblat Tower completed?",
                          [passage(1, TOWER, "tower.txt")], 4096)
    streamed = "".join(stream_answer(lm, ids, max_tokens=6))
    whole = lm.engine.generate([ids], lmforge.generate.config.GenerationConfig(
        max_tokens=6, temperature=0.0))[0].text
    assert streamed == whole and streamed.strip()


@pytest.mark.slow
def test_ask_command(collection, capsys):
    db, _ = collection
    rc = main(["ask", "--model", "smollm2", "--db", db, "When was the Zorblat Tower completed?",
               "--max-tokens", "40", "--check"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "Sources:\n[1] docs/tower.txt #0" in out and "supported-answer rate:" in out
    rc = main(["ask", "--model", "smollm2", "--db", db, "What is the boiling point of mercury?"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert out.strip() == DONT_KNOW
