"""Long-term memory on a real Milvus Lite file with the real MiniLM embeddings: recall by
meaning, persistence across reopening, and the remember/recall tools driven through the loop."""

from __future__ import annotations

import pytest

from lmforge.agent.calls import ToolCall, render_calls
from lmforge.agent.loop import ScriptedBrain, run_agents
from lmforge.agent.memory import MEMORY_COLLECTION, LongTermMemory
from lmforge.agent.tools import builtin_tools
from lmforge.errors import LmforgeError
from lmforge.rag.embedder import Embedder, load_embedder
from lmforge.rag.store import VectorStore

NOTES = ["The user's name is Ada Lovelace.",
         "The project deadline is the 3rd of March.",
         "The office cat is called Biscuit.",
         "Visitors park on level minus two of the garage."]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return load_embedder("minilm")


def call(name: str, **arguments) -> str:
    return render_calls([ToolCall(name, arguments)])


def first_hit(observation: str) -> str:
    return observation.splitlines()[0]


def test_recall_by_paraphrase_and_after_reopening(tmp_path, embedder):
    db = str(tmp_path / "memory.db")
    with VectorStore(db) as store:
        memory = LongTermMemory(store, embedder)
        assert memory.recall("anything") == "long-term memory holds no notes yet"
        for note in [*NOTES, NOTES[0]]:  # the repeat is kept once (its id is its hash)
            assert memory.remember(note) == "saved to long-term memory"
        assert store.count(MEMORY_COLLECTION) == len(NOTES)
        assert first_hit(memory.recall("how should you address me")) == "[1] memory: " + NOTES[0]
        assert first_hit(memory.recall("When is the work due?")) == "[1] memory: " + NOTES[1]
    with VectorStore(db) as store:  # a new process would see the same
        memory = LongTermMemory(store, embedder)
        assert store.count(MEMORY_COLLECTION) == len(NOTES)
        assert first_hit(memory.recall("name of the pet")) == "[1] memory: " + NOTES[2]
        assert first_hit(memory.recall("where should guests leave their car", k=1)) \
            == "[1] memory: " + NOTES[3]


def test_bad_notes_and_queries(tmp_path, embedder):
    with VectorStore(str(tmp_path / "m.db")) as store:
        memory = LongTermMemory(store, embedder)
        with pytest.raises(LmforgeError, match="the note is empty"):
            memory.remember("  \n")
        with pytest.raises(LmforgeError, match="at most"):
            memory.remember("x" * 100_000)
        with pytest.raises(LmforgeError, match="the query is empty"):
            memory.recall(" ")


def test_remember_then_recall_through_the_loop(tmp_path, embedder):
    """One session saves a fact; a later one, on the reopened file, finds it with a question
    worded differently, and the observation reaches the model."""
    db = str(tmp_path / "agent.db")
    with VectorStore(db) as store:
        tools = builtin_tools(["memory"], memory=LongTermMemory(store, embedder))
        brain = ScriptedBrain([call("remember", text=NOTES[1]), call("remember", text=" "),
                               "Noted."])
        [r] = run_agents(brain, ["Please remember: the deadline is March 3rd."], tools)
        assert [e.kind for e in r.events] == ["call", "observation", "call", "error", "answer"]
        assert r.messages[2] == {"role": "tool", "content": "saved to long-term memory"}
        assert r.messages[4]["content"].startswith("error: the note is empty")
    with VectorStore(db) as store:
        tools = builtin_tools(["memory"], memory=LongTermMemory(store, embedder))
        brain = ScriptedBrain([call("recall", query="when must the project be finished"),
                               "The 3rd of March."])
        [r] = run_agents(brain, ["When is my project due?"], tools)
        observation = next(e for e in r.events if e.kind == "observation")
        assert observation.text == "[1] memory: " + NOTES[1]
        assert brain.seen[1].messages[-1] == {"role": "tool", "content": observation.text}
        assert r.answer == "The 3rd of March."
