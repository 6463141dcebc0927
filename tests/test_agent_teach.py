"""agent/teach.py: generated tool-use conversations and the benchmark's disjoint questions."""

from __future__ import annotations

import json
import re
from fractions import Fraction

import pytest

from lmforge.agent import teach
from lmforge.agent.calls import SYSTEM_HEAD, parse_calls
from lmforge.agent.tools import builtin_tools
from lmforge.errors import LmforgeError
from lmforge.rag.store import Hit


@pytest.fixture(scope="module")
def convs() -> list[dict]:
    return teach.conversations(400, seed=3)


def test_same_seed_same_conversations_other_seed_others():
    assert teach.conversations(50, seed=7) == teach.conversations(50, seed=7)
    assert teach.conversations(50, seed=7) != teach.conversations(50, seed=8)
    assert teach.arithmetic_questions(20) == teach.arithmetic_questions(20)


def test_every_family_appears_and_roles_alternate(convs):
    assert {c["family"] for c in convs} == set(teach.MIX)
    for c in convs:
        roles = [m["role"] for m in c["messages"]]
        assert roles[:2] == ["system", "user"] and roles[-1] == "assistant"
        assert c["messages"][0]["content"].startswith(SYSTEM_HEAD)


def test_every_call_parses_and_validates_against_its_listed_tools(convs):
    tools = {t.name: t for t in builtin_tools()}
    for c in convs:
        listed = {json.loads(line)["name"]
                  for line in c["messages"][0]["content"].split("Tools:\n")[1].splitlines()}
        for i, m in enumerate(c["messages"]):
            if m["role"] != "assistant":
                continue
            parsed = parse_calls(m["content"])
            assert not parsed.errors
            last = i == len(c["messages"]) - 1
            assert bool(parsed.calls) != last  # calls in every turn but the answer
            for call in parsed.calls:
                assert call.name in listed
                tools[call.name].validate(call.arguments)
                assert c["messages"][i + 1]["role"] == "tool"


def test_calculator_observations_are_exact(convs):
    checked = 0
    for c in convs:
        msgs = c["messages"]
        for m, obs in zip(msgs, msgs[1:], strict=False):
            calls = parse_calls(m["content"]).calls if m["role"] == "assistant" else []
            if calls and calls[0].name == "calculator":
                value = _fraction_eval(calls[0].arguments["expression"])
                shown = obs["content"].removesuffix(" (rounded)")
                assert Fraction(shown) == value if shown == obs["content"] \
                    else abs(float(shown) - value) < 1e-9 * max(1, abs(value))
                checked += 1
    assert checked > 100


def _fraction_eval(expression: str) -> Fraction:
    """The exact value of a generated expression (digits, + - * /, parentheses), by Python
    on Fractions: an oracle independent of the calculator's parser."""
    assert re.fullmatch(r"[\d.+\-*/() ]+", expression)
    return eval(re.sub(r"\d+(?:\.\d+)?", lambda m: f"Fraction('{m.group()}')", expression))


def test_search_and_csv_observations_are_the_real_tools_output(tmp_path):
    rng = teach.random.Random(5)
    header, rows = ("region", "units"), [("north", 12), ("east", 3405), ("west", 77)]
    (tmp_path / "sales.csv").write_text("region,units\nnorth,12\neast,3405\nwest,77\n")
    (read_file,) = builtin_tools(["files"], allow=[tmp_path])
    shown = str(tmp_path / "sales.csv")
    assert read_file(path=shown) == teach.csv_observation(shown, header, rows)

    passages = [("aldmoor.md", "The town of Aldmoor was founded in 1204."),
                ("notes_1.md", "The Brinvale library holds 5120 books.")]

    class Retriever:  # the real search tool over fixed hits
        def search(self, query, k, mode):
            return [Hit(f"{s}#0", 1.0, t, s) for s, t in passages][:k]

    (search,) = builtin_tools(["search"], retriever=Retriever())
    assert search(query="Aldmoor") == teach.search_observation(passages)
    assert teach.document_question(rng).rounds[0][1][0].startswith("[1] ")


def test_arithmetic_answers_are_python_integer_arithmetic():
    python = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__, "/": int.__floordiv__}
    rng = teach.random.Random(0)
    for _ in range(300):
        t = teach.arithmetic(rng)
        a, op, b = t.rounds[0][0][0].arguments["expression"].split()
        result = python[op](int(a), int(b))
        assert t.rounds[0][1] == [str(result)]
        assert t.answer.endswith(f"= {result}.")


def test_exact_division_and_operand_sizes():
    for q in teach.arithmetic_questions(300, seed=1, split="train") + \
            teach.arithmetic_questions(300):
        assert 10 <= q.b < 10 ** 5 and 10 <= q.a < 10 ** 5
        if q.op == "/":
            assert q.a % q.b == 0


def test_benchmark_and_training_arithmetic_are_disjoint(convs):
    bench = teach.arithmetic_questions(500)
    assert all(teach.in_bench(q.a, q.op, q.b) for q in bench)
    keys = {(q.a, q.op, q.b) for q in bench}
    train = teach.arithmetic_questions(3000, seed=0, split="train")
    assert not any(teach.in_bench(q.a, q.op, q.b) for q in train)
    assert not keys & {(q.a, q.op, q.b) for q in train}
    texts = {q.text for q in bench}
    assert not texts & {c["messages"][1]["content"] for c in convs}


def test_direct_conversations_call_no_tool(convs):
    for c in convs:
        if c["family"] == "direct":
            assert len(c["messages"]) == 3 and not parse_calls(c["messages"][2]["content"]).calls


def test_mix_and_jsonl(tmp_path):
    rows = teach.conversations(20, seed=0, mix=teach.parse_mix("arithmetic=1"))
    assert {r["family"] for r in rows} == {"arithmetic"}
    path = teach.write_jsonl(rows, tmp_path / "d" / "train.jsonl")
    from lmforge.adapt.sft import read_conversations
    assert len(read_conversations(path)) == 20
    with pytest.raises(LmforgeError, match="unknown conversation families"):
        teach.conversations(5, mix={"poetry": 1.0})
    with pytest.raises(LmforgeError, match="family=weight"):
        teach.parse_mix("arithmetic")
